"""predict and run: original tables, our tables, report, shard checks, resume, order independence."""

from __future__ import annotations

import calendar
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from checkpoint_helpers import wait_for_parts
from h5_helpers import edited_shard
from virnucpro import h5shard
from virnucpro import prepared as fmt
from virnucpro.embed import embed
from virnucpro.predict import code_sha256, predict
from virnucpro.models.store import locate
from virnucpro.outdir import LOCK_NAME
from virnucpro.threads import POOL_VARIABLES

TABLES = ("prediction_results.txt", "prediction_results_highestscore.csv", "chunks.tsv", "sequences.tsv")


@pytest.fixture(scope="module")
def golden_predicted(tmp_path_factory, golden_prepared, golden_embeddings, tiny_models) -> Path:
    out = tmp_path_factory.mktemp("pred") / "out"
    predict(golden_prepared, golden_embeddings, out, models=tiny_models)
    return out


def table(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def test_tables_reconcile_with_prepare_counts(golden_prepared, golden_predicted):
    counts = fmt.load_manifest(golden_prepared)["counts"]
    results = table(golden_predicted / "prediction_results.txt")
    assert results[0] == ["Sequence_ID", "Prediction", "score1", "score2"]
    assert len(results) - 1 == counts["orfs"] == 356
    orf_ids = [r[0] for r in results[1:]]
    prepared_ids = [rec[0] for s in sorted(golden_prepared.glob("shards/*.tsv")) for rec in fmt.read_shard(s)]
    assert orf_ids == prepared_ids, "one row per ORF, input order"
    chunks = table(golden_predicted / "chunks.tsv")[1:]
    assert len(chunks) == counts["chunks"]
    assert sum(c[7] == "no_orf" for c in chunks) == counts["chunks_without_orf"]
    highest = table(golden_predicted / "prediction_results_highestscore.csv")[1:]
    assert len(highest) == counts["chunks"] - counts["chunks_without_orf"]
    sequences = table(golden_predicted / "sequences.tsv")[1:]
    assert len(sequences) == counts["sequences"]
    assert sum(int(s[2]) for s in sequences) == counts["chunks"]


def test_scores_match_a_hand_computed_mlp(golden_prepared, golden_embeddings, golden_predicted, tiny_models):
    """features -> Linear -> BatchNorm (running stats) -> ReLU -> Linear -> softmax, by hand in float64.
    The features are read from the HDF5 datasets directly, not through the code predict uses, and
    joined as the original joins them (SPEC: DNABERT-S then ESM-2): features swapped scored without an
    error, as the real widths add up to the classifier's 3,328 either way."""
    from virnucpro.classifier import load_classifier

    state = load_classifier(locate(tiny_models).classifier(500)).state_dict()
    w = {k: v.double().numpy() for k, v in state.items() if v.dtype.is_floating_point}
    ids, features = [], []
    for path in golden_embeddings:
        with h5py.File(path, "r") as handle:
            ids += [i.decode() for i in handle["ids"][:]]
            features.append(np.concatenate([handle["dnabert_s"][:], handle["esm2"][:]], axis=1))
    x = np.concatenate(features).astype(np.float64)
    h = x @ w["hidden_layer.weight"].T + w["hidden_layer.bias"]
    h = (h - w["bn1.running_mean"]) / np.sqrt(w["bn1.running_var"] + 1e-5) * w["bn1.weight"] + w["bn1.bias"]
    logits = np.maximum(h, 0) @ w["output_layer.weight"].T + w["output_layer.bias"]
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    rows = table(golden_predicted / "prediction_results.txt")[1:]
    assert [r[0] for r in rows] == ids
    written = np.array([[float(r[2]), float(r[3])] for r in rows])
    np.testing.assert_allclose(written, expected, atol=1e-6, rtol=0)
    assert [r[1] for r in rows] == ["virus" if p[1] > p[0] else "others" for p in written]


def test_original_table_formats(golden_predicted, reference_dir):
    ours = (golden_predicted / "prediction_results.txt").read_text().splitlines()
    theirs = (reference_dir / "vanilla/test_with_orfs_prediction_results.txt").read_text().splitlines()
    assert ours[0] == theirs[0]
    row = re.compile(r"^\S+\t(virus|others)\t\S+\t\S+$")
    assert all(row.match(line) for line in ours[1:] + theirs[1:])
    for line in ours[1:]:  # scores are str() of numpy float32: the text round-trips exactly
        for text in line.split("\t")[2:]:
            assert str(np.float32(float(text))) == text
    high = (golden_predicted / "prediction_results_highestscore.csv").read_text().splitlines()
    ref_high = (reference_dir / "vanilla/test_with_orfs_prediction_results_highestscore.csv").read_text().splitlines()
    assert high[0] == ref_high[0] == "Modified_ID\tIs_Virus"
    assert all(re.match(r"^\S+\t(True|False)$", line) for line in high[1:])


def test_highestscore_sorted_like_pandas_groupby_and_uses_the_original_rule(golden_predicted):
    rows = table(golden_predicted / "prediction_results.txt")[1:]
    groups: dict[str, list[tuple[float, float]]] = {}
    for orf_id, _, s1, s2 in rows:
        groups.setdefault(orf_id[:-2], []).append((float(s1), float(s2)))
    expected = [[chunk, str(max(s[1] for s in scores) >= max(s[0] for s in scores))]
                for chunk, scores in sorted(groups.items())]
    high = table(golden_predicted / "prediction_results_highestscore.csv")[1:]
    assert high == expected
    ids = [h[0] for h in high]
    assert ids == sorted(ids) and ids != sorted(ids, key=lambda c: (c.split("_chunk_")[0], int(c.split("_chunk_")[1])))


def test_reference_tables_reproduced_from_their_scores(tmp_path, reference_dir):
    """The vanilla highest-score table follows from its own prediction table by our per-chunk rule."""
    from virnucpro.predict import HighestTable, chunk_scores

    rows = table(reference_dir / "vanilla/test_with_orfs_prediction_results.txt")[1:]
    highest = HighestTable(tmp_path / "runs")
    for chunk in chunk_scores((orf_id, float(s2), float(s1)) for orf_id, _, s1, s2 in rows):
        highest.add(chunk)
    highest.write(tmp_path / "prediction_results_highestscore.csv")
    assert ((tmp_path / "prediction_results_highestscore.csv").read_text()
            == (reference_dir / "vanilla/test_with_orfs_prediction_results_highestscore.csv").read_text())


def test_highest_table_merges_sorted_runs_in_bounded_memory(tmp_path):
    """Rows spilled in runs of 3 and merged equal one in-memory sort by chunk id as strings."""
    from virnucpro.predict import ChunkScore, HighestTable

    rng = random.Random(5)
    ids = [f"s{rng.randrange(40)}_{n}_chunk_{rng.randrange(1, 12)}" for n in range(50)]
    highest = HighestTable(tmp_path / "runs", run_lines=3)
    for n, chunk_id in enumerate(ids):
        highest.add(ChunkScore(chunk_id, chunk_id + "F1", n % 3 / 3, 0.5))
        assert len(highest.pending) < 3
    assert len(highest.runs) == 16
    highest.write(tmp_path / "highest.csv")
    expected = [f"{c}\t{n % 3 / 3 >= 0.5}" for c, n in sorted((c, n) for n, c in enumerate(ids))]
    assert (tmp_path / "highest.csv").read_text().splitlines() == ["Modified_ID\tIs_Virus", *expected]
    assert not (tmp_path / "runs").exists()



def test_highest_table_never_opens_more_runs_than_its_merge_ways(tmp_path, monkeypatch):
    """A reviewer's suspicion: every sorted run was opened at once, so a table of a few hundred million
    rows (or 1,000-character ids) would run out of open files. Past HIGHEST_MERGE_WAYS runs the first
    are merged into one first: here 3 at a time of 17 runs, the table as one sort gives it."""
    import virnucpro.predict as predict_module
    from virnucpro.predict import ChunkScore, HighestTable

    monkeypatch.setattr(predict_module, "HIGHEST_MERGE_WAYS", 3)
    merge, widest = HighestTable._merge, []
    monkeypatch.setattr(HighestTable, "_merge", staticmethod(lambda runs, out: (widest.append(len(runs)), merge(runs, out))))
    rng = random.Random(7)
    ids = [f"s{rng.randrange(1000)}_{n}_chunk_{rng.randrange(1, 12)}" for n in range(50)]
    highest = HighestTable(tmp_path / "runs", run_lines=3)
    for n, chunk_id in enumerate(ids):
        highest.add(ChunkScore(chunk_id, chunk_id + "F1", n % 3 / 3, 0.5))
    highest.write(tmp_path / "highest.csv")
    expected = [f"{c}\t{n % 3 / 3 >= 0.5}" for c, n in sorted((c, n) for n, c in enumerate(ids))]
    assert (tmp_path / "highest.csv").read_text().splitlines() == ["Modified_ID\tIs_Virus", *expected]
    assert len(widest) > 5 and max(widest) == 3 and not (tmp_path / "runs").exists()

def test_highest_table_runs_are_bounded_in_characters_too(tmp_path):
    """A review's case: runs were a million rows whatever the ids' length; with 1,000-character ids
    that is about 1 GB before the first spill, ten times the figure given."""
    from virnucpro.predict import ChunkScore, HighestTable

    highest = HighestTable(tmp_path / "runs", run_chars=5000)
    ids = [f"{'x' * 990}_{n:04d}_chunk_1" for n in reversed(range(40))]
    for chunk_id in ids:
        highest.add(ChunkScore(chunk_id, chunk_id + "F1", 0.5, 0.5))
        assert highest.pending_chars < 5000
    assert len(highest.runs) == 8  # five rows of ~1 kB a run
    highest.write(tmp_path / "highest.csv")
    assert (tmp_path / "highest.csv").read_text().splitlines()[1:] == [f"{c}\tTrue" for c in sorted(ids)]


def test_small_sort_runs_give_the_same_outputs(tmp_path, monkeypatch, golden_prepared, golden_embeddings,
                                               golden_predicted, tiny_models):
    """Predict streams in input order: with runs of 2 rows every output is unchanged."""
    import virnucpro.predict as predict_module

    monkeypatch.setattr(predict_module, "HIGHEST_RUN_LINES", 2)
    predict(golden_prepared, golden_embeddings, tmp_path / "out", models=tiny_models)
    for name in TABLES:
        assert (tmp_path / "out" / name).read_text() == (golden_predicted / name).read_text()


def test_small_shards_are_scored_in_one_classifier_call(tmp_path, monkeypatch, golden_prepared, golden_embeddings,
                                                        golden_predicted, tiny_models):
    """Six shards of at most 60 ORFs: one classifier call for all, not one per shard (793 shards of 75
    ORFs paid ~35 ms each in intra-op thread sync on a busy CPU); every output as before."""
    import virnucpro.classifier as classifier_module

    calls, real = [], classifier_module.predict_proba
    monkeypatch.setattr(classifier_module, "predict_proba",
                        lambda model, features: calls.append(len(features)) or real(model, features))
    predict(golden_prepared, golden_embeddings, tmp_path / "out", models=tiny_models)
    assert calls == [356]
    for name in TABLES:
        assert (tmp_path / "out" / name).read_text() == (golden_predicted / name).read_text()


def test_classifier_batches_never_exceed_their_rows(tmp_path, monkeypatch, golden_prepared, golden_embeddings,
                                                    golden_predicted, tiny_models):
    """Batches of at most 100 rows: blocks joined while they fit (60+...), one block never split;
    the same ORFs in the same order, the same scores up to float rounding."""
    import virnucpro.classifier as classifier_module
    import virnucpro.predict as predict_module

    calls, real = [], classifier_module.predict_proba
    monkeypatch.setattr(classifier_module, "predict_proba",
                        lambda model, features: calls.append(len(features)) or real(model, features))
    monkeypatch.setattr(predict_module, "CLASSIFIER_ROWS", 100)
    predict(golden_prepared, golden_embeddings, tmp_path / "out", models=tiny_models)
    sizes = [shard["records"] for shard in fmt.load_manifest(golden_prepared)["shards"]]
    assert sizes == [60] * 5 + [56] and calls == sizes, (sizes, calls)
    monkeypatch.setattr(predict_module, "CLASSIFIER_ROWS", 130)
    calls.clear()
    predict(golden_prepared, golden_embeddings, tmp_path / "out2", models=tiny_models)
    assert calls == [120, 120, 116]
    ours, theirs = (table(folder / "prediction_results.txt")[1:] for folder in (tmp_path / "out2", golden_predicted))
    assert [row[:2] for row in ours] == [row[:2] for row in theirs]
    assert np.allclose([[float(x) for x in row[2:]] for row in ours],
                       [[float(x) for x in row[2:]] for row in theirs], rtol=1e-5, atol=1e-7)


def test_predict_threads_caps_the_thread_pools(tmp_path, run_cli, golden_prepared, golden_embeddings, tiny_models):
    """`--threads` as embed and run have it (README lists it for every command): torch and the pools."""
    code, err = run_cli("predict", "--prepared", golden_prepared, "--embeddings", *golden_embeddings,
                        "--outdir", tmp_path / "out", "--models", tiny_models, "--threads", "1")
    assert code == 0, err
    assert torch.get_num_threads() == 1
    assert all(os.environ[name] == "1" for name in POOL_VARIABLES)


def test_shard_order_does_not_matter(tmp_path, golden_prepared, golden_embeddings, golden_predicted, tiny_models):
    shuffled = golden_embeddings[:]
    random.Random(3).shuffle(shuffled)
    assert shuffled != golden_embeddings
    predict(golden_prepared, shuffled, tmp_path / "out", models=tiny_models)
    for name in TABLES:
        assert (tmp_path / "out" / name).read_text() == (golden_predicted / name).read_text()


def test_missing_repeated_and_foreign_shards_exit_5(tmp_path, run_cli, golden_prepared, golden_embeddings,
                                                    tiny_models, reference_dir):
    base = ["predict", "--prepared", golden_prepared, "--outdir", tmp_path / "o", "--models", tiny_models]
    code, message = run_cli(*base, "--embeddings", *golden_embeddings[:-1])
    assert code == 5 and "1 embedding shard(s) missing: shard_00005.tsv" in message, message
    code, message = run_cli(*base, "--embeddings", *golden_embeddings, golden_embeddings[0])
    assert code == 5 and "repeats shard 0" in message
    from virnucpro.prepare import prepare
    prepare([reference_dir / "vanilla/test_with_orfs.fa"], tmp_path / "other")
    embed(tmp_path / "other/shards/shard_00000.tsv", tmp_path / "foreign.h5", models=tiny_models, device="cpu")
    code, message = run_cli(*base, "--embeddings", *golden_embeddings[1:], tmp_path / "foreign.h5")
    assert code == 5 and "foreign.h5" in message and "not part of this prepared sample" in message
    other_models = tmp_path / "other_models.h5"
    shutil.copy(golden_embeddings[2], other_models)
    with edited_shard(other_models) as handle:
        models = json.loads(handle.attrs["models"])
        models["esm2"]["sha256"] = "0" * 64
        handle.attrs["models"] = json.dumps(models)
    code, message = run_cli(*base, "--embeddings", *golden_embeddings[:2], other_models, *golden_embeddings[3:])
    assert code == 5 and "other models" in message
    assert not (tmp_path / "o" / "prediction_results.txt").exists()


def test_precision_difference_only_warns(tmp_path, golden_prepared, golden_embeddings, tiny_models, capsys):
    bf16 = tmp_path / "bf16.h5"
    embed(golden_prepared / "shards" / fmt.shard_name(1), bf16, models=tiny_models, device="cpu", precision="bf16")
    predict(golden_prepared, [golden_embeddings[0], bf16, *golden_embeddings[2:]], tmp_path / "o", models=tiny_models)
    assert "different precisions" in capsys.readouterr().err


def test_no_orf_sample(tmp_path, run_cli, reference_dir, tiny_models):
    code, message = run_cli("run", reference_dir / "vanilla/test_sequences_small.fa", "--outdir", tmp_path / "o",
                            "--models", tiny_models, "--device", "cpu")
    assert code == 0, message
    assert (tmp_path / "o/prediction_results.txt").read_text() == "Sequence_ID\tPrediction\tscore1\tscore2\n"
    assert (tmp_path / "o/prediction_results_highestscore.csv").read_text() == "Modified_ID\tIs_Virus\n"
    calls = {row[-1] for row in table(tmp_path / "o/sequences.tsv")[1:]}
    assert calls == {"no_orf"}
    page = (tmp_path / "o/report.html").read_text()
    assert "max bin: 0 ORFs" in page and "0 rows in prediction_results.txt" in page  # it said "max bin: 1 ORFs"
    # titled with its output folder (the sample's in the pipeline): reports of samples told apart
    assert "<title>virnucpro report: o</title>" in page and "<h1>virnucpro report: o</h1>" in page
    assert not (tmp_path / "o/.virnucpro-work").exists()


def test_report_is_self_contained_and_agrees_with_tables(golden_predicted, golden_prepared):
    page = (golden_predicted / "report.html").read_text()
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page, re.I), "no external URL"
    assert "<script" not in page and "<link" not in page
    assert "TINY RANDOM MODELS" in page
    counts = fmt.load_manifest(golden_prepared)["counts"]
    calls = [row[-1] for row in table(golden_predicted / "sequences.tsv")[1:]]
    for value, label in ((counts["sequences"], "input sequences"), (calls.count("virus"), "called virus"),
                         (calls.count("others"), "called others"), (calls.count("no_orf"), "without any ORF")):
        assert f"<b>{value:,}</b><span>{label}</span>" in page
    assert "DOES NOT RECONCILE" not in page and page.count("reconciles") == 3
    info = json.loads((golden_predicted / "run_info.json").read_text())
    assert info["tiny_models"] is True and info["inputs"][0]["sha256"]
    assert set(info["models"]) == {"dnabert_s", "esm2"} and len(info["classifier"]["sha256"]) == 64
    assert info["attention_path"] == ["dnabert_s:reference,esm2:reference"]  # the exact path on CPU
    import torch

    settings, threads = info["embed_settings"][:-2], info["embed_settings"][-2]  # embed's defaults on the CPU
    assert settings == ["checkpoint_every=2000", f"cpu_isa={torch.backends.cpu.get_cpu_capability()}",
                        "dnabert_s:token_budget=4096", "esm2:token_budget=4096"], info
    assert re.fullmatch(r"threads=[1-9][0-9]*", threads), info
    assert info["embed_settings"][-1] == f"torch={torch.__version__}", info


def test_run_info_says_where_when_and_with_which_software(golden_predicted):
    """A provenance review: no torch version, time or working folder (which its relative paths need)."""
    import platform
    import time

    import h5py
    import torch

    info = json.loads((golden_predicted / "run_info.json").read_text())
    assert info["software"] == {"python": platform.python_version(), "torch": torch.__version__,
                                "numpy": np.__version__, "h5py": h5py.__version__, "platform": platform.platform(),
                                "virnucpro_code_sha256": code_sha256()}
    assert info["working_directory"] == os.getcwd()
    assert abs(time.time() - calendar.timegm(time.strptime(info["finished"], "%Y-%m-%dT%H:%M:%SZ"))) < 3600


def test_relative_input_paths_in_run_info_lead_to_the_inputs(tmp_path, monkeypatch, run_cli, tiny_models,
                                                               reference_dir):
    """A reviewer's case: inputs[].path is relative to the folder prepare ran in, and run_info.json
    named only predict's folder, where `d1/x.fa` was another file or none. It records both."""
    reads, elsewhere = tmp_path / "reads", tmp_path / "elsewhere"
    (reads / "d1").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(reference_dir / "vanilla/test_with_orfs.fa", reads / "d1" / "x.fa")
    monkeypatch.chdir(reads)
    assert run_cli("prepare", "d1/x.fa", "--outdir", "../prep")[0] == 0
    assert run_cli("embed", "../prep/shards/shard_00000.tsv", "--models", tiny_models, "--out", "../s.h5",
                   "--device", "cpu")[0] == 0
    assert run_cli("run", "d1/x.fa", "--outdir", "../run", "--models", tiny_models, "--device", "cpu")[0] == 0
    monkeypatch.chdir(elsewhere)
    assert run_cli("predict", "--prepared", "../prep", "--embeddings", "../s.h5", "--outdir", "../predicted",
                   "--models", tiny_models)[0] == 0
    for outdir, ran_in in (("predicted", elsewhere), ("run", reads)):
        info = json.loads((tmp_path / outdir / "run_info.json").read_text())
        assert (info["working_directory"], info["inputs_working_directory"]) == (str(ran_in.resolve()), str(reads.resolve())), outdir
        assert [entry["path"] for entry in info["inputs"]] == ["d1/x.fa"]
        assert fmt.sha256_of(Path(info["inputs_working_directory"]) / "d1/x.fa") == info["inputs"][0]["sha256"]


def _top_rows(page: str) -> dict[str, tuple[str, str]]:
    """The report's top table: sequence id -> (virus chunks / chunks with ORFs, call)."""
    table_html = page.split("<h2>Top sequences</h2>")[1].split("</table>")[0]
    rows = re.findall(r"<tr><td>(.*?)</td>.*?<td class='n'>([0-9,]+ / [0-9,]+)</td><td class='n'>[0-9.]+</td>"
                      r"<td>(.*?)</td></tr>", table_html)
    return {name: (fraction, call) for name, fraction, call in rows}


@pytest.mark.parametrize("threshold", [0.5, 0.6666667])
def test_report_top_sequences_and_threshold_agree_with_the_calls(tmp_path, golden_prepared, golden_embeddings,
                                                                 tiny_models, threshold):
    """The top table showed the fraction rounded to 2 decimals (50 virus chunks of 101: "0.50 ... others"
    under "at least 0.5") and the threshold to 6 digits: it now shows the two counts and the exact threshold."""
    out = tmp_path / "out"
    predict(golden_prepared, golden_embeddings, out, models=tiny_models, threshold=threshold)
    page = (out / "report.html").read_text()
    assert f"threshold {threshold!r} ·" in page and f"at least {threshold!r} of its chunks" in page
    shown = _top_rows(page)
    assert shown
    for row in table(out / "sequences.tsv")[1:]:
        if row[0] in shown:
            n_chunks, virus, no_orf = int(row[2]), int(row[3]), int(row[4])
            assert shown[row[0]] == (f"{virus} / {n_chunks - no_orf}", row[-1])
            assert (virus / (n_chunks - no_orf) >= threshold) == (row[-1] == "virus")


def test_threshold_minus_zero_is_shown_as_zero(tmp_path, golden_prepared, golden_embeddings, tiny_models):
    """`--threshold -0` passes the 0..1 range check as -0.0, and the report and run_info showed "-0.0"."""
    out = tmp_path / "out"
    predict(golden_prepared, golden_embeddings, out, models=tiny_models, threshold=-0.0)
    assert "threshold 0.0 ·" in (out / "report.html").read_text()
    assert '"threshold": 0.0' in (out / "run_info.json").read_text()


def test_run_equals_chained_commands_and_resumes_after_kill(tmp_path, reference_dir, tiny_models):
    fasta = reference_dir / "golden/mixed.fa"
    chained = tmp_path / "chained"
    cli = [sys.executable, "-m", "virnucpro"]
    subprocess.run(cli + ["prepare", str(fasta), "--outdir", str(chained / "prep")], check=True, capture_output=True)
    shard = chained / "prep/shards/shard_00000.tsv"
    # one thread: BLAS may pick other reduction orders under load with more, and this compares text;
    # the same checkpoint windows as the run below, since windows decide how sequences are batched
    subprocess.run(cli + ["embed", str(shard), "--models", str(tiny_models), "--out", str(chained / "s.h5"),
                          "--device", "cpu", "--threads", "1", "--checkpoint-every", "10"],
                   check=True, capture_output=True)
    subprocess.run(cli + ["predict", "--prepared", str(chained / "prep"), "--embeddings", str(chained / "s.h5"),
                          "--outdir", str(chained / "out"), "--models", str(tiny_models), "--threads", "1"],
                   check=True, capture_output=True)

    out = tmp_path / "run"
    command = cli + ["run", str(fasta), "--outdir", str(out), "--models", str(tiny_models), "--device", "cpu",
                     "--threads", "1", "--checkpoint-every", "10"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    # killed mid-embed: after two of the ~30 checkpoint windows, never in a race with the end of the run
    wait_for_parts(out / ".virnucpro-work/checkpoints", 2, process)
    process.kill()
    _, first_err = process.communicate()
    assert (out / ".virnucpro-work/prepared/manifest.json").exists()
    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "prepare: already done" in rerun.stderr
    prepared_line = next(line for line in first_err.splitlines() if "chunks without ORF" in line)
    assert ".virnucpro-work" not in prepared_line, "run names no folder it removes on success"
    at, _, total = rerun.stderr.split("resuming from checkpoint at record ")[1].split()[:3]
    assert 0 < int(at.replace(",", "")) < int(total.replace(",", "")), "resumed mid-shard"
    for name in TABLES:
        assert (out / name).read_text() == (chained / "out" / name).read_text(), name
    assert not (out / ".virnucpro-work").exists()


def test_predict_refuses_to_write_into_the_prepared_directory(run_cli, golden_prepared, golden_embeddings, tiny_models):
    before = (golden_prepared / "chunks.tsv").read_text()
    code, message = run_cli("predict", "--prepared", golden_prepared, "--embeddings", *golden_embeddings,
                            "--outdir", golden_prepared, "--models", tiny_models)
    assert code == 3 and "choose another --outdir" in message
    assert (golden_prepared / "chunks.tsv").read_text() == before


def test_run_rerun_with_other_precision_recomputes_embeddings(tmp_path, reference_dir, tiny_models, run_cli):
    from virnucpro.run import WORK

    fasta = reference_dir / "vanilla/test_with_orfs.fa"
    out = tmp_path / "o"
    assert run_cli("run", fasta, "--outdir", out, "--models", tiny_models, "--device", "cpu",
                   "--precision", "bf16", "--keep-embeddings")[0] == 0
    # leave a finished bf16 embedding where a rerun would look for it
    (out / WORK / "embeddings").mkdir(parents=True)
    shutil.copy(out / "embeddings" / "shard_00000.h5", out / WORK / "embeddings" / "shard_00000.h5")
    code, message = run_cli("run", fasta, "--outdir", out, "--models", tiny_models, "--device", "cpu",
                            "--precision", "fp32")
    assert code == 0 and "already done" not in message.split("prepare")[-1]
    info = json.loads((out / "run_info.json").read_text())
    assert info["precision"] == ["fp32"]


def test_run_never_forks_the_process_that_runs_the_models(tmp_path, reference_dir, tiny_models, run_cli,
                                                         monkeypatch):
    """A fork made the parent's later multi-threaded CPU math transiently wrong on our CI VMs
    (about 1 run in 6, errors near 1e-4): `run` prepares in its own process, even with many groups."""
    import os

    import virnucpro.seqio

    def refuse_fork():
        raise AssertionError("virnucpro run forked")

    monkeypatch.setattr(virnucpro.seqio, "BLOCK", 8192)  # many record groups
    monkeypatch.setattr(os, "fork", refuse_fork)
    out = tmp_path / "o"
    code, message = run_cli("run", reference_dir / "golden/mixed.fa", "--outdir", out, "--models", tiny_models,
                            "--device", "cpu", "--threads", "3")
    assert code == 0, message
    assert (out / "prediction_results.txt").is_file()


def test_run_checks_models_before_preparing(tmp_path, reference_dir, run_cli):
    out = tmp_path / "o"
    code, message = run_cli("run", reference_dir / "vanilla/test_with_orfs.fa", "--outdir", out,
                            "--models", tmp_path / "none", "--offline")
    assert code == 4 and "models" in message
    assert not (out / ".virnucpro-work" / "prepared").exists()


def test_run_checks_inputs_before_models_and_the_classifier_before_embedding(tmp_path, reference_dir, tiny_models,
                                                                             run_cli):
    from virnucpro.models import tiny
    from virnucpro.run import WORK

    out = tmp_path / "o"
    code, message = run_cli("run", tmp_path / "typo.fa", "--outdir", out, "--models", tmp_path / "none")
    assert code == 3 and "input file not found" in message and "typo.fa" in message
    assert not (tmp_path / "none").exists() and not out.exists(), "nothing downloaded, nothing created"

    fasta = reference_dir / "vanilla/test_with_orfs.fa"
    code, message = run_cli("run", fasta, "--outdir", out, "--models", tiny_models, "--device", "cpu",
                            "--classifier", tmp_path / "absent.pth")
    assert code == 4 and "absent.pth" in message and "check the path given to --classifier" in message
    assert "download" not in message, message
    assert not (out / WORK / "prepared").exists()

    narrow = tmp_path / "narrow.pth"
    tiny._tiny_classifier(narrow, 10, torch.Generator().manual_seed(1))
    code, message = run_cli("run", fasta, "--outdir", out, "--models", tiny_models, "--device", "cpu",
                            "--classifier", narrow)
    assert code == 5 and "takes 10 features" in message
    assert not (out / WORK / "embeddings").exists() and not (out / WORK / "checkpoints").exists()


def test_run_prepares_before_a_model_download_so_a_bad_record_costs_no_download(tmp_path, run_cli):
    """With models to download, a duplicate id (found only by reading every record) is exit 3 before
    any download is tried (nothing here can reach a model server: a try would be exit 4)."""
    reads = tmp_path / "dup.fa"
    reads.write_text(">a\nACGTACGTAAATTTGGGCCC\n>a\nACGT\n")
    empty_models = tmp_path / "models"
    empty_models.mkdir()
    code, message = run_cli("run", reads, "--outdir", tmp_path / "o", "--models", empty_models, "--device", "cpu")
    assert code == 3 and "duplicate" in message.lower(), message
    assert not any(empty_models.iterdir()), "nothing downloaded"


@pytest.mark.parametrize("case", ["HF_HUB_OFFLINE=1", "incomplete tiny models"])
def test_run_with_models_it_will_not_download_refuses_them_before_preparing(case, tmp_path, tiny_models, run_cli,
                                                                            monkeypatch):
    """Prepare goes first only when setting up would download: models missing under HF_HUB_OFFLINE=1
    (as the image sets it) or a tiny folder with a file gone are never downloaded, so they are exit 4
    at once instead of after every record was read and chunked."""
    reads = tmp_path / "reads.fa"
    reads.write_text(">r1\n" + "ATG" * 200 + "\n")
    if case == "HF_HUB_OFFLINE=1":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        models = tmp_path / "new-models"
    else:
        models = tmp_path / "tiny"
        shutil.copytree(tiny_models, models)
        next(models.glob("500_*.pth")).unlink()
    code, message = run_cli("run", reads, "--outdir", tmp_path / "o", "--models", models, "--device", "cpu")
    assert code == 4 and "prepared" not in message, message


def test_a_custom_chunk_size_without_a_classifier_is_a_usage_error(tmp_path, reference_dir, tiny_models, run_cli):
    """Only 300 and 500 have published classifiers: `run` says so before any work, `predict` once it
    reads the prepared chunk size, both exit 2 naming --classifier."""
    fasta = reference_dir / "vanilla/test_with_orfs.fa"
    code, message = run_cli("run", fasta, "--outdir", tmp_path / "r", "--models", tiny_models, "--chunk-size", "400",
                            "--allow-any-chunk-size")
    assert code == 2 and "--classifier" in message and not (tmp_path / "r").exists(), message
    code, message = run_cli("prepare", fasta, "--outdir", tmp_path / "p", "--chunk-size", "400",
                            "--allow-any-chunk-size")
    assert code == 0, message
    code, message = run_cli("predict", "--prepared", tmp_path / "p", "--embeddings", tmp_path / "none.h5",
                            "--outdir", tmp_path / "o", "--models", tiny_models)
    assert code == 2 and "chunk size 400" in message and "--classifier" in message, message


def test_run_stopped_during_the_download_keeps_its_finished_prepare(tmp_path, reference_dir, tiny_models, run_cli,
                                                                    monkeypatch):
    """Exit 6 says finished work is kept: a prepare finished before the download was stopped is
    reused by the rerun."""
    from virnucpro.errors import InterruptedByUser
    from virnucpro.models import download
    from virnucpro.run import WORK

    def stopped(*args, **kwargs):
        raise InterruptedByUser("SIGTERM received: stopped")

    empty = tmp_path / "models"
    empty.mkdir()
    out, fasta = tmp_path / "o", reference_dir / "vanilla/test_with_orfs.fa"
    with monkeypatch.context() as patch:
        patch.setattr(download, "ensure", stopped)
        code, message = run_cli("run", fasta, "--outdir", out, "--models", empty, "--device", "cpu")
    assert code == 6 and (out / WORK / "prepared" / "manifest.json").is_file(), message
    code, message = run_cli("run", fasta, "--outdir", out, "--models", tiny_models, "--device", "cpu")
    assert code == 0 and "prepare: already done" in message, message


def test_run_with_models_that_are_a_file_is_refused_before_prepare(tmp_path, reference_dir, run_cli):
    """Nothing to download there: the models are set up (and refused) before any prepare work."""
    models_file = tmp_path / "models"
    models_file.write_text("not a folder")
    code, message = run_cli("run", reference_dir / "vanilla/test_with_orfs.fa", "--outdir", tmp_path / "o",
                            "--models", models_file, "--device", "cpu")
    assert code == 4 and "models" in message and "is a file" in message, message
    assert "virnucpro prepared" not in message, message


def test_the_classifier_of_the_other_chunk_size_is_refused(tmp_path, reference_dir, tiny_models, run_cli,
                                                           golden_prepared, golden_embeddings):
    """Both classifiers take the same features: one known (by its checksum in a models manifest) to be
    made for 300-bp chunks is exit 5 on a 500-bp sample, in predict and before any work in run; a copy
    elsewhere is known too, and the right one is accepted."""
    wrong = tmp_path / "copied.pth"
    shutil.copy(tiny_models / "300_model_tiny.pth", wrong)
    for classifier in (tiny_models / "300_model_tiny.pth", wrong):
        code, message = run_cli("predict", "--prepared", golden_prepared, "--embeddings", *golden_embeddings,
                                "--outdir", tmp_path / "p", "--models", tiny_models, "--classifier", classifier)
        assert code == 5 and "made for 300-bp chunks" in message and classifier.name in message, message
    # the hint names the twin beside it (a reviewer's case: "500_model.pth" in a tiny folder)
    assert f"use the 500-bp classifier ({tiny_models / '500_model_tiny.pth'})" in " ".join(message.split()), message
    out = tmp_path / "r"
    code, message = run_cli("run", reference_dir / "vanilla/test_with_orfs.fa", "--outdir", out, "--models",
                            tiny_models, "--device", "cpu", "--classifier", wrong)
    assert code == 5 and "made for 300-bp chunks" in message and not out.exists(), message
    code, message = run_cli("predict", "--prepared", golden_prepared, "--embeddings", *golden_embeddings,
                            "--outdir", tmp_path / "p", "--models", tiny_models,
                            "--classifier", tiny_models / "500_model_tiny.pth")
    assert code == 0, message
    upper = tmp_path / "upper"  # a manifest of upper-case checksums, which `models check` verifies (a review's case)
    shutil.copytree(tiny_models, upper)
    manifest = json.loads((upper / "manifest.json").read_text())
    entry = manifest["models"]["classifier_300"]
    entry["sha256"] = {rel: digest.upper() for rel, digest in entry["sha256"].items()}
    (upper / "manifest.json").write_text(json.dumps(manifest))
    code, message = run_cli("predict", "--prepared", golden_prepared, "--embeddings", *golden_embeddings,
                            "--outdir", tmp_path / "p", "--models", upper, "--classifier", upper / "300_model_tiny.pth")
    assert code == 5 and "made for 300-bp chunks" in message, message
    # the fix fits run too, which has no prepare of its own to redo (it said "prepare again")
    assert "cut the sample into 300-bp chunks (--chunk-size 300 of prepare, or of run)" in " ".join(message.split())


def test_a_published_classifier_known_only_by_its_pinned_blob_id_is_refused_at_the_other_size(tmp_path, tiny_models,
                                                                                               monkeypatch):
    """Found by mutation: `500_model.pth` from a clone of VirNucPro's repository, in a folder no models
    manifest describes, is known only by its git blob id (what the pins hold); comparing the sha256
    alone took it for a 300-bp sample. The tiny file stands in for it, pinned as the published one."""
    import dataclasses

    from virnucpro.errors import InconsistentInputsError
    from virnucpro.models import pins, store
    from virnucpro.predict import refuse_classifier_of_other_chunk_size

    clone = tmp_path / "VirNucPro"
    clone.mkdir()
    published = Path(shutil.copy(tiny_models / "500_model_tiny.pth", clone / "500_model.pth"))
    _sha256, blob = store.sha256_file(published, git_sha1=True)
    role = pins.SOURCES["classifier_500"]
    pinned = dataclasses.replace(role, files=tuple(dataclasses.replace(spec, git_sha1=blob) for spec in role.files))
    monkeypatch.setitem(pins.SOURCES, "classifier_500", pinned)
    with pytest.raises(InconsistentInputsError) as refused:
        refuse_classifier_of_other_chunk_size(published, 300, None)
    assert refused.value.code == 5 and "made for 500-bp chunks" in str(refused.value), refused.value
    refuse_classifier_of_other_chunk_size(published, 500, None)  # its own size: taken


def test_a_custom_chunk_size_with_a_classifier_made_for_a_standard_one_is_said(tmp_path, reference_dir, tiny_models,
                                                                              run_cli):
    """A review's case: at --chunk-size 400 the published 500-bp classifier was taken without a word
    (the docs ask for your own there); it still runs, said so, and a classifier of your own is quiet."""
    import torch

    from virnucpro.classifier import load_classifier, save_original_way

    known = tmp_path / "copy_of_500.pth"
    shutil.copy(tiny_models / "500_model_tiny.pth", known)
    own = load_classifier(known)
    with torch.no_grad():
        own.hidden_layer.bias.add_(0.01)  # retrained, say: no published or recorded checksum
    save_original_way(own, tmp_path / "own.pth")
    fasta = reference_dir / "vanilla/test_with_orfs.fa"
    for classifier, said in ((known, True), (tmp_path / "own.pth", False)):
        code, message = run_cli("run", fasta, "--outdir", tmp_path / classifier.stem, "--models", tiny_models,
                                "--device", "cpu", "--chunk-size", "400", "--allow-any-chunk-size",
                                "--classifier", classifier)
        assert code == 0, message
        assert " ".join(message.split()).count("is the one made for 500-bp chunks") == int(said), message  # once


def test_output_paths_that_are_files_exit_3(tmp_path, reference_dir, run_cli, golden_prepared, golden_embeddings,
                                            tiny_models):
    a_file = tmp_path / "results"
    a_file.write_text("not a directory")
    code, message = run_cli("run", reference_dir / "vanilla/test_with_orfs.fa", "--outdir", a_file,
                            "--models", tiny_models, "--device", "cpu")
    assert code == 3 and "is a file" in message
    code, message = run_cli("predict", "--prepared", golden_prepared, "--embeddings", *golden_embeddings,
                            "--outdir", a_file, "--models", tiny_models)
    assert code == 3 and "is a file" in message
    assert a_file.read_text() == "not a directory"


def test_failed_predict_leaves_the_earlier_outputs_as_they_were(tmp_path, run_cli, golden_prepared,
                                                               golden_embeddings, golden_predicted, tiny_models):
    out = tmp_path / "out"
    shutil.copytree(golden_predicted, out)
    damaged = [tmp_path / path.name for path in golden_embeddings]
    for source, target in zip(golden_embeddings, damaged):
        shutil.copy(source, target)
    with edited_shard(damaged[3]) as handle:
        handle["esm2"][5, 0] = np.nan
        record = handle["ids"][5].decode()
    code, message = run_cli("predict", "--prepared", golden_prepared, "--embeddings", *damaged, "--outdir", out,
                            "--models", tiny_models)
    assert code == 9 and damaged[3].name in message and record in message
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in golden_predicted.iterdir())
    for path in golden_predicted.iterdir():
        if path.name != LOCK_NAME:  # names the process that holds (held) the folder
            assert (out / path.name).read_bytes() == path.read_bytes(), path.name


def test_keep_embeddings_never_replaces_a_folder_of_other_files(tmp_path, reference_dir, run_cli, tiny_models):
    from virnucpro.run import WORK

    out = tmp_path / "o"
    (out / "embeddings").mkdir(parents=True)
    (out / "embeddings" / "notes.txt").write_text("mine")
    code, message = run_cli("run", reference_dir / "vanilla/test_with_orfs.fa", "--outdir", out,
                            "--models", tiny_models, "--device", "cpu", "--keep-embeddings")
    assert code == 3 and "notes.txt" in message
    assert (out / "embeddings" / "notes.txt").read_text() == "mine" and not (out / WORK).exists()


def test_predict_holds_its_folder_while_it_checks_its_inputs(tmp_path, golden_prepared, golden_embeddings,
                                                            tiny_models, run_cli):
    """The cross-checks take minutes on a big sample: a second command on the same --outdir during
    them is refused (exit 3), not let in to have its output replaced afterwards."""
    ready, go = tmp_path / "checking", tmp_path / "go"
    script = tmp_path / "slow.py"
    script.write_text(
        "import sys, time\nfrom pathlib import Path\nimport virnucpro.predict as p\nfrom virnucpro.cli import main\n"
        "check = p._checked_inputs\n"
        "def slow(*a, **k):\n"
        f"    Path({str(ready)!r}).touch()\n"
        f"    while not Path({str(go)!r}).exists():\n"
        "        time.sleep(0.05)\n"
        "    return check(*a, **k)\n"
        "p._checked_inputs = slow\nmain(sys.argv[1:])\n")
    out = tmp_path / "out"
    args = ["predict", "--prepared", str(golden_prepared), "--outdir", str(out), "--models", str(tiny_models),
            "--embeddings", *map(str, golden_embeddings)]
    first = subprocess.Popen([sys.executable, str(script), *args], stderr=subprocess.PIPE, text=True)
    try:
        while not ready.exists():
            assert first.poll() is None, first.stderr.read()
        code, message = run_cli(*args)
        assert code == 3 and "another" in message.lower(), message
    finally:
        go.touch()
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert (out / "run_info.json").exists()


def test_a_publish_cut_short_leaves_a_folder_its_rerun_finishes(tmp_path, golden_prepared, golden_embeddings,
                                                                golden_predicted, tiny_models, run_cli, monkeypatch):
    """A stop after some outputs were moved in (before the marker listed them) made the rerun refuse the
    folder as holding files virnucpro did not write (exit 3); the rerun now completes it."""
    from virnucpro import errors, outdir

    out = tmp_path / "out"
    replace, moved = os.replace, []

    def replace_then_stop(source, target):
        replace(source, target)
        if Path(target).parent == out and not str(target).endswith(".tmp"):
            moved.append(target)
            if len(moved) == 2:
                raise errors.InterruptedByUser("SIGTERM received: stopped")

    args = ["predict", "--prepared", golden_prepared, "--outdir", out, "--models", tiny_models,
            "--embeddings", *golden_embeddings]
    monkeypatch.setattr(outdir.os, "replace", replace_then_stop)
    code, message = run_cli(*args)
    monkeypatch.undo()
    assert code == 6 and len(moved) == 2 and not (out / "run_info.json").exists(), message
    code, message = run_cli(*args)
    assert code == 0, message
    for name in TABLES:
        assert (out / name).read_text() == (golden_predicted / name).read_text()


def test_a_fifo_given_as_an_embedding_shard_is_refused_at_once(tmp_path, run_cli, golden_prepared, golden_embeddings,
                                                               tiny_models):
    """A FIFO with no writer would block the open forever (holding --outdir's lock): exit 3 at once,
    naming it; as `embed --out` it is not replaced (virnucpro did not write it)."""
    import os

    fifo = tmp_path / "f.h5"
    os.mkfifo(fifo)
    code, message = run_cli("predict", "--prepared", golden_prepared, "--embeddings", fifo, *golden_embeddings[1:],
                            "--outdir", tmp_path / "o", "--models", tiny_models)
    assert code == 3 and "f.h5 is not a regular file" in message, message
    code, message = run_cli("embed", golden_prepared / "shards" / "shard_00000.tsv", "--models", tiny_models,
                            "--out", fifo, "--device", "cpu")
    assert code == 3 and "f.h5 is not a regular file" in message, message


def test_highest_table_rows_sort_as_their_ids_and_cost_about_their_line(tmp_path):
    """Rows are held as their written lines (a review measured 237 bytes a row, ~240 MB per sorted
    run of Illumina-length ids, where the code said ~100 MB): lines sort as their ids, prefixes
    and non-ASCII included, and a row costs little more than its line."""
    from memory_helpers import traced_peak
    from virnucpro.predict import ChunkScore, HighestTable

    ids = ["a_chunk_1", "a!_chunk_1", "a_chunk_10", "a_chunk_1_chunk_1", "aé_chunk_1", "A_chunk_2", "~_chunk_1"]
    highest = HighestTable(tmp_path / "runs", run_lines=2)
    for chunk_id in ids:
        highest.add(ChunkScore(chunk_id, chunk_id + "F1", 0.2, 0.8))
    highest.write(tmp_path / "highest.csv")
    assert [line.split("\t")[0] for line in (tmp_path / "highest.csv").read_text().splitlines()[1:]] == sorted(ids)
    rows = 20_000
    scores = [ChunkScore(f"M00123:45:000000000-ABCDE:1:1101:{n}:1234_chunk_1", f"r{n}F1", 0.3, 0.7) for n in range(rows)]
    big = HighestTable(tmp_path / "big", run_lines=rows + 1)
    _, peak = traced_peak(lambda: [big.add(score) for score in scores])
    assert peak / rows < 150, f"{peak / rows:.0f} bytes a row"


def test_the_reports_best_score_is_never_rounded_onto_or_across_the_calls_bound():
    """A report review's case: a best virus score of 0.49996 showed as 0.5000 beside no virus chunk
    (0.5 makes a chunk viral), and 0.99996 as 1.0000; other scores keep 4 decimals."""
    from virnucpro.report import _score_text

    assert _score_text(0.49996) == "0.49996" and float(_score_text(0.4999999)) < 0.5
    assert _score_text(0.99996) == "0.99996" and _score_text(0.50004) == "0.50004"
    assert _score_text(0.5) == "0.5000" and _score_text(1.0) == "1.0000" and _score_text(0.0) == "0.0000"
    assert _score_text(0.123456) == "0.1235" and _score_text(0.73) == "0.7300"
    # a round-trip's digits, not 9 of them: 0.4999999999 showed as 0.5 (float64; float32 alike)
    assert _score_text(0.4999999999) == "0.4999999999" and _score_text(0.9999999999) == "0.9999999999"
    assert _score_text(np.float32(0.49999997)) == "0.49999997"


def test_a_checkpoint_folder_among_the_embeddings_is_named_as_one(tmp_path, run_cli, golden_prepared,
                                                                  golden_embeddings):
    """A review's case: `--embeddings DIR/*` catching embed's <out>.ckpt folder was told to give
    'the files in it: DIR/x.h5.ckpt/*.h5', which a checkpoint folder never holds."""
    import shlex

    leftover = tmp_path / "e x" / "s.h5.ckpt"  # a space: the suggested glob quotes the folder
    leftover.mkdir(parents=True)
    code, message = run_cli("predict", "--prepared", golden_prepared, "--embeddings", *golden_embeddings, leftover,
                            "--outdir", tmp_path / "p")
    said = " ".join(message.split())
    assert code == 3 and "it is embed's checkpoint folder, which holds no embedding file: leave it out" in said, message
    assert f"--embeddings {shlex.quote(str(leftover.parent))}/*.h5" in said and f"{leftover}/*.h5" not in said, message


def test_the_reports_histogram_counts_the_virus_scores_of_the_table(golden_predicted):
    """report.html's histogram, bar by bar, is the virus scores (score2) of prediction_results.txt in
    HISTOGRAM_BINS equal bins: a histogram of the other column showed with no test failing."""
    from virnucpro.predict import HISTOGRAM_BINS

    bars = re.findall(r"<title>([\d.]+)-([\d.]+): ([\d,]+) ORFs?</title>", (golden_predicted / "report.html").read_text())
    shown = [int(count.replace(",", "")) for _, _, count in bars]
    expected = [0] * HISTOGRAM_BINS
    for row in table(golden_predicted / "prediction_results.txt")[1:]:
        expected[min(int(np.float32(row[3]) * HISTOGRAM_BINS), HISTOGRAM_BINS - 1)] += 1
    assert len(bars) == HISTOGRAM_BINS and shown == expected, (shown, expected)
    assert sum(shown) == len(table(golden_predicted / "prediction_results.txt")) - 1
