"""The pipeline on the real Nextflow engine (24.10.0 from Maven Central), local executor, no container.

What a user relies on: the test profile is green and its tables equal `virnucpro run`; -resume
re-runs nothing; a killed EMBED task is retried and resumes mid-shard from its checkpoints; -resume
after Nextflow itself was killed keeps the shard its orphaned EMBED task finished; bad
parameters and samplesheets are refused before any task, naming the culprit; unusual samples
(identical twins, no ORF at all, two files with one name) come through whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import sys
from pathlib import Path

import pytest

from engine import (NEXTFLOW, REPO, SAMPLE_FILES, TEST_INPUTS, Run, assert_retried_and_resumed, assert_same_tables,
                    checkpoint_parts, coding_reads, embed_pids, finish, killed_embed_run, read_tsv, require_engine,
                    resumed_after_head_killed, run_pipeline, start_pipeline, task_env, tiny_models_of, virnucpro_run,
                    wait_for)

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module", autouse=True)
def _engine():
    require_engine()


def assert_nothing_rerun(run) -> None:
    run.assert_ok()
    statuses = {row["name"]: row["status"] for row in run.trace()}
    assert statuses and set(statuses.values()) == {"CACHED"}, f"-resume ran tasks again: {statuses}"
    assert "Submitted process" not in run.output


# --------------------------------------------------------------------------------------------------
# The test profile
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def test_run(tmp_path_factory):
    run = run_pipeline(tmp_path_factory.mktemp("test_profile"), "-profile", "test")
    run.assert_ok()
    return run


def test_test_profile_is_green_and_publishes_every_output(test_run):
    for sample in ("sample_a", "sample_b"):
        for name in SAMPLE_FILES:
            assert (test_run.outdir / sample / name).is_file(), f"{sample}/{name} not published"
    summary = read_tsv(test_run.outdir / "virnucpro_summary.tsv")
    assert [row["sample"] for row in summary] == ["sample_a", "sample_b"]
    assert all(row["reconciled"] == "yes" for row in summary)
    assert (test_run.outdir / "multiqc" / "multiqc_report.html").is_file()
    assert sorted(path.name for path in test_run.outdir.iterdir()) == [
        "multiqc", "pipeline_info", "sample_a", "sample_b", "virnucpro_summary.tsv"]  # nothing else published
    versions = (test_run.outdir / "pipeline_info" / "virnucpro_software_mqc_versions.yml").read_text()
    for process in ("VIRNUCPRO_PREPARE:", "VIRNUCPRO_EMBED:", "VIRNUCPRO_PREDICT:", "Nextflow: 24.10.0"):
        assert process in versions
    assert versions.startswith("VIRNUCPRO_"), versions  # as the start-up check knows the pipeline's (publishedOpenings)
    assert {row["status"] for row in test_run.trace()} == {"COMPLETED"}
    assert not (test_run.outdir / "RUN_UNFINISHED.txt").exists()


def test_multiqc_reads_its_config_without_a_warning_and_puts_the_summary_first(test_run):
    """A reviewer's case: every plot export failed with an ERROR in MultiQC's log (Kaleido 1 and a
    Chrome needed) and published empty folders; the section order named a section MultiQC 1.35
    does not have, so the versions came first."""
    folder = test_run.outdir / "multiqc"
    log = (folder / "multiqc_report_data" / "multiqc.log").read_text()
    for bad in ("[WARNING", "[ERROR", "not found"):
        assert bad not in log, [line for line in log.splitlines() if bad in line]
    assert sorted(path.name for path in folder.iterdir()) == ["multiqc_report.html", "multiqc_report_data"]
    page = (folder / "multiqc_report.html").read_text()
    sections = re.findall(r'id="mqc-module-section-([^"]+)"', page)
    assert sections == ["virnucpro-virnucpro-summary", "multiqc_software_versions"], sections


def test_the_parameters_the_run_took_are_recorded_in_pipeline_info(test_run):
    """A provenance review: the test profile's values (--shard_size, --precision) were in the console
    log only; pipeline_info/params_<start>.json records every value the run took."""
    (recorded,) = (test_run.outdir / "pipeline_info").glob("params_*.json")
    values = json.loads(recorded.read_text())
    assert values["shard_size"] == 8 and values["precision"] == "fp32" and values["tiny_models"] is True, values
    assert values["outdir"] == str(test_run.outdir) and "trace-report-suffix" not in values, values
    # the file's name has it: given to -params-file, the record named the new run's reports after this
    # one's (a reviewer's case: "Trace file already exists", and the overwrite Nextflow suggests truncated it)
    traces = {path.name[len("execution_trace_"):-len(".txt")] for path in recorded.parent.glob("execution_trace_*.txt")}
    assert "trace_report_suffix" not in values and recorded.name[len("params_"):-len(".json")] in traces, values


def test_test_profile_tables_equal_virnucpro_run(test_run, tmp_path):
    models = tiny_models_of(test_run)
    inputs = {"sample_a": TEST_INPUTS / "sample_a.fasta", "sample_b": TEST_INPUTS / "sample_b.fastq"}
    for sample, reads in inputs.items():
        single = virnucpro_run([reads], models, tmp_path / sample)
        assert_same_tables(test_run.outdir / sample, single)
        counts = json.loads((single / "run_info.json").read_text())["counts"]
        (row,) = [r for r in read_tsv(test_run.outdir / "virnucpro_summary.tsv") if r["sample"] == sample]
        assert int(row["orfs"]) == counts["orfs"] and int(row["chunks"]) == counts["chunks"]


def test_resume_reruns_nothing_and_publishes_this_runs_results_again(test_run):
    """A table an earlier run with other parameters left in --outdir (here: edited) is replaced by
    the cached task's own, so --outdir holds this run's results only: with --save_embeddings, a
    shard an earlier run published beyond this run's (its input was longer) is removed, and the
    folder of a sample this run does not have is said (reviewers' cases)."""
    outdir = test_run.outdir
    before = {p: p.stat().st_mtime_ns for p in (outdir / "sample_a").iterdir()}
    published = outdir / "sample_a" / "run_info.json"
    genuine = published.read_bytes()
    published.write_text(genuine.decode().replace('"threshold": 0.5', '"threshold": 0.3'))
    assert published.read_bytes() != genuine
    (outdir / "sample_a" / "embeddings").mkdir()
    stale = outdir / "sample_a" / "embeddings" / "shard_00042.h5"
    stale.write_bytes(b"virnucpro embedding shard seal 1\n" + bytes(64))
    shutil.copytree(outdir / "sample_b", outdir / "removed_sample")
    try:
        again = run_pipeline(test_run.launch, "-profile", "test", "-resume", "--save_embeddings")
        assert_nothing_rerun(again)
        assert {p: p.stat().st_mtime_ns for p in (outdir / "sample_a").iterdir()}.keys() == before.keys() | {
            outdir / "sample_a" / "embeddings"}
        assert published.read_bytes() == genuine
        assert not stale.exists() and "removed 1 embedding shard an earlier run published" in again.output
        assert sorted(p.name for p in (outdir / "sample_a" / "embeddings").iterdir()) == ["shard_00000.h5", "shard_00001.h5"]
        assert "holds the results (or part of them) of sample 'removed_sample' from an earlier run" in again.output, again.output[-3000:]
    finally:  # the outdir as the test profile left it, for the tests after this one
        for folder in (outdir / "sample_a" / "embeddings", outdir / "sample_b" / "embeddings", outdir / "removed_sample"):
            shutil.rmtree(folder, ignore_errors=True)


def test_a_rerun_that_would_leave_an_earlier_runs_multiqc_report_is_refused(test_run):
    """A reviewer's case: a rerun with --skip_multiqc left the earlier run's MultiQC report (of other
    counts) beside this run's tables, unannounced. (After the other tests of the run: the refused
    rerun adds a trace, which they would read as the run's.)"""
    before = folder_state(test_run.outdir)
    again = run_pipeline(test_run.launch, "-profile", "test", "-resume", "--skip_multiqc")
    assert again.returncode != 0 and "Submitted process" not in again.output, again.output[-3000:]
    for said in (f"{test_run.outdir / 'multiqc'}: an earlier run published this", "--skip_multiqc",
                 f"rm -r '{test_run.outdir / 'multiqc'}'"):
        assert said in again.output, again.output[-3000:]
    results = {name: state for name, state in folder_state(test_run.outdir).items() if not name.startswith("pipeline_info/")}
    assert results == {name: state for name, state in before.items() if not name.startswith("pipeline_info/")}


def test_a_rerun_that_would_leave_plots_an_earlier_version_exported_is_refused(test_run):
    """Plots a virnucpro that exported them left in multiqc/ would sit beside this run's report, of
    other counts: refused before any task, with the removal. (After the other tests of the run.)"""
    plots = test_run.outdir / "multiqc" / "multiqc_report_plots"
    (plots / "png").mkdir(parents=True)
    (plots / "png" / "virnucpro-virnucpro-summary.png").write_bytes(b"an earlier run's plot")
    try:
        before = folder_state(test_run.outdir)
        again = run_pipeline(test_run.launch, "-profile", "test", "-resume")
        assert again.returncode != 0 and "Submitted process" not in again.output, again.output[-3000:]
        for said in (f"{plots}: an earlier run published this", "no MultiQC plot export", f"rm -r '{plots}'"):
            assert said in again.output, again.output[-3000:]
        after = {name: state for name, state in folder_state(test_run.outdir).items() if not name.startswith("pipeline_info/")}
        assert after == {name: state for name, state in before.items() if not name.startswith("pipeline_info/")}
    finally:  # the outdir as the test profile left it
        shutil.rmtree(plots)


def test_a_rerun_refuses_to_publish_over_what_the_pipeline_did_not_write(test_run):
    """A reviewer's case: in an --outdir an earlier run wrote, publishing deleted a folder of the
    user's at a table's name, notes left in a sample's prepared/ (with the folder) and replaced a
    user's file at a shard's name. Refused before any task, each named, all kept. (After the tests
    above: the refused rerun adds a trace, which they would read as the run's.)"""
    outdir = test_run.outdir
    report = outdir / "sample_a" / "report.html"
    report.rename(outdir / "report.keep")
    (report / "keep.txt").parent.mkdir()
    (report / "keep.txt").write_text("mine\n")
    (outdir / "sample_b" / "prepared").mkdir()
    (outdir / "sample_b" / "prepared" / "mynotes.txt").write_text("notes\n")
    (outdir / "sample_a" / "embeddings").mkdir()
    (outdir / "sample_a" / "embeddings" / "shard_00000.h5").write_text("a user's file\n")
    (outdir / "sample_a" / "embeddings" / "umap.h5").write_text("never published over: not refused\n")
    notes = outdir / "multiqc" / "multiqc_report_data" / "my_notes.txt"
    notes.write_text("mine\n")
    sequences = outdir / "sample_b" / "sequences.tsv"
    sequences.rename(outdir / "sequences.keep")
    (outdir / "mine.txt").write_text("mine\n")
    sequences.symlink_to(outdir / "mine.txt")
    before = folder_state(outdir)
    try:
        again = run_pipeline(test_run.launch, "-profile", "test", "-resume", "--save_prepared", "--save_embeddings")
        assert again.returncode != 0 and "Submitted process" not in again.output, again.output[-3000:]
        for said in (f"{report} (a folder)", "'mynotes.txt', which virnucpro prepare does not write",
                     "shard_00000.h5 (not a shard virnucpro embed wrote)", "move them out of the way",
                     f"{sequences} (a symbolic link; where it points: a file this pipeline did not write)",
                     "'my_notes.txt', which MultiQC does not write there"):
            assert said in again.output, again.output[-3000:]
        assert "umap.h5" not in again.output
        after = {name: state for name, state in folder_state(outdir).items() if not name.startswith("pipeline_info/")}
        assert after == {name: state for name, state in before.items() if not name.startswith("pipeline_info/")}
    finally:  # the outdir as the test profile left it
        shutil.rmtree(report)
        (outdir / "report.keep").rename(report)
        sequences.unlink()
        (outdir / "sequences.keep").rename(sequences)
        notes.unlink()
        (outdir / "mine.txt").unlink()
        for folder in (outdir / "sample_b" / "prepared", outdir / "sample_a" / "embeddings"):
            shutil.rmtree(folder)


def test_stub_run_creates_every_declared_output(tmp_path):
    """-stub-run: every module's stub block makes what its outputs declare, through the real engine."""
    run = run_pipeline(tmp_path, "-profile", "test", "-stub-run", "--skip_multiqc")
    run.assert_ok()
    assert {row["process"].split(":")[-1] for row in run.trace() if row["status"] == "COMPLETED"} >= {
        "VIRNUCPRO_MODELS_TINY", "VIRNUCPRO_PREPARE", "VIRNUCPRO_EMBED", "VIRNUCPRO_PREDICT", "VIRNUCPRO_SUMMARY"}
    # its placeholders never mix with a real run's results
    real = run_pipeline(tmp_path / "real", "-profile", "test", "--skip_multiqc", outdir=str(run.outdir))
    assert_refused_before_any_task(real, "holds the placeholder results of a stub run", "give this run a new --outdir")


def test_a_stub_run_is_refused_into_a_real_runs_results_and_leaves_them_as_they_are(test_run, tmp_path):
    """A reviewer's case: -stub-run into a real run's --outdir replaced its tables by header-only ones,
    its summary by one of no rows, and removed embedding shards, then said it succeeded."""
    before = {path: path.read_bytes() for path in test_run.outdir.rglob("*") if path.is_file()}
    run = run_pipeline(tmp_path, "-profile", "test", "-stub-run", "--save_embeddings", outdir=str(test_run.outdir))
    assert_refused_before_any_task(run, "-stub-run writes placeholders in place of results", "sample_a",
                                   "give the stub run a new --outdir")
    after = {path: path.read_bytes() for path in test_run.outdir.rglob("*") if path.is_file() and path in before}
    assert after == before


def test_a_resume_with_another_checkpoint_dir_says_what_it_costs_and_how_to_keep_the_shards(tmp_path):
    """A reviewer's case: EMBED tasks are keyed by the checkpoint folder, so a -resume adding
    --checkpoint_dir embedded every finished shard again, unannounced (stub runs: the start-up is real).
    The first run fails after its EMBED tasks, as a -resume's usually does (it went unwarned when only
    runs that succeeded recorded their settings), and going back to its settings is not warned (every
    shard is cached)."""
    failing = tmp_path / "multiqc-fails.config"
    failing.write_text("process { withName: 'MULTIQC' { beforeScript = 'exit 1' } }\n")
    first = run_pipeline(tmp_path, "-profile", "test", "-stub-run", "-c", str(failing))
    assert first.returncode != 0 and {row["status"] for row in first.trace()
                                      if row["process"].endswith("EMBED")} == {"COMPLETED"}, first.output[-3000:]
    default = str(tmp_path / "work" / "virnucpro-checkpoints")
    same = run_pipeline(tmp_path, "-profile", "test", "-stub-run", "--skip_multiqc", "-resume")
    same.assert_ok()
    assert "EMBED tasks are keyed by the checkpoint folder" not in same.output
    moved = run_pipeline(tmp_path, "-profile", "test", "-stub-run", "--skip_multiqc", "-resume",
                         "--checkpoint_dir", str(tmp_path / "elsewhere"))
    moved.assert_ok()
    assert f"the run this -resume continues used {default}" in moved.output, moved.output[-3000:]
    assert f"resume with --checkpoint_dir {default}" in moved.output
    back = run_pipeline(tmp_path, "-profile", "test", "-stub-run", "--skip_multiqc", "-resume")
    back.assert_ok()
    assert "EMBED tasks are keyed" not in back.output, back.output[-3000:]
    assert {row["status"] for row in back.trace() if row["process"].endswith("EMBED")} == {"CACHED"}
    # the token budget is on EMBED's command line too (it does not change the vectors)
    budget = run_pipeline(tmp_path, "-profile", "test", "-stub-run", "--skip_multiqc", "-resume",
                          "--token_budget", "1000")
    budget.assert_ok()
    assert "--token_budget 1000: the run this -resume continues used not given" in budget.output, budget.output[-3000:]
    assert "resume with --token_budget left out" in budget.output and "--checkpoint_dir" not in budget.output


def test_without_a_profile_the_tasks_fit_the_machine_that_runs_them(tmp_path):
    """No profile, as on a laptop: PREPARE asks for 4 CPUs and EMBED for 8 CPUs and 48 GB, more
    than a small machine has, which the local executor refused before any task ("Process requirement
    exceeds available CPUs"); the requests are capped at the machine and the run completes."""
    reads = coding_reads(tmp_path / "reads.fa", 20)
    run = run_pipeline(tmp_path / "launch", "--input", str(reads), "--tiny_models", "--device", "cpu",
                       "--skip_multiqc")
    run.assert_ok()
    assert "exceeds available" not in run.output
    assert (run.outdir / "reads" / "prediction_results.txt").is_file()


def changed_dnabert_weights(models: Path, scratch: Path) -> None:
    """The DNABERT-S weights of a tiny models folder rewritten in place (other values, the same
    names, so the folders' own entries do not change); the manifest still records the old ones."""
    from safetensors.torch import load_file, save_file
    weights = models / "DNABERT-S-tiny" / "model.safetensors"
    tensors = {name: tensor + 0.05 if tensor.is_floating_point() else tensor
               for name, tensor in load_file(str(weights)).items()}
    save_file(tensors, str(scratch))
    with open(weights, "r+b") as handle:
        handle.write(scratch.read_bytes())
        handle.truncate()


def record_dnabert_weights(models: Path) -> None:
    """The manifest's checksum of the DNABERT-S weights updated, as a new download into the folder would."""
    weights = models / "DNABERT-S-tiny" / "model.safetensors"
    manifest = json.loads((models / "manifest.json").read_text())
    manifest["models"]["dnabert_s"]["sha256"]["DNABERT-S-tiny/model.safetensors"] = \
        hashlib.sha256(weights.read_bytes()).hexdigest()
    (models / "manifest.json").write_text(json.dumps(manifest))


def test_resume_embeds_again_when_a_model_file_changed_and_only_then(tmp_path):
    """EMBED's cache key is the models folder's files, not the folder's own entry: virnucpro's own
    writes there (checksum cache, fp16 copy, the manifest recording it) and files the encoders do
    not read (a classifier, a README) keep every EMBED cached,
    and a model file changed in place (same names, new weights) embeds the shards again (a -resume
    used to keep the old embeddings, and PREDICT published results of the old model). The folder's
    name holds what a task's shell would misread: a leading `~`, a space, a quote (each once made
    every EMBED fail)."""
    models = tmp_path / "~mo d'els"
    made = subprocess.run([str(Path(sys.executable).parent / "virnucpro"), "models", "tiny", str(models)],
                          capture_output=True, text=True, env=task_env(), timeout=300)
    assert made.returncode == 0, made.stderr
    reads = coding_reads(tmp_path / "reads.fa", 12)  # two shards
    args = ("-profile", "test", "--input", str(reads), "--models", str(models))
    first = run_pipeline(tmp_path / "launch", *args)
    first.assert_ok()
    (models / ".sha256-cache.json").write_text("{}\n")  # what embed writes there
    (models / "esm2_tiny.fp16.safetensors").write_bytes(b"\0" * 64)
    (models / "manifest.json").write_text((models / "manifest.json").read_text())
    os.utime(models / "300_model_tiny.pth")  # a classifier is PREDICT's: no shard to embed again
    (models / "README.txt").write_text("where these models came from\n")
    cached = run_pipeline(tmp_path / "launch", *args, "-resume")
    cached.assert_ok()  # PREDICT, which stages the manifest, may run again: seconds, not the GPU hours
    assert {row["status"] for row in cached.tasks("VIRNUCPRO_EMBED") + cached.tasks("VIRNUCPRO_PREPARE")} == {"CACHED"}
    (models / "esm2_tiny.fp16.safetensors").unlink()
    changed_dnabert_weights(models, tmp_path / "new.safetensors")
    # the manifest unchanged (the pins the same): the weights alone must make EMBED run again, and
    # it refuses them (a constant models key kept every task cached and published the old tables)
    unrecorded = run_pipeline(tmp_path / "launch", *args, "-resume")
    assert unrecorded.returncode != 0 and "checksum mismatch for dnabert_s" in unrecorded.output, unrecorded.output[-3000:]
    assert "CACHED" not in {row["status"] for row in unrecorded.tasks("VIRNUCPRO_EMBED")}, unrecorded.trace()
    record_dnabert_weights(models)
    again = run_pipeline(tmp_path / "launch", *args, "-resume")
    again.assert_ok()
    assert {row["status"] for row in again.tasks("VIRNUCPRO_EMBED")} == {"COMPLETED"}, again.trace()
    assert_same_tables(again.outdir / "reads", virnucpro_run([reads], models, tmp_path / "single"))


def test_resume_prepares_again_inputs_changed_in_place_and_reuses_one_fetched_again(tmp_path):
    """PREPARE is keyed by its inputs' content (cache 'deep'). Two samples' files swapped, each keeping
    its size and modification time, are prepared again: with Nextflow's standard key (path, size,
    time) a -resume published each sample's results of the other's reads. The same reads written
    again with a new modification time (fetched again) reuse every task."""
    reads_a = coding_reads(tmp_path / "a.fa", 6, seed=1, prefix="a")
    reads_b = coding_reads(tmp_path / "b.fa", 6, seed=2, prefix="b")
    sheet = write_samplesheet(tmp_path / "sheet.csv", [("sa", reads_a), ("sb", reads_b)])
    args = ("-profile", "test", "--input", str(sheet))
    run_pipeline(tmp_path / "launch", *args).assert_ok()
    contents, times = {}, {}
    for reads in (reads_a, reads_b):
        contents[reads], times[reads] = reads.read_bytes(), (reads.stat().st_atime_ns, reads.stat().st_mtime_ns)
    for reads, other in ((reads_a, reads_b), (reads_b, reads_a)):
        reads.write_bytes(contents[other])
        os.utime(reads, ns=times[reads])
    swapped = run_pipeline(tmp_path / "launch", *args, "-resume")
    swapped.assert_ok()
    assert {row["status"] for row in swapped.tasks("VIRNUCPRO_PREPARE")} == {"COMPLETED"}, swapped.trace()
    for sample, prefix in (("sa", "b_"), ("sb", "a_")):
        ids = {row["sequence_id"] for row in read_tsv(swapped.outdir / sample / "sequences.tsv")}
        assert ids == {f"{prefix}{i}" for i in range(6)}, (sample, ids)
    reads_a.write_bytes(reads_a.read_bytes())
    os.utime(reads_a, ns=(times[reads_a][0], times[reads_a][1] + 10**10))
    assert_nothing_rerun(run_pipeline(tmp_path / "launch", *args, "-resume"))

def test_a_virnucpro_of_another_version_stops_the_first_task_naming_both(tmp_path):
    """The virnucpro on the PATH (no container) is another version than the pipeline: the first task
    stops with exit 5 naming both versions, instead of running modules written for another CLI."""
    from virnucpro import __version__
    fake = tmp_path / "bin" / "virnucpro"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo "virnucpro 9.9.9"; exit 0; }\n'
                    f'exec {Path(sys.executable).parent / "virnucpro"} "$@"\n')
    fake.chmod(0o755)
    run = run_pipeline(tmp_path / "launch", "-profile", "test", "--skip_multiqc",
                       env={"PATH": f"{fake.parent}{os.pathsep}{task_env()['PATH']}"})
    assert run.returncode != 0
    assert f"this pipeline runs virnucpro {__version__}, but the task found virnucpro 9.9.9" in run.output, run.output[-4000:]
    assert "exit status (5)" in run.output
    assert not list(run.outdir.glob("*/prediction_results.txt"))


def test_virnucpro_alone_on_the_path_runs_every_task_and_a_missing_multiqc_is_said_at_start(tmp_path):
    """A pipx-style install: `virnucpro` linked onto a PATH that has no `python` (python3 only) and
    no multiqc. EMBED's torch version comes from virnucpro's own interpreter (a probe run with
    `python` failed every finished EMBED task with 127); the missing multiqc is a warning when the
    run starts, then only the last task fails, after every result is published."""
    links = tmp_path / "bin"
    links.mkdir()
    (links / "virnucpro").symlink_to(Path(sys.executable).parent / "virnucpro")
    path = os.pathsep.join([str(links), "/usr/bin", "/bin"])
    assert not shutil.which("python", path=path) and not shutil.which("multiqc", path=path)
    run = run_pipeline(tmp_path / "launch", "-profile", "test", env={"PATH": path})
    assert run.returncode != 0 and "multiqc is not on the PATH" in run.output.split("Submitted process")[0]
    assert {row["process"].split(":")[-1] for row in run.trace() if row["status"] == "FAILED"} == {"MULTIQC"}
    for sample in ("sample_a", "sample_b"):
        assert (run.outdir / sample / "prediction_results.txt").is_file()
    versions = (run.outdir / "pipeline_info" / "virnucpro_software_mqc_versions.yml").read_text()
    assert re.search(r"torch: \d+\.\d+", versions), versions


def test_a_classifier_the_manifest_beside_it_records_for_the_other_chunk_size_is_refused(tmp_path):
    """`--classifier` staged alone could not tell it was made for 500-bp chunks in a 300-bp run (exit
    0); then PREDICT refused it, after every EMBED task. The manifest of its folder records it, so the
    run now stops at start-up, before any task."""
    models = tmp_path / "models"
    made = subprocess.run([str(Path(sys.executable).parent / "virnucpro"), "models", "tiny", str(models)],
                          capture_output=True, text=True, env=task_env(), timeout=300)
    assert made.returncode == 0, made.stderr
    # the chunk size quoted, as a params file may give it: validation accepts it, the check compared
    # the text "300" with the numbers 300 and 500 and let the run go on
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"chunk_size": "300", "models": str(models)}))
    run = run_pipeline(tmp_path / "launch", "-profile", "test", "--skip_multiqc", "--input",
                       str(coding_reads(tmp_path / "reads.fa", 5)), "-params-file", str(params),
                       "--classifier", str(models / "500_model_tiny.pth"))
    said = f"--classifier {models / '500_model_tiny.pth'} is the classifier for 500-bp chunks"
    assert run.returncode != 0 and said in run.output and "--chunk_size is 300" in run.output, run.output[-3000:]
    assert "Submitted process" not in run.output, run.output[-3000:]


def test_a_classifier_of_other_encoders_than_models_is_refused_before_any_task(tmp_path):
    """The classifier of another model set (its folder's manifest records it) with --models: PREDICT
    refused it after every EMBED task, naming its staged folder; the run now stops at start-up."""
    sets = {}
    for name, seed in (("models", ""), ("other", "+1")):
        code = (f"from pathlib import Path; from virnucpro.models import tiny; tiny.TINY_SEED = tiny.TINY_SEED{seed}; "
                f"tiny.make_tiny(Path({str(tmp_path / name)!r}))")
        made = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=task_env(), timeout=300)
        assert made.returncode == 0, made.stderr
        sets[name] = tmp_path / name
    run = run_pipeline(tmp_path / "launch", "-profile", "test", "--skip_multiqc", "--input",
                       str(coding_reads(tmp_path / "reads.fa", 5)), "--models", str(sets["models"]),
                       "--classifier", str(sets["other"] / "500_model_tiny.pth"))
    assert_refused_before_any_task(run, f"belongs to the models in {sets['other']}",
                                   f"--models {sets['models']} holds another esm2 model")


def test_a_users_own_classifier_reached_through_a_link_named_like_a_recorded_one_scores(tmp_path):
    """A review's case: a link named `500_model_tiny.pth` to the user's own file in a models folder was
    staged under the link's name beside the target folder's manifest, and PREDICT took it for the
    recorded file of that name (exit 4 after every EMBED task), where `virnucpro predict` scores it.
    A damaged classifier of a models folder stops the run at start-up instead."""
    models = tmp_path / "models"
    made = subprocess.run([str(Path(sys.executable).parent / "virnucpro"), "models", "tiny", str(models)],
                          capture_output=True, text=True, env=task_env(), timeout=300)
    assert made.returncode == 0, made.stderr
    import torch

    from virnucpro.classifier import load_classifier, save_original_way
    own = load_classifier(models / "500_model_tiny.pth")
    with torch.no_grad():
        own.output_layer.bias[1] += 0.5  # the user's retrained classifier, recorded nowhere
    save_original_way(own, models / "my_retrained_500.pth")
    (tmp_path / "classifiers").mkdir()
    (tmp_path / "classifiers" / "500_model_tiny.pth").symlink_to(models / "my_retrained_500.pth")
    reads = str(coding_reads(tmp_path / "reads.fa", 5))
    run = run_pipeline(tmp_path / "launch", "-profile", "test", "--skip_multiqc", "--input", reads, "--models",
                       str(models), "--classifier", str(tmp_path / "classifiers" / "500_model_tiny.pth"))
    assert run.returncode == 0, run.output[-3000:]
    info = json.loads(next(run.outdir.glob("*/run_info.json")).read_text())
    assert info["classifier"]["sha256"] == hashlib.sha256((models / "my_retrained_500.pth").read_bytes()).hexdigest()
    with open(models / "500_model_tiny.pth", "ab") as handle:
        handle.write(b"x")
    damaged = run_pipeline(tmp_path / "damaged", "-profile", "test", "--skip_multiqc", "--input", reads, "--models",
                           str(models), "--classifier", str(models / "500_model_tiny.pth"))
    assert_refused_before_any_task(damaged, f"--classifier {models / '500_model_tiny.pth'} has sha256",
                                   "a corrupt or replaced file")


# --------------------------------------------------------------------------------------------------
# An EMBED task killed mid-shard
# --------------------------------------------------------------------------------------------------

def test_killed_embed_is_retried_resumes_mid_shard_and_resume_reruns_nothing(tmp_path):
    reads = coding_reads(tmp_path / "coding.fa", 300)
    run, args = killed_embed_run(tmp_path / "killed", reads, "-profile", "test")
    assert_retried_and_resumed(run)
    # The same tables as one uninterrupted `virnucpro run` with the same checkpoint windows
    single = virnucpro_run([reads], tiny_models_of(run), tmp_path / "single", "--checkpoint-every", "10")
    assert_same_tables(run.outdir / "coding", single)
    assert not checkpoint_parts(run.workdir / "virnucpro-checkpoints"), "finished shards keep no checkpoint"
    assert_nothing_rerun(run_pipeline(run.launch, *args, "-resume"))


def test_resume_after_nextflow_was_killed_keeps_the_shard_its_orphaned_embed_finished(tmp_path):
    """`kill -9` of Nextflow leaves its EMBED task running; `-resume` at once runs the task again in
    the same work folder, which waits for the orphan and then keeps the shard it wrote (read back
    and checked) instead of computing it a second time."""
    reads = coding_reads(tmp_path / "coding.fa", 300)
    run = resumed_after_head_killed(tmp_path / "headless", reads, "-profile", "test")
    run.assert_ok()
    (task,) = run.tasks("VIRNUCPRO_EMBED")
    log = (Path(task["workdir"]) / ".command.err").read_text()
    assert "already holds these 303 records" in log, log
    single = virnucpro_run([reads], tiny_models_of(run), tmp_path / "single", "--checkpoint-every", "10")
    assert_same_tables(run.outdir / "coding", single)


# --------------------------------------------------------------------------------------------------
# EMBED's retries under the slurm profile (a stand-in sbatch that runs each job script here)
# --------------------------------------------------------------------------------------------------

# sbatch runs the job script in the background and says its job id (the pid); squeue lists the ones
# still running; scontrol (the partition check) and scancel are enough as they are
FAKE_SLURM = {
    "sbatch": '#!/bin/bash\nsetsid bash "${@: -1}" > /dev/null 2>&1 < /dev/null &\n'
              'echo "$!" >> "$FAKE_SLURM_JOBS"\necho "Submitted batch job $!"\n',
    "squeue": '#!/bin/bash\nwhile read -r job; do kill -0 "$job" 2> /dev/null && echo "$job R"; done'
              ' < "$FAKE_SLURM_JOBS"\nexit 0\n',
    "scontrol": "#!/bin/bash\nexit 0\n",
    "scancel": '#!/bin/bash\nfor job in "$@"; do kill -TERM -- "-$job" 2> /dev/null; done; exit 0\n',
}
# EMBED's first three attempts end as a job killed for memory (137), one given a GPU out-of-memory
# (7) and one at its time limit (140); the fourth runs. Requests capped where a GPU node would cap them.
FAILING_EMBED = """
process.resourceLimits = [cpus: 2, memory: 1024.GB, time: 168.h]
executor { pollInterval = '1 sec'; queueStatInterval = '2 sec'; exitReadTimeout = '10 sec' }
process {
    withName: 'VIRNUCPRO_EMBED' {
        beforeScript = { task.attempt == 1 ? 'exit 137' : (task.attempt == 2 ? 'exit 7' : (task.attempt == 3 ? 'exit 140' : '')) }
    }
}
"""


def sbatch_requests(workdir: Path) -> tuple:
    """(memory in MB, time in hours) of a job's #SBATCH lines."""
    script = (workdir / ".command.run").read_text()
    memory = int(re.search(r"^#SBATCH --mem (\d+)M$", script, re.M).group(1))
    hours, minutes, _ = re.search(r"^#SBATCH -t (\d+):(\d+):(\d+)$", script, re.M).groups()
    return memory, int(hours) + int(minutes) / 60


def test_embed_retries_never_take_back_an_earlier_increase_on_slurm(tmp_path):
    """137, 7, 140 in turn: memory grows after the 137 and keeps growing no back, time grows after the
    140 only, and the token budget is halved after the 7 and stays halved after the 140."""
    fake = tmp_path / "fakebin"
    fake.mkdir()
    for name, body in FAKE_SLURM.items():
        (fake / name).write_text(body)
        (fake / name).chmod(0o755)
    (tmp_path / "jobs").write_text("")
    (tmp_path / "failing.config").write_text(FAILING_EMBED)
    env = {"PATH": f"{fake}{os.pathsep}{task_env()['PATH']}", "FAKE_SLURM_JOBS": str(tmp_path / "jobs")}
    run = run_pipeline(tmp_path / "launch", "-profile", "test,slurm", "-c", str(tmp_path / "failing.config"),
                       "--input", str(TEST_INPUTS / "sample_a.fasta"), "--shard_size", "100000",
                       "--skip_multiqc", env=env)
    run.assert_ok()
    attempts = run.tasks("VIRNUCPRO_EMBED")
    assert [row["exit"] for row in attempts] == ["137", "7", "140", "0"], attempts
    requests = [sbatch_requests(Path(row["workdir"])) for row in attempts]
    assert requests == [(49152, 24), (98304, 24), (98304, 24), (98304, 48)], requests
    budgets = [re.findall(r"--token-budget (\d+)", (Path(row["workdir"]) / ".command.sh").read_text())
               for row in attempts]
    assert budgets == [[], [], ["2048"], ["2048"]], budgets  # the CLI's 4096 on CPU, halved once


# --------------------------------------------------------------------------------------------------
# Refusals before any task
# --------------------------------------------------------------------------------------------------

def assert_refused_before_any_task(run, *culprits: str) -> None:
    assert run.returncode != 0, run.output
    for culprit in culprits:
        assert culprit in run.output, f"{culprit!r} not named:\n{run.output[-3000:]}"
    assert "Submitted process" not in run.output
    assert not (run.launch / "work").exists() or not any((run.launch / "work").glob("??/*")), "a task ran"


def test_bad_parameters_are_refused_before_any_task_all_at_once(tmp_path):
    """A value not among the choices, a misspelt name, a number that is not one: named together."""
    run = run_pipeline(tmp_path, "-profile", "test", "--precision", "fp8", "--chunksize", "300", "--threshold", "abc")
    assert_refused_before_any_task(run, "3 problems", "--precision: 'fp8'", "--chunksize: not a parameter",
                                   "did you mean --chunk_size?", "--threshold: 'abc' is not a number")
    # only --validate_params false skips the checks: another value is checked with the rest (a
    # mutation review: a test for true let `yes` skip them, and PREDICT failed after every EMBED)
    odd = run_pipeline(tmp_path / "odd", "-profile", "test", "--validate_params", "yes", "--threshold", "7")
    assert_refused_before_any_task(odd, "--validate_params: 'yes' is not a boolean",
                                   "--threshold: 7 is greater than the maximum 1")


def test_files_of_an_unquoted_glob_beyond_the_first_are_refused_not_ignored(tmp_path):
    """A reviewer's case: the shell expands `--input data/*.fa`, --input takes the first file and
    Nextflow hands the others to the pipeline, which ignored them: a run without their records, exit 0."""
    first, second = TEST_INPUTS / "sample_a.fasta", TEST_INPUTS / "sample_b.fastq"
    run = run_pipeline(tmp_path, "-profile", "test", "--input", str(first), str(second))
    assert_refused_before_any_task(run, f"'{second}': no option takes this argument", "quote the glob")
    # -stub-run makes Nextflow add the word 'true' (the stub-run test shows it is not refused); others are
    run = run_pipeline(tmp_path, "-profile", "test", "-stub-run", "--input", str(first), str(second))
    assert_refused_before_any_task(run, f"'{second}': no option takes this argument")


def test_google_gpu_without_a_gpu_type_is_refused_before_any_task(tmp_path):
    """Google Batch has no default GPU type, and attaches a GPU only to the machine types made for it:
    every EMBED task was refused at submission, after PREPARE. (The executor itself needs the nf-google plugin, which this offline engine lacks: the
    start-up check comes first, and with --gpu_type the run goes on to that.)"""
    run = run_pipeline(tmp_path / "bare", "-profile", "test,google,gpu", "-preview")
    assert_refused_before_any_task(run, "Google Batch needs the GPU type for EMBED: give --gpu_type")
    unknown = run_pipeline(tmp_path / "unknown", "-profile", "test,google,gpu", "-preview", "--gpu_type", "nvidia-x1")
    assert_refused_before_any_task(unknown, "--gpu_type nvidia-x1: the machine type that GPU attaches to or comes with")
    typed = run_pipeline(tmp_path / "typed", "-profile", "test,google,gpu", "-preview", "--gpu_type", "nvidia-tesla-t4")
    assert "Unknown executor name: google-batch" in typed.output, typed.output[-3000:]
    assert "Google Batch needs the GPU type" not in typed.output, typed.output[-3000:]


def write_samplesheet(path: Path, rows) -> Path:
    path.write_text("sample,file\n" + "".join(f"{sample},{file}\n" for sample, file in rows))
    return path


def test_bad_samplesheets_are_refused_before_any_task(tmp_path):
    reads = TEST_INPUTS / "sample_a.fasta"
    # the rows' own problems, named together
    rows = write_samplesheet(tmp_path / "rows.csv", [("good", reads), ("bad name!", reads), ("gone", tmp_path / "nope.fa")])
    run = run_pipeline(tmp_path / "rows", "-profile", "test", "--input", str(rows))
    assert_refused_before_any_task(run, "2 problems", "row 2, column sample", "'bad name!'", "row 3, column file",
                                   "nope.fa' does not exist")
    # results of a sample named like the run's own results would be mixed with them
    reserved = write_samplesheet(tmp_path / "reserved.csv", [("good", reads), ("virnucpro_summary.tsv", reads)])
    run = run_pipeline(tmp_path / "reserved", "-profile", "test", "--input", str(reserved))
    assert_refused_before_any_task(run, "'virnucpro_summary.tsv'", "reserved")
    # one folder on case-insensitive file systems
    by_case = write_samplesheet(tmp_path / "case.csv", [("good", reads), ("Good", reads)])
    run = run_pipeline(tmp_path / "case", "-profile", "test", "--input", str(by_case))
    assert_refused_before_any_task(run, "'good', 'Good'", "differ only in case")
    # the same file twice for one sample (here once through `..`): its records would count twice
    twice = write_samplesheet(tmp_path / "twice.csv", [("good", reads), ("good", reads.parent / ".." / reads.parent.name / reads.name)])
    run = run_pipeline(tmp_path / "twice", "-profile", "test", "--input", str(twice))
    assert_refused_before_any_task(run, str(reads.resolve()), "sample 'good'", "more than once")


def test_file_names_that_cannot_name_a_sample_are_refused(tmp_path):
    (tmp_path / "reads").mkdir()
    shutil.copy(TEST_INPUTS / "sample_a.fasta", tmp_path / "reads" / "patient 1.fa")
    shutil.copy(TEST_INPUTS / "sample_a.fasta", tmp_path / "reads" / "multiqc.fa")
    run = run_pipeline(tmp_path / "space", "-profile", "test", "--input", str(tmp_path / "reads" / "patient*.fa"))
    assert_refused_before_any_task(run, "'patient 1'", "use a samplesheet")
    run = run_pipeline(tmp_path / "reserved", "-profile", "test", "--input", str(tmp_path / "reads" / "multiqc.fa"))
    assert_refused_before_any_task(run, "'multiqc'", "reserved")


def test_paths_a_task_script_would_misread_are_refused_before_any_task(tmp_path):
    """Nextflow 24.10 stages files with their paths unescaped in the task scripts: `g[12]/r.fa`
    linked g1/r.fa, `v$HOME/r.fa` v/root/r.fa, `${X=$(...)}${X@P}` in a name ran a command, and
    --outdir 'r[1] x' stopped on a Groovy error. Each is refused, naming the path and the character."""
    data = tmp_path / "data"
    for folder in ("g[12]", "g1", "v$HOME", "m[12]", "c[12]"):
        (data / folder).mkdir(parents=True)
    for reads in ("g[12]/r.fa", "g1/r.fa", "v$HOME/r.fa", "t\tab.fa", "r${X=$(touch pwned)}${X@P}.fa"):
        shutil.copy(TEST_INPUTS / "sample_a.fasta", data / reads)
    (data / "m[12]" / "manifest.json").write_text("{}")
    (data / "c[12]" / "my.pth").write_text("")
    run = run_pipeline(tmp_path / "params", "-profile", "test", "--models", str(data / "m[12]"),
                       "--classifier", str(data / "c[12]" / "my.pth"), "--checkpoint_dir", "ck[1]", outdir="r[1] x")
    assert_refused_before_any_task(run, f"--outdir {tmp_path / 'params' / 'r[1] x'}: '['",
                                   f"--models {data / 'm[12]'}: '['", f"--classifier {data / 'c[12]' / 'my.pth'}: '['",
                                   f"--checkpoint_dir {tmp_path / 'params' / 'ck[1]'}: '['", "make a link to it")
    assert "toUri" not in run.output
    sheet = write_samplesheet(tmp_path / "sheet.csv", [
        ("brackets", data / "g[12]" / "r.fa"), ("dollar", data / "v$HOME" / "r.fa"),
        ("tab", data / "t\tab.fa"), ("command", data / "r${X=$(touch pwned)}${X@P}.fa")])
    run = run_pipeline(tmp_path / "sheet", "-profile", "test", "--input", str(sheet))
    assert_refused_before_any_task(run, f"row 1, file {data / 'g[12]' / 'r.fa'}: '['",
                                   f"row 2, file {data / 'v$HOME' / 'r.fa'}: '$'",
                                   f"row 3, file {data / 't'}\\tab.fa: a tab", "row 4, file", "Rename the file or folder")
    assert not list(tmp_path.rglob("pwned"))
    run = run_pipeline(tmp_path / "glob", "-profile", "test", "--input", str(data / "*" / "r.fa"))
    assert_refused_before_any_task(run, f"matched {data / 'g[12]' / 'r.fa'}: '['", f"matched {data / 'v$HOME' / 'r.fa'}: '$'")


def test_an_outdir_in_use_by_another_run_is_refused(tmp_path):
    import fcntl
    launch = tmp_path / "launch"
    info = launch / "results" / "pipeline_info"
    info.mkdir(parents=True)
    earlier = info / "execution_trace_2026-01-01_00-00-00.txt"
    earlier.write_text("the other run's trace\n")
    with open(info / ".virnucpro-run.lock", "w") as held:
        fcntl.lockf(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running pipeline holds (a POSIX lock)
        run = run_pipeline(launch, "-profile", "test")
    assert_refused_before_any_task(run, "in use by another run", str(launch / "results"))
    assert earlier.read_text() == "the other run's trace\n"


def test_an_outdir_no_run_of_the_pipeline_wrote_is_refused_and_left_as_it_is(tmp_path):
    """A reviewer's case: --outdir results/ shared with another pipeline; publishing replaced its
    multiqc/multiqc_report.html without a word. Refused before any task, nothing written there."""
    launch = tmp_path / "launch"
    (launch / "results" / "multiqc").mkdir(parents=True)
    (launch / "results" / "multiqc" / "multiqc_report.html").write_text("another pipeline's report\n")
    before = folder_state(launch / "results")
    run = run_pipeline(launch, "-profile", "test")
    assert_refused_before_any_task(run, f"--outdir {launch / 'results'} already holds 'multiqc'",
                                   "no run of this pipeline wrote it")
    assert folder_state(launch / "results") == before and not (launch / "results" / "pipeline_info").exists()



def test_publishing_set_in_a_config_file_unlike_the_parameters_is_refused_before_any_task(tmp_path):
    """A review's case: --save_prepared, --save_embeddings and --publish_dir_mode set among a -c file's
    params were recorded and checked, but conf/modules.config had read them before that file: no
    prepared/ nor embeddings/ were published, files were copied where links were recorded (exit 0).
    A -c file's own publishDir in mode 'link' failed only once every task had run."""
    late = tmp_path / "late.config"
    late.write_text("params.save_prepared = true\nparams.publish_dir_mode = 'symlink'\n")
    run = run_pipeline(tmp_path / "late", "-profile", "test", "-c", str(late))
    assert_refused_before_any_task(run, "withName:VIRNUCPRO_PREPARE does not publish its files, --save_prepared is true",
                                   "withName:VIRNUCPRO_PREDICT publishes in mode 'copy', --publish_dir_mode 'symlink' "
                                   "gives 'symlink'",
                                   "-params-file")
    own = tmp_path / "own.config"
    own.write_text("process { withName: 'VIRNUCPRO:VIRNUCPRO_PREDICT' { publishDir = [path: { params.outdir }, mode: 'link'] } }\n")
    run = run_pipeline(tmp_path / "own", "-profile", "test", "-c", str(own))
    assert_refused_before_any_task(run, "withName:VIRNUCPRO:VIRNUCPRO_PREDICT sets a publishDir of its own")
    # the same settings as parameters are what the configuration holds: the run starts
    run = run_pipeline(tmp_path / "given", "-profile", "test", "-stub-run", "--save_prepared", "--publish_dir_mode", "symlink")
    run.assert_ok()


def test_reports_a_run_writes_into_its_new_outdir_are_its_own_not_a_strangers(tmp_path):
    """A review's case: `-with-trace <outdir>/trace.txt` made the run refuse its new --outdir for the
    trace Nextflow had opened there for this very run (and every later run, for the file left)."""
    outdir = tmp_path / "launch" / "results"
    run = run_pipeline(tmp_path / "launch", "-profile", "test", "-stub-run", "-with-trace", str(outdir / "trace.txt"),
                       "-with-report", str(outdir / "reports" / "report.html"))
    run.assert_ok()
    assert (outdir / "trace.txt").is_file() and (outdir / "reports" / "report.html").is_file()
    (tmp_path / "other" / "results" / "mine").mkdir(parents=True)
    (tmp_path / "other" / "results" / "mine" / "notes.txt").write_text("a user's file\n")
    run = run_pipeline(tmp_path / "other", "-profile", "test", "-stub-run", "-with-trace",
                       str(tmp_path / "other" / "results" / "mine" / "trace.txt"))
    assert_refused_before_any_task(run, "already holds 'mine'", "no run of this pipeline wrote it")

def test_files_of_the_users_at_the_names_the_run_writes_in_pipeline_info_are_refused_and_kept(tmp_path):
    """A reviewer's case: a new --outdir holding only pipeline_info/ is taken (Nextflow writes its
    reports there), and a file of the user's at the name of the run's versions YAML was published
    over; so was one at the name of its inputs table. Each refused before any task, named, kept."""
    info = tmp_path / "launch" / "results" / "pipeline_info"
    info.mkdir(parents=True)
    versions = info / "virnucpro_software_mqc_versions.yml"
    versions.write_text("my notes\n")
    run = run_pipeline(tmp_path / "launch", "-profile", "test")
    assert_refused_before_any_task(run, f"{versions} (a file this pipeline did not write)", "move it out of the way")
    assert versions.read_text() == "my notes\n"
    versions.unlink()
    inputs = info / "inputs_mine.tsv"
    inputs.write_text("my table\n")
    run = run_pipeline(tmp_path / "launch", "-profile", "test", "--trace_report_suffix", "mine")
    assert_refused_before_any_task(run, f"{inputs}: this run's table of inputs would replace", "--trace_report_suffix")
    assert inputs.read_text() == "my table\n"

def test_a_new_outdir_holding_this_runs_own_work_and_checkpoint_folders_is_used(tmp_path):
    """A review's case: the foreign-folder check counted the checkpoint folder and the work directory
    this very run had just made inside a new --outdir, and refused the run."""
    launch = tmp_path / "launch"
    run = run_pipeline(launch, "-profile", "test", "-stub-run", "--skip_multiqc",
                       "--checkpoint_dir", str(launch / "results" / "ckpt"), "-w", str(launch / "results" / "work"))
    run.assert_ok()
    assert not (run.outdir / "RUN_UNFINISHED.txt").exists()


def test_an_outdir_inside_another_runs_outdir_or_the_work_dir_is_refused(tmp_path):
    launch = tmp_path / "launch"
    (launch / "results" / "pipeline_info").mkdir(parents=True)
    (launch / "results" / "pipeline_info" / ".virnucpro-run.lock").write_text("")  # an earlier run's
    before = folder_state(launch / "results")
    run = run_pipeline(launch, "-profile", "test", outdir="results/sample_a/again")
    assert_refused_before_any_task(run, f"inside {launch / 'results'}", "another run")
    assert folder_state(launch / "results") == before  # the other run's folder: no reports added
    run = run_pipeline(launch, "-profile", "test", outdir="work/results")
    assert_refused_before_any_task(run, "inside the work directory")


def test_link_publishing_across_file_systems_is_refused_before_any_task(tmp_path):
    """A reviewer's case: with the work directory on another file system, every task ran and then each
    hard link failed, the results folder left empty and the cause only in .nextflow.log."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK) or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a writable /dev/shm on another file system than the temporary folder")
    work = Path(tempfile.mkdtemp(prefix="virnucpro-test-work-", dir=shm))
    try:
        run = run_pipeline(tmp_path / "launch", "-profile", "test", "--publish_dir_mode", "link", "-w", str(work))
        assert_refused_before_any_task(run, "different file systems", "give --publish_dir_mode copy")
        assert not any(work.glob("??/*")), "a task ran"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def folder_state(folder: Path) -> dict:
    """Every file under `folder` (hidden ones included) with its size and modification time."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


def cli_prepare(outdir: Path) -> Path:
    """A `virnucpro prepare` output folder (it holds the command's marker and lock files)."""
    done = subprocess.run([str(Path(task_env()["PATH"].split(os.pathsep)[0]) / "virnucpro"), "prepare",
                           str(TEST_INPUTS / "sample_a.fasta"), "--outdir", str(outdir)],
                          capture_output=True, text=True, env=task_env(), timeout=300)
    assert done.returncode == 0 and (outdir / ".virnucpro.json").is_file(), done.stderr[-3000:]
    return outdir


def test_an_outdir_or_sample_folder_that_is_a_virnucpro_command_output_is_refused(tmp_path):
    """The pipeline would mix its results into a command's folder, or replace its tables."""
    launch = tmp_path / "launch"
    cli = cli_prepare(launch / "cli")
    before = folder_state(cli)
    run = run_pipeline(launch, "-profile", "test", outdir="cli")
    assert_refused_before_any_task(run, f"--outdir {cli} is the output folder of a virnucpro command")
    # nothing added, not even the run's reports: Nextflow opens its trace file before the start-up
    # checks, so nextflow.config sends the reports of a run these checks refuse to .nextflow/
    assert folder_state(cli) == before
    assert list((launch / ".nextflow" / "pipeline_info").glob("execution_trace_*.txt"))
    (launch / "results" / "pipeline_info").mkdir(parents=True)
    (launch / "results" / "pipeline_info" / ".virnucpro-run.lock").write_text("")  # an earlier run's --outdir
    coding = cli_prepare(launch / "results" / "coding")
    before = folder_state(coding)
    sheet = write_samplesheet(tmp_path / "sheet.csv", [("coding", TEST_INPUTS / "sample_a.fasta")])
    run = run_pipeline(launch, "-profile", "test", "--input", str(sheet))
    assert_refused_before_any_task(run, f"{coding} (it holds .virnucpro.json)", "sample 'coding'", "rename the sample")
    assert folder_state(coding) == before


def test_an_empty_models_folder_or_a_too_long_sample_name_is_refused(tmp_path):
    """Found at start-up, not by EMBED after PREPARE ran, or by PREDICT at the end of the run."""
    models = tmp_path / "models"
    models.mkdir()
    run = run_pipeline(tmp_path / "models_run", "-profile", "test", "--models", str(models))
    assert_refused_before_any_task(run, f"--models {models} is not a models directory",
                                   f"`virnucpro models check {models}`")
    (tmp_path / "reads").mkdir()
    shutil.copy(TEST_INPUTS / "sample_a.fasta", tmp_path / "reads" / ("x" * 201 + ".fa"))
    run = run_pipeline(tmp_path / "long_run", "-profile", "test", "--input", str(tmp_path / "reads" / "x*.fa"))
    assert_refused_before_any_task(run, "is longer than 200 characters", "use a samplesheet")


def test_a_failing_sample_lets_the_running_tasks_of_the_others_finish(tmp_path):
    """errorStrategy 'finish': one bad file must not kill another sample's EMBED under way. The bad
    sample's PREPARE waits at a gate (its beforeScript) opened only once the good sample's EMBED
    runs (a FIFO fed then did this, until FIFOs were refused at start-up). Five shards of 8 reads:
    EMBED tasks run (one CPU each) or wait, when the bad sample fails."""
    reads = coding_reads(tmp_path / "coding.fa", 40)
    late, gate = tmp_path / "late.fa", tmp_path / "gate"
    late.write_text("this is no FASTA\n")
    sheet = write_samplesheet(tmp_path / "sheet.csv", [("coding", reads), ("late", late)])
    launch = tmp_path / "launch"
    launch.mkdir()
    (launch / "one_cpu.config").write_text(  # the waiting one leaves room
        "process { withName: 'VIRNUCPRO_.*' { cpus = 1 } }\n"
        "process { withName: 'VIRNUCPRO_PREPARE' { beforeScript = { meta.id == 'late' ? "
        f"'while [ ! -e {gate} ]; do sleep 0.1; done' : '' }} }} }}\n")
    process = start_pipeline(launch, "-profile", "test", "-c", str(launch / "one_cpu.config"), "--input", str(sheet))
    wait_for(lambda: embed_pids(str(launch)), "the good sample's EMBED running", process)
    gate.touch()
    run = finish(process, launch)
    assert run.returncode != 0 and "late" in run.output, run.output[-3000:]
    assert "Join mismatch" not in run.output, run.output[-3000:]
    assert "has not completed with every task" in (run.outdir / "RUN_UNFINISHED.txt").read_text()  # its results may mix
    embeds = run.tasks("VIRNUCPRO_EMBED")
    assert embeds and {row["status"] for row in embeds} == {"COMPLETED"}, embeds
    # errorStrategy 'ignore' (a common site setting): the run ends green; its summary used to list
    # only the samples that came through, each "reconciled yes", the failed one nowhere
    (launch / "ignore.config").write_text("process.errorStrategy = 'ignore'\n")
    ignored = finish(start_pipeline(launch, "-profile", "test", "-c", str(launch / "one_cpu.config"), "-c",
                                    str(launch / "ignore.config"), "--input", str(sheet), "-resume"), launch)
    ignored.assert_ok()
    assert (ignored.outdir / "RUN_UNFINISHED.txt").is_file()  # a success for Nextflow, yet a sample failed
    summary = {row["sample"]: row["reconciled"] for row in read_tsv(ignored.outdir / "virnucpro_summary.tsv")}
    assert summary["coding"] == "yes" and summary["late"].startswith("NO: no results"), summary


def test_when_every_sample_fails_and_failures_are_ignored_the_summary_lists_them_all(tmp_path):
    """errorStrategy 'ignore' and no sample through: SUMMARY gets no row at all and still says which
    samples the run had, each without results, rather than an empty table or no table."""
    bad = tmp_path / "bad.fa"
    bad.write_text("this is no FASTA\n")
    sheet = write_samplesheet(tmp_path / "sheet.csv", [("first", bad), ("second", bad)])
    launch = tmp_path / "launch"
    launch.mkdir()
    (launch / "ignore.config").write_text("process.errorStrategy = 'ignore'\n")
    run = run_pipeline(launch, "-profile", "test", "-c", str(launch / "ignore.config"), "--input", str(sheet))
    run.assert_ok()
    summary = {row["sample"]: row["reconciled"] for row in read_tsv(run.outdir / "virnucpro_summary.tsv")}
    assert sorted(summary) == ["first", "second"], summary
    assert all(call.startswith("NO: no results") for call in summary.values()), summary


SUMMARY_ALONE = """
include { VIRNUCPRO_SUMMARY } from '%s/modules/local/virnucpro/summary'
workflow {
    def ids = file(params.ids).readLines()
    VIRNUCPRO_SUMMARY(channel.fromPath("${params.rows}/*.summary.tsv").collect(), channel.value(ids))
    VIRNUCPRO_SUMMARY.out.summary.view { table -> "SUMMARY_TABLE=${table}" }
}
"""


def test_summary_of_a_run_whose_ids_outgrow_one_command_line(tmp_path):
    """SUMMARY had every row file and every sample id on its command line: past ~2 MiB of them (about
    55k samples with 12-character ids) the kernel refused to start it. Here 14,000 ids of 180
    characters, two of them with rows, run through the module on the real engine."""
    ids = [f"s{i:05d}".ljust(180, "x") for i in range(14000)]
    assert sum(len(i) + 1 for i in ids) > 2 * 1024 * 1024
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    rows = tmp_path / "rows"
    rows.mkdir()
    header = "sample\tinput_records\tsequences\tchunks\torfs\tsequences_virus\tsequences_others\t" \
             "sequences_no_orf\tsequences_empty\tchunks_virus\tchunks_others\tchunks_no_orf\treconciled\n"
    for sample in ids[:2]:
        (rows / f"{sample[:6]}.summary.tsv").write_text(header + f"{sample}\t1\t1\t1\t2\t1\t0\t0\t0\t1\t0\t0\tyes\n")
    launch = tmp_path / "launch"
    launch.mkdir()
    (launch / "bin").symlink_to(REPO / "bin")  # the script's project folder puts bin/ on the tasks' PATH
    (launch / "main.nf").write_text(SUMMARY_ALONE % REPO)
    done = subprocess.run([str(NEXTFLOW), "run", str(launch / "main.nf"), "-ansi-log", "false", "--ids",
                           str(tmp_path / "ids.txt"), "--rows", str(rows)], cwd=launch, env=task_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    table = read_tsv(Path(re.search(r"SUMMARY_TABLE=(\S+)", done.stdout).group(1)))
    assert [row["sample"] for row in table] == ids
    assert [row["reconciled"] for row in table[:2]] == ["yes", "yes"]
    assert all(row["reconciled"].startswith("NO: no results") for row in table[2:])


def test_no_outdir_is_refused_without_creating_a_folder(tmp_path):
    launch = tmp_path / "launch"
    launch.mkdir()
    done = subprocess.run([str(NEXTFLOW), "run", str(REPO), "-ansi-log", "false", "-profile", "test"], cwd=launch,
                          env=task_env(), capture_output=True, text=True, timeout=600)
    run = Run(launch, launch / "results", done.returncode, done.stdout + done.stderr)
    assert_refused_before_any_task(run, "--outdir", "required")
    assert not (launch / "null").exists() and not (launch / "results").exists(), list(launch.iterdir())


def test_version_is_printed_and_a_preview_writes_nothing_of_ours(tmp_path):
    version = run_pipeline(tmp_path / "version", "--version")
    version.assert_ok()
    assert re.search(r"^virnucpro/virnucpro \S+$", version.output, re.MULTILINE), version.output
    assert not version.outdir.exists(), "--version ran the pipeline"
    quiet = subprocess.run([str(NEXTFLOW), "-q", "run", str(REPO), "--version"], cwd=tmp_path, env=task_env(),
                           capture_output=True, text=True, timeout=600)
    assert quiet.returncode == 0 and re.match(r"virnucpro/virnucpro \S+\n$", quiet.stdout), quiet.stdout + quiet.stderr
    (tmp_path / "quoted.json").write_text('{"version": "false"}')
    quoted = run_pipeline(tmp_path / "quoted", "-profile", "test", "-params-file", str(tmp_path / "quoted.json"))
    assert quoted.returncode != 0 and "--version: 'false' is a quoted string" in quoted.output, quoted.output
    preview = run_pipeline(tmp_path / "preview", "-profile", "test", "-preview")
    preview.assert_ok()
    (tmp_path / "numbered").mkdir()  # Nextflow reads --outdir 2024 as a number: start-up took only text
    numbered = subprocess.run([str(NEXTFLOW), "run", str(REPO), "-ansi-log", "false", "-profile", "test", "-preview",
                               "--outdir", "2024", "--trace_report_suffix", "20240101"], cwd=tmp_path / "numbered",
                              env=task_env(), capture_output=True, text=True, timeout=600)
    assert numbered.returncode == 0, numbered.stdout + numbered.stderr
    (tmp_path / "dated.yml").write_text("checkpoint_dir: 2024-01-01\n")  # YAML reads it as a date
    dated = run_pipeline(tmp_path / "dated", "-profile", "test", "-preview", "-params-file", str(tmp_path / "dated.yml"))
    assert dated.returncode != 0 and "read it as a date; quote it" in dated.output, dated.output[-3000:]
    # a stub run's preview neither: it marked the folder as a stub run's (a real run's results too)
    stub = run_pipeline(tmp_path / "stub", "-profile", "test", "-stub-run", "-preview")
    stub.assert_ok()
    for run in (preview, stub):
        ours = [path.name for path in run.outdir.rglob("*") if "virnucpro" in path.name or "inputs_" in path.name]
        assert ours == [], f"-preview wrote {ours} into --outdir"
    assert not (preview.workdir / "virnucpro-checkpoints").exists()


# --------------------------------------------------------------------------------------------------
# Unusual samples: identical twins, no ORF, two files with one name
# --------------------------------------------------------------------------------------------------

def test_twins_no_orf_and_same_named_files_come_through_whole(tmp_path):
    data = tmp_path / "data"
    for folder in ("twin1", "twin2", "run1", "run2"):
        (data / folder).mkdir(parents=True)
    shutil.copy(TEST_INPUTS / "sample_a.fasta", data / "twin1" / "reads.fa")
    shutil.copy(TEST_INPUTS / "sample_a.fasta", data / "twin2" / "reads.fa")
    (data / "no_orf.fa").write_text(">only_n\n" + "N" * 120 + "\n>too_short\nAC\n")
    coding_reads(data / "run1" / "reads.fa", 5, prefix="lane1")
    coding_reads(data / "run2" / "reads.fa", 7, prefix="lane2", seed=8)
    sheet = write_samplesheet(tmp_path / "samples.csv", [
        ("twin1", data / "twin1" / "reads.fa"), ("twin2", data / "twin2" / "reads.fa"),
        ("noorf", data / "no_orf.fa"),
        ("lanes", data / "run1" / "reads.fa"), ("lanes", data / "run2" / "reads.fa"),
    ])
    # a relative --checkpoint_dir is the launch directory's (not each task's own folder), with a
    # folder per sample: the twins' shards are byte-identical, so their checkpoint keys are too;
    # a space in it is quoted for the task's shell
    run = run_pipeline(tmp_path / "launch", "-profile", "test", "--input", str(sheet), "--checkpoint_dir", "ck pt")
    run.assert_ok()
    for task in run.tasks("VIRNUCPRO_EMBED"):
        sample = task["tag"].split(":")[0]
        script = (Path(task["workdir"]) / ".command.sh").read_text()
        assert f"--checkpoint-dir '{run.launch / 'ck pt' / 'samples' / sample}' " in script, script
    assert_same_tables(run.outdir / "twin1", run.outdir / "twin2")
    summary = {row["sample"]: row for row in read_tsv(run.outdir / "virnucpro_summary.tsv")}
    assert set(summary) == {"twin1", "twin2", "noorf", "lanes"}
    assert all(row["reconciled"] == "yes" for row in summary.values())
    assert summary["noorf"]["orfs"] == "0" and summary["noorf"]["sequences_no_orf"] == "2"
    assert summary["lanes"]["input_records"] == "12" and summary["lanes"]["sequences"] == "12"
    lanes = {row["sequence_id"] for row in read_tsv(run.outdir / "lanes" / "sequences.tsv")}
    assert lanes == {f"lane1_{i}" for i in range(5)} | {f"lane2_{i}" for i in range(7)}
    assert_inputs_table_leads_to_the_files(run, {"twin1": [data / "twin1" / "reads.fa"],
                                                 "twin2": [data / "twin2" / "reads.fa"],
                                                 "noorf": [data / "no_orf.fa"],
                                                 "lanes": [data / "run1" / "reads.fa", data / "run2" / "reads.fa"]})


def test_a_sample_with_no_orf_asks_for_no_gpu_and_loads_no_model(tmp_path):
    """Its only shard has no record: EMBED writes it on the CPU, one CPU, no model loaded, under the
    gpu profile too (which here, with no GPU, fails every EMBED that asks for one: exit 8)."""
    reads = tmp_path / "no_orf.fa"
    reads.write_text(">only_n\n" + "N" * 120 + "\n>too_short\nAC\n")
    run = run_pipeline(tmp_path / "launch", "-profile", "test,gpu", "--input", str(reads), "--skip_multiqc")
    run.assert_ok()
    (task,) = run.tasks("VIRNUCPRO_EMBED")
    script = (Path(task["workdir"]) / ".command.sh").read_text()
    assert "--device cpu" in script and "--threads 1 " in script, script
    assert "no model loaded" in (Path(task["workdir"]) / ".command.err").read_text()
    rows = read_tsv(run.outdir / "no_orf" / "sequences.tsv")
    assert [(row["sequence_id"], row["call"]) for row in rows] == [("only_n", "no_orf"), ("too_short", "no_orf")]


def assert_inputs_table_leads_to_the_files(run, files: dict) -> None:
    """Each sample's run_info.json names its inputs as PREPARE staged them (input/N/name), relative to
    PREPARE's task folder (inputs_working_directory, where the staged links lead to the files); the
    run's inputs table maps exactly those names to the files given."""
    (table,) = (run.outdir / "pipeline_info").glob("inputs_*.tsv")
    rows = read_tsv(table)
    for sample, paths in files.items():
        info = json.loads((run.outdir / sample / "run_info.json").read_text())
        staged = [entry["path"] for entry in info["inputs"]]
        assert [(Path(info["inputs_working_directory"]) / name).resolve() for name in staged] == \
            [Path(path).resolve() for path in paths], (sample, info["inputs_working_directory"])
        mine = [row for row in rows if row["sample"] == sample]
        assert [row["staged_as"] for row in mine] == staged, (sample, mine, staged)
        assert [row["path"] for row in mine] == [str(path) for path in paths], (sample, mine)
    assert {row["sample"] for row in rows} == set(files)


# --------------------------------------------------------------------------------------------------
# A C/POSIX locale (LANG/LC_ALL=C or unset: batch jobs, cron, minimal containers)
# --------------------------------------------------------------------------------------------------

# LC_ALL outranks LC_CTYPE and LANG; all three set, whatever the calling shell had
C_LOCALE = {"LANG": "C", "LC_ALL": "C", "LC_CTYPE": "C"}


def test_a_c_locale_reads_samplesheets_as_utf8_and_refuses_non_ascii_paths(tmp_path):
    """Java 17 under LANG=C reads text and names files in ASCII. A samplesheet's BOM (Excel's "CSV
    UTF-8") or a non-ASCII cell of a column the pipeline ignores stopped the run ("Input length =
    1"): now read as UTF-8. A non-ASCII path, which such a Java cannot name (refused, or listed with
    '?' in its place), is refused before any task, naming it and the fix; "not UTF-8" in the message
    also shows that the runs below really had the C locale."""
    reads = TEST_INPUTS / "sample_a.fasta"
    sheet = tmp_path / "excel.csv"
    sheet.write_bytes(b"\xef\xbb\xbf" + f"sample,file,note\ns1,{reads},caf\u00e9 sample\n".encode())
    run = run_pipeline(tmp_path / "bom", "-profile", "test", "-preview", "--input", str(sheet), env=C_LOCALE)
    run.assert_ok()
    assert "ignoring column note" in run.output
    folder = tmp_path / "reads" / "donn\u00e9es"
    folder.mkdir(parents=True)
    shutil.copy(reads, folder / "r.fa")
    (folder / "models").mkdir()
    (folder / "models" / "manifest.json").write_text("{}")
    fix = "export LC_ALL=C.UTF-8"
    run = run_pipeline(tmp_path / "params", "-profile", "test", "-preview", "--models", str(folder / "models"),
                       "--classifier", str(folder / "r.fa"), "--checkpoint_dir", str(folder / "ck"), env=C_LOCALE,
                       outdir=str(folder / "out"))
    assert_refused_before_any_task(run, f"--models: '{folder.parent}/donn", f"--classifier: '{folder.parent}/donn",
                                   f"--checkpoint_dir: '{folder.parent}/donn", f"--outdir: '{folder.parent}/donn",
                                   "not UTF-8", fix)
    assert not (folder / "out").exists()
    # alone with an --outdir Java can name: the config that reads it too stopped as unparsable
    run = run_pipeline(tmp_path / "ckpt", "-profile", "test", "-preview", "--checkpoint_dir", str(folder / "ck"),
                       env=C_LOCALE)
    assert_refused_before_any_task(run, f"--checkpoint_dir: '{folder.parent}/donn", "not UTF-8", fix)
    assert "Unable to parse config file" not in run.output, run.output[-3000:]
    sheet = write_samplesheet(tmp_path / "sheet.csv", [("s1", reads), ("s2", folder / "r.fa")])
    run = run_pipeline(tmp_path / "sheet", "-profile", "test", "-preview", "--input", str(sheet), env=C_LOCALE)
    assert_refused_before_any_task(run, f"row 2, column file: '{folder.parent}/donn", "not UTF-8", fix)
    run = run_pipeline(tmp_path / "glob", "-profile", "test", "-preview", "--input", str(folder.parent / "*" / "r.fa"),
                       env=C_LOCALE)
    assert_refused_before_any_task(run, f"matched {folder.parent}/donn", "not UTF-8", fix)


def test_a_glob_match_whose_name_is_not_utf8_is_refused_under_a_utf8_locale(tmp_path):
    """A folder named in Latin-1 is listed by Java with U+FFFD in place of its byte: the task was
    given that other path ('input file not found'). Refused at start-up, naming it and the fix."""
    latin1 = Path(os.fsdecode(bytes(tmp_path / "reads") + b"/donn\xe9es"))
    latin1.mkdir(parents=True)
    shutil.copy(TEST_INPUTS / "sample_a.fasta", latin1 / "r.fa")
    run = run_pipeline(tmp_path / "glob", "-profile", "test", "-preview", "--input", str(tmp_path / "reads" / "*" / "r.fa"))
    assert_refused_before_any_task(run, f"matched {tmp_path / 'reads'}/donn\ufffdes/r.fa",
                                   "a name of bytes that are not UTF-8", "rename it in UTF-8")


def test_a_non_utf8_locale_is_told_at_start_up_that_the_execution_report_will_be_cut_short(tmp_path):
    """Java 17 under LANG=C writes text as ASCII: Nextflow's execution report (its DataTables hold a
    '\u00a9') stops at that character, said only at the end, as a WARN pointing to the log. Said once
    when the run starts, with the way out."""
    run = run_pipeline(tmp_path, "-profile", "test", "-preview", env=C_LOCALE)
    run.assert_ok()
    start = run.output.split("Failed to render execution report")[0]
    assert start.count("the execution report") == 1, run.output[-3000:]
    (said,) = [line for line in start.splitlines() if "the execution report" in line]
    assert "US-ASCII" in said and "not UTF-8" in said and "export LC_ALL=C.UTF-8" in said, said


# --------------------------------------------------------------------------------------------------
# Folders the run cannot use: refused at start-up, and its reports kept out of them
# --------------------------------------------------------------------------------------------------

def run_unprivileged(launch: Path, *args: str, outdir: str = "results") -> Run:
    """run_pipeline, as a user that file permissions bind (root without its permission bypass)."""
    from engine import command
    from permission_helpers import unprivileged
    launch.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([*unprivileged(), *command(launch, *args, outdir=outdir)], cwd=launch, env=task_env(),
                          capture_output=True, text=True, timeout=900)
    return Run(launch, launch / outdir, done.returncode, done.stdout + done.stderr)


def test_a_run_refused_for_an_outdir_in_use_writes_no_report_into_it(tmp_path):
    """The refused run left its execution_trace_<start>.txt (header only) in the pipeline_info of
    the run holding the folder: its reports now go to .nextflow/pipeline_info/."""
    import fcntl
    launch = tmp_path / "launch"
    info = launch / "results" / "pipeline_info"
    info.mkdir(parents=True)
    (info / "execution_trace_2026-01-01_00-00-00.txt").write_text("the other run's trace\n")
    with open(info / ".virnucpro-run.lock", "w") as held:
        fcntl.lockf(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running pipeline holds (a POSIX lock)
        before = folder_state(launch / "results")
        run = run_pipeline(launch, "-profile", "test")
    assert_refused_before_any_task(run, "in use by another run", str(launch / "results"))
    assert folder_state(launch / "results") == before
    assert list((launch / ".nextflow" / "pipeline_info").glob("execution_trace_*.txt"))


def test_an_outdir_this_user_cannot_write_is_refused_naming_it_and_the_folder(tmp_path):
    """Under a read-only parent Nextflow stopped at its trace file with a bare `ERROR ~ <outdir>`:
    the reports now go to .nextflow/, and the start-up checks say what is wrong and what to do."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    run = run_unprivileged(tmp_path / "launch", "-profile", "test", "-preview", outdir=str(locked / "out"))
    assert_refused_before_any_task(run, f"--outdir {locked / 'out'} cannot be created", f"cannot write into {locked}",
                                   "give an --outdir you can write into")
    assert f"ERROR ~ {locked / 'out'}\n" not in run.output, run.output[-3000:]
    assert list((run.launch / ".nextflow" / "pipeline_info").glob("execution_trace_*.txt"))


def test_a_checkpoint_dir_this_user_cannot_write_is_refused_before_any_task(tmp_path):
    """Found only by EMBED (exit 10, after PREPARE ran), its hint not naming --checkpoint_dir."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    run = run_unprivileged(tmp_path / "launch", "-profile", "test", "--checkpoint_dir", str(locked / "ck"))
    assert_refused_before_any_task(run, f"--checkpoint_dir {locked / 'ck'} cannot be created",
                                   f"cannot write into {locked}", "give a --checkpoint_dir you can write into")
