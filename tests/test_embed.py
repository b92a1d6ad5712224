"""The embed stage: exact vectors, resume after kills, checkpoints that are never misused, OOM halving."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mount_helpers import remount_read_only, tmpfs
import torch

from checkpoint_helpers import read_h5, wait_for_parts
from h5_helpers import edited_shard
from virnucpro import h5shard
from virnucpro import prepared as fmt
from virnucpro.embed import embed
from virnucpro.encoders.dnabert_s import DnabertSEncoder
from virnucpro.encoders.esm2 import Esm2Encoder
from virnucpro.errors import GpuOutOfMemory, OutputWriteError
from virnucpro.models.store import locate


def shard(prepared: Path, index: int = 0) -> Path:
    return prepared / "shards" / fmt.shard_name(index)


def test_shard_equals_encoders_called_one_by_one(tmp_path, tiny_models, golden_prepared):
    out = tmp_path / "s.h5"
    embed(shard(golden_prepared), out, models=tiny_models, device="cpu", checkpoint_every=25)
    ids, nuc, prot, attrs = read_h5(out)
    records = list(fmt.read_shard(shard(golden_prepared)))
    assert ids == [r[0] for r in records]
    models = locate(tiny_models)
    dnabert = DnabertSEncoder(models.dnabert_s, torch.device("cpu"), torch.float32)
    esm = Esm2Encoder(models.esm2, torch.device("cpu"), torch.float32)
    for row, (_, nucleotide, protein) in enumerate(records):
        expected_nuc = dnabert.embed(dnabert.tokenize([nucleotide]))[0].numpy()
        expected_prot = esm.embed(esm.tokenize([protein]))[0].numpy()
        np.testing.assert_allclose(nuc[row], expected_nuc, atol=1e-5, rtol=0)
        np.testing.assert_allclose(prot[row], expected_prot, atol=1e-5, rtol=0)
    info = fmt.shard_info(shard(golden_prepared))
    assert (attrs["shard_index"], attrs["shard_of"], attrs["shard_sha256"]) == (0, info.of, info.sha256)
    assert attrs["precision"] == "fp32" and attrs["device"] == "cpu" and attrs["chunk_size"] == 500
    assert not (tmp_path / "s.h5.ckpt").exists(), "a finished shard removes its checkpoints"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"], "embed left its lock file beside --out"


def test_duplicate_sequences_computed_once_but_every_record_has_a_row(tmp_path, tiny_models, capsys):
    path = tmp_path / "dups.fa"
    orf = "ATGGCGGCGGCGGCGGCGGCGAAACCCGGG"
    path.write_text(f">a\n{orf}\n>b\n{orf}\n>c\n{orf.lower()}\n")
    from virnucpro.prepare import prepare
    prepare([path], tmp_path / "prep")
    out = tmp_path / "d.h5"
    embed(shard(tmp_path / "prep"), out, models=tiny_models, device="cpu")
    ids, nuc, prot, _ = read_h5(out)
    per_record = len(ids) // 3  # the same sequence thrice: each record has the same ORFs, in order
    assert per_record >= 1 and len(ids) == 3 * per_record, ids
    assert [i.split("_", 1)[1] for i in ids[:per_record]] == [i.split("_", 1)[1] for i in ids[per_record:2 * per_record]]
    assert [i.split("_", 1)[0] for i in ids] == ["a"] * per_record + ["b"] * per_record + ["c"] * per_record, ids
    np.testing.assert_array_equal(nuc[:per_record], nuc[per_record:2 * per_record])
    np.testing.assert_array_equal(prot[:per_record], prot[2 * per_record:])
    assert f"computed {per_record} nucleotide and {per_record} protein sequences" in capsys.readouterr().err


def test_empty_shard_gives_valid_empty_hdf5(tmp_path, tiny_models, reference_dir):
    from virnucpro.prepare import prepare
    prepare([reference_dir / "vanilla" / "test_sequences_small.fa"], tmp_path / "prep")
    out = tmp_path / "e.h5"
    embed(shard(tmp_path / "prep"), out, models=tiny_models, device="cpu")
    ids, nuc, prot, attrs = read_h5(out)
    assert ids == [] and nuc.shape == (0, 48) and prot.shape[0] == 0 and attrs["shard_of"] == 1


def embed_command(shard_path: Path, out: Path, models: Path, every: int = 2) -> list[str]:
    """30 checkpoint windows on a 60-record shard: a kill after the first parts never races the end."""
    return [sys.executable, "-m", "virnucpro", "embed", str(shard_path), "--models", str(models),
            "--out", str(out), "--device", "cpu", "--checkpoint-every", str(every), "--threads", "1"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_models, golden_prepared):
    out = tmp_path_factory.mktemp("full") / "s.h5"
    subprocess.run(embed_command(shard(golden_prepared), out, tiny_models), check=True, capture_output=True)
    return read_h5(out)


@pytest.mark.parametrize("kill_signal,expected_code", [(signal.SIGKILL, -signal.SIGKILL),
                                                      (signal.SIGTERM, 6), (signal.SIGUSR2, 6),
                                                      (signal.SIGHUP, 6)])
def test_killed_run_resumes_and_matches_uninterrupted(tmp_path, tiny_models, golden_prepared, uninterrupted,
                                                      kill_signal, expected_code):
    out = tmp_path / "s.h5"
    command = embed_command(shard(golden_prepared), out, tiny_models)
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,  # SIGHUP as in a terminal, not nohup
                               preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    wait_for_parts(tmp_path / "s.h5.ckpt", 2, process)
    process.send_signal(kill_signal)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == expected_code, stderr
    if expected_code == 6:
        assert "checkpoint saved" in stderr and "rerun the same command to resume" in stderr
        # each model's own progress too: records complete can read 0 while DNABERT-S is well on
        assert "; distinct sequences embedded: " in stderr and " dnabert_s, " in stderr and " esm2)" in stderr
    assert not out.exists()

    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    resumed_at = int(rerun.stderr.split("resuming from checkpoint at record ")[1].split()[0].replace(",", ""))
    assert resumed_at > 0
    nucleotides = int(rerun.stderr.split("computed ")[1].split()[0].replace(",", ""))
    assert 0 < nucleotides < 60, "only the rest was computed"
    ids, nuc, prot, _ = read_h5(out)
    assert ids == uninterrupted[0]
    np.testing.assert_array_equal(nuc, uninterrupted[1])  # same token budget: bit-identical
    np.testing.assert_array_equal(prot, uninterrupted[2])
    assert not (tmp_path / "s.h5.ckpt").exists()


def test_a_second_embed_of_the_same_inputs_waits_then_resumes_what_the_first_saved(tmp_path, tiny_models,
                                                                                   golden_prepared, uninterrupted):
    """A pipeline task resumed while its first attempt still runs (Nextflow killed, -resume at
    once): the second embed waits for the checkpoint folder instead of failing, and resumes from
    what the first saved once the first is gone. A stop signal ends the wait with exit 6."""
    ckpt = tmp_path / "ckpt"
    first = subprocess.Popen(embed_command(shard(golden_prepared), tmp_path / "first.h5", tiny_models)
                             + ["--checkpoint-dir", str(ckpt)], stderr=subprocess.PIPE, text=True)
    wait_for_parts(ckpt, 2, first)
    first.send_signal(signal.SIGSTOP)  # holds the folder, computes nothing more
    logs = {name: tmp_path / f"{name}.err" for name in ("stopped", "second")}
    waiting = {}
    try:
        for name, log in logs.items():
            with open(log, "w") as err:
                waiting[name] = subprocess.Popen(embed_command(shard(golden_prepared), tmp_path / f"{name}.h5",
                                                               tiny_models) + ["--checkpoint-dir", str(ckpt)], stderr=err)
        deadline = time.monotonic() + 120
        while not all("waiting for it to end" in log.read_text() for log in logs.values()):
            assert time.monotonic() < deadline and all(p.poll() is None for p in waiting.values()), \
                {name: log.read_text() for name, log in logs.items()}
            time.sleep(0.1)
        waiting["stopped"].send_signal(signal.SIGTERM)
        assert waiting["stopped"].wait(60) == 6, logs["stopped"].read_text()
        first.kill()  # as a task's first attempt dies at last
        assert waiting["second"].wait(120) == 0, logs["second"].read_text()
    finally:
        for process in [first, *waiting.values()]:
            process.kill()
            process.communicate()
    assert "resuming from checkpoint" in logs["second"].read_text()
    ids, nuc, prot, _ = read_h5(tmp_path / "second.h5")
    assert ids == uninterrupted[0]
    np.testing.assert_array_equal(nuc, uninterrupted[1])
    np.testing.assert_array_equal(prot, uninterrupted[2])



def test_an_embed_that_finishes_leaves_its_parts_to_the_one_waiting_for_them(tmp_path, tiny_models,
                                                                             golden_prepared, uninterrupted):
    """The orphaned first attempt of a task (Nextflow killed, or its SLURM job still running) ends
    while the resumed attempt waits: the resumed one computes nothing again, and cleans up."""
    ckpt = tmp_path / "ckpt"
    command = embed_command(shard(golden_prepared), tmp_path / "first.h5", tiny_models) + ["--checkpoint-dir", str(ckpt)]
    first = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "second.err"
    try:
        wait_for_parts(ckpt, 2, first)
        first.send_signal(signal.SIGSTOP)
        with open(log, "w") as err:
            second = subprocess.Popen(embed_command(shard(golden_prepared), tmp_path / "second.h5", tiny_models)
                                      + ["--checkpoint-dir", str(ckpt)], stderr=err)
        deadline = time.monotonic() + 120
        while not list(ckpt.glob("*/.waiting.*")):
            assert time.monotonic() < deadline and second.poll() is None, log.read_text()
            time.sleep(0.05)
        first.send_signal(signal.SIGCONT)
        _, first_err = first.communicate(timeout=120)
        assert first.returncode == 0 and "kept for the embed of the same shard waiting" in first_err, first_err
        assert second.wait(120) == 0, log.read_text()
    finally:
        for process in (first, locals().get("second")):
            if process is not None:
                process.kill()
                process.communicate()
    assert "computed 0 nucleotide and 0 protein sequences" in log.read_text(), log.read_text()
    assert ckpt.is_dir() and not any(ckpt.iterdir())
    for name in ("first", "second"):
        ids, nuc, prot, _ = read_h5(tmp_path / f"{name}.h5")
        assert ids == uninterrupted[0]
        np.testing.assert_array_equal(nuc, uninterrupted[1])
        np.testing.assert_array_equal(prot, uninterrupted[2])


def test_an_output_already_holding_this_shard_is_kept_and_nothing_is_computed(tmp_path, tiny_models,
                                                                             golden_prepared, capsys):
    """A task resumed in its work folder after its orphaned first attempt wrote the shard."""
    out = tmp_path / "s.h5"
    embed(shard(golden_prepared), out, models=tiny_models, device="cpu")
    before = out.stat()
    capsys.readouterr()
    embed(shard(golden_prepared), out, models=tiny_models, device="cpu")
    err = capsys.readouterr().err
    assert "already holds these" in err and "computed" not in err, err
    after = out.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)



def test_a_kept_output_clears_the_checkpoint_a_kill_left_behind(tmp_path, tiny_models, golden_prepared, capsys,
                                                                monkeypatch):
    """Killed between writing the output and removing its checkpoint: the rerun keeps the output and
    removes the checkpoint too, as the killed run would have."""
    from virnucpro.embed import CheckpointStore

    out = tmp_path / "s.h5"
    with monkeypatch.context() as patch:
        patch.setattr(CheckpointStore, "remove", CheckpointStore.close)
        embed(shard(golden_prepared), out, models=tiny_models, device="cpu", checkpoint_every=20)
    assert list((tmp_path / "s.h5.ckpt").glob("*/part_*.npz"))
    embed(shard(golden_prepared), out, models=tiny_models, device="cpu")
    assert "already holds" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]


@pytest.mark.parametrize("existed", [True, False], ids=["made by the user", "made by embed"])
def test_the_checkpoint_dir_the_user_named_stays(tmp_path, tiny_models, golden_prepared, existed):
    """Emptied of this shard's checkpoint, never removed: it may be the user's own folder (even the
    current directory), and other embeds may be about to use it."""
    mine = tmp_path / "mine"
    if existed:
        mine.mkdir()
    embed(shard(golden_prepared), tmp_path / "s.h5", models=tiny_models, device="cpu", checkpoint_dir=mine)
    assert mine.is_dir() and not any(mine.iterdir())


def test_a_lock_file_a_killed_embed_left_beside_the_output_is_removed(tmp_path, tiny_models, golden_prepared):
    """It would otherwise be published with `run --keep-embeddings`, and stay for ever."""
    (tmp_path / ".s.h5.lock").write_text('{"pid": 1, "host": "gone", "started": "then"}')
    embed(shard(golden_prepared), tmp_path / "s.h5", models=tiny_models, device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]

@pytest.mark.parametrize("change", ["vector", "precision", "shard"])
def test_an_output_of_other_inputs_or_changed_since_is_computed_again(tmp_path, tiny_models, golden_prepared,
                                                                      uninterrupted, capsys, change):
    out = tmp_path / "s.h5"
    source = shard(golden_prepared, 1) if change == "shard" else shard(golden_prepared)
    embed(source, out, models=tiny_models, device="cpu")
    if change != "shard":
        with edited_shard(out) as handle:
            if change == "vector":
                handle["esm2"][3, 0] += 1.0
            else:
                handle.attrs["precision"] = "bf16"
    capsys.readouterr()
    embed(shard(golden_prepared), out, models=tiny_models, device="cpu", checkpoint_every=2)
    assert "already holds" not in capsys.readouterr().err
    ids, nuc, prot, attrs = read_h5(out)
    assert ids == uninterrupted[0] and attrs["precision"] == "fp32"
    np.testing.assert_allclose(nuc, uninterrupted[1], atol=1e-5, rtol=0)  # other thread count: not bit-identical
    np.testing.assert_allclose(prot, uninterrupted[2], atol=1e-5, rtol=0)

def test_corrupt_part_is_detected_and_recomputed(tmp_path, tiny_models, golden_prepared, uninterrupted):
    out = tmp_path / "s.h5"
    command = embed_command(shard(golden_prepared), out, tiny_models)
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    wait_for_parts(tmp_path / "s.h5.ckpt", 2, process)
    process.kill()
    process.communicate()
    part = sorted((tmp_path / "s.h5.ckpt").glob("*/part_*.npz"))[0]
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0 and "damaged" in rerun.stderr
    ids, nuc, prot, _ = read_h5(out)
    np.testing.assert_array_equal(nuc, uninterrupted[1])
    np.testing.assert_array_equal(prot, uninterrupted[2])


def test_checkpoint_of_other_inputs_models_or_precision_is_never_used(tmp_path, tiny_models, golden_prepared,
                                                                     capsys):
    ckpt = tmp_path / "ckpt"
    # a run of another shard, interrupted, leaves its parts in the same checkpoint directory
    other = shard(golden_prepared, 1)
    process = subprocess.Popen(embed_command(other, tmp_path / "other.h5", tiny_models) + ["--checkpoint-dir", str(ckpt)],
                               stderr=subprocess.PIPE, text=True)
    wait_for_parts(ckpt, 1, process)
    process.kill()
    process.communicate()
    foreign = list(ckpt.iterdir())
    embed(shard(golden_prepared), tmp_path / "s.h5", models=tiny_models, device="cpu", checkpoint_dir=ckpt)
    assert "resuming" not in capsys.readouterr().err
    assert list(ckpt.iterdir()) == foreign, "the other shard's checkpoint is left alone"
    embed(other, tmp_path / "other_bf16.h5", models=tiny_models, device="cpu", precision="bf16",
          checkpoint_dir=ckpt)
    assert "resuming" not in capsys.readouterr().err
    other_models = locate(tiny_models)
    other_models.sha256 = {**other_models.sha256, "esm2": "0" * 64}  # as if the ESM-2 weights differed
    embed(other, tmp_path / "other_models.h5", models=tiny_models, device="cpu", checkpoint_dir=ckpt,
          model_set=other_models)
    assert "resuming" not in capsys.readouterr().err
    embed(other, tmp_path / "other.h5", models=tiny_models, device="cpu", checkpoint_dir=ckpt)
    assert "resuming from checkpoint" in capsys.readouterr().err, "the same inputs do resume"


@pytest.fixture
def keep_torch_threads():
    """embed(threads=N) sizes this test process's pools: torch's count and the pool variables are put back."""
    from virnucpro.threads import POOL_VARIABLES

    threads, environment = torch.get_num_threads(), {name: os.environ.get(name) for name in POOL_VARIABLES}
    yield
    torch.set_num_threads(threads)
    for name, value in environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def test_embed_threads_are_sized_as_the_cli_sizes_them(tmp_path, tiny_models, golden_prepared, capsys,
                                                       keep_torch_threads):
    """embed(threads=N) goes through limit_threads: a count above the CPUs is lowered, with a warning,
    and every pool (not torch's alone) takes it."""
    from virnucpro.threads import POOL_VARIABLES, available_cpus

    cpus = available_cpus()
    embed(shard(golden_prepared), tmp_path / "s.h5", models=tiny_models, device="cpu", threads=cpus + 1000)
    assert f"--threads {cpus + 1000}: this process may use {cpus} CPUs" in capsys.readouterr().err
    assert torch.get_num_threads() == cpus
    assert all(os.environ[name] == str(cpus) for name in POOL_VARIABLES)


def test_gpu_oom_halves_the_batch_then_exit_7(tmp_path, tiny_models, golden_prepared, uninterrupted, monkeypatch,
                                              capsys, keep_torch_threads):
    original = Esm2Encoder.forward

    def small_memory(self, collated):
        batch, _ = collated
        if int((batch.slot >= 0).sum()) > 200:  # real tokens of the batch: two proteins, not one
            raise torch.cuda.OutOfMemoryError("simulated")
        return original(self, collated)

    monkeypatch.setattr(Esm2Encoder, "forward", small_memory)
    out = tmp_path / "s.h5"
    embed(shard(golden_prepared), out, models=tiny_models, device="cpu", checkpoint_every=2, threads=1)
    assert "halving" in capsys.readouterr().err
    ids, nuc, prot, attrs = read_h5(out)
    np.testing.assert_allclose(prot, uninterrupted[2], atol=1e-6, rtol=1e-6)  # float32: a few ulp
    np.testing.assert_array_equal(nuc, uninterrupted[1])
    # a reviewer's case: the budget asked for vanished from the record when the first batch halved it
    budgets = [entry for entry in attrs["settings"].split(",") if entry.startswith("esm2:token_budget=")]
    assert "esm2:token_budget=4096" in budgets and len(budgets) >= 2, attrs["settings"]
    assert "dnabert_s:token_budget=4096" in attrs["settings"].split(","), attrs["settings"]

    def no_memory(self, collated):
        raise torch.cuda.OutOfMemoryError("simulated")

    monkeypatch.setattr(Esm2Encoder, "forward", no_memory)
    with pytest.raises(GpuOutOfMemory) as error:
        embed(shard(golden_prepared), tmp_path / "never.h5", models=tiny_models, device="cpu")
    assert error.value.code == 7 and "does not fit" in str(error.value)
    assert not (tmp_path / "never.h5").exists()


def test_out_of_memory_recovery_never_runs_two_batches_at_once(tmp_path, tiny_models, golden_prepared, uninterrupted,
                                                               monkeypatch, keep_torch_threads):
    """On a GPU the layout thread launches the next batch while the current one finishes: the
    halves of a batch that ran out of memory must not compute beside that launch (the two would
    share the memory that just ran out, and halving could end at one sequence: a false exit 7)."""
    import threading
    import time

    from virnucpro.embed import Embedder

    original_init, original_forward = Embedder.__init__, Esm2Encoder.forward
    running, most, count = [0], [0], threading.Lock()

    def overlapping(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.overlap = {role: True for role in self.overlap}  # as on a GPU after the first batch

    def slow_small_memory(self, collated):
        with count:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.05)
            batch, _ = collated
            if int((batch.slot >= 0).sum()) > 200:
                raise torch.cuda.OutOfMemoryError("simulated")
            return original_forward(self, collated)
        finally:
            with count:
                running[0] -= 1

    monkeypatch.setattr(Embedder, "__init__", overlapping)
    monkeypatch.setattr(Esm2Encoder, "forward", slow_small_memory)
    out = tmp_path / "s.h5"
    embed(shard(golden_prepared), out, models=tiny_models, device="cpu", checkpoint_every=30, threads=1)
    assert most[0] == 1, "two batches computed at once"
    _, nuc, prot, _ = read_h5(out)  # other batches than the reference's: equal within float32 noise
    np.testing.assert_allclose(prot, uninterrupted[2], atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(nuc, uninterrupted[1], atol=1e-6, rtol=1e-6)


@pytest.fixture
def fresh_load():
    """Models loaded anew by the next embed (the process keeps them loaded otherwise), and again after."""
    import virnucpro.embed

    virnucpro.embed._load_encoders_cached.cache_clear()
    yield
    virnucpro.embed._load_encoders_cached.cache_clear()


@pytest.mark.parametrize("encoder", [DnabertSEncoder, Esm2Encoder])
def test_gpu_out_of_memory_while_the_models_load_is_exit_7(tmp_path, run_cli, golden_prepared, tiny_models,
                                                          monkeypatch, fresh_load, encoder):
    """Moving a model to the GPU, or its load-time self-check, can run out of memory (a GPU shared
    with another job): exit 7 with one message, as for a batch, not a crash report (exit 1)."""
    def no_memory(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore advice")

    monkeypatch.setattr(encoder, "__init__", no_memory)
    code, message = run_cli("embed", shard(golden_prepared), "--models", tiny_models, "--out", tmp_path / "x.h5")
    assert code == 7, message
    assert "loading the models: GPU out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)" in message
    assert "Traceback" not in message and "this is a bug" not in message
    assert list(tmp_path.iterdir()) == [], "a failed embed left files beside --out"


def test_a_cuda_failure_while_the_models_load_is_exit_8_and_other_errors_stay_bugs():
    """A CUDA/cuDNN failure at load on a GPU is a device failure (exit 8); the same words on the CPU,
    or any other error, are not turned into one."""
    from virnucpro.embed import gpu_failures_at_load
    from virnucpro.errors import DeviceError

    for text in ("CUDA error: no kernel image is available for execution on the device\nCUDA kernel errors...",
                 "cuDNN Frontend error: No execution plans support the graph."):
        with pytest.raises(DeviceError) as error:
            with gpu_failures_at_load(torch.device("cuda")):
                raise RuntimeError(text)
        assert error.value.code == 8 and error.value.message.endswith(text.splitlines()[0])
    for device, failure in (("cpu", RuntimeError("CUDA error: simulated")), ("cuda", RuntimeError("shape mismatch")),
                            ("cuda", ValueError("CUDA"))):
        with pytest.raises(type(failure)):
            with gpu_failures_at_load(torch.device(device)):
                raise failure


def test_missing_models_exit_4_and_cuda_without_gpu_exit_8(tmp_path, run_cli, golden_prepared, tiny_models):
    code, message = run_cli("embed", shard(golden_prepared), "--models", tmp_path / "nothing", "--out", tmp_path / "x.h5")
    assert code == 4 and "virnucpro models download" in message
    assert list(tmp_path.iterdir()) == [], "a failed embed left files beside --out"
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    code, message = run_cli("embed", shard(golden_prepared), "--models", tiny_models, "--out", tmp_path / "x.h5",
                            "--device", "cuda")
    assert code == 8 and "no GPU" in message


def test_run_with_cuda_and_no_gpu_fails_before_preparing_or_downloading(tmp_path, run_cli):
    """Models missing means prepare first, then a download of GBs: a missing GPU is known at once
    and must not cost either (exit 8, nothing in --outdir)."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    reads = tmp_path / "r.fa"
    reads.write_text(">r1\n" + "ACGT" * 150 + "\n")
    code, message = run_cli("run", reads, "--models", tmp_path / "nothing", "--outdir", tmp_path / "out",
                            "--device", "cuda")
    assert code == 8 and "no GPU" in message, message
    assert "prepared" not in message and "huggingface" not in message, message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_out_that_is_the_shard_or_a_directory_exits_3(tmp_path, run_cli, tiny_models, golden_prepared):
    source = tmp_path / "shard_00000.tsv"
    source.write_bytes(shard(golden_prepared).read_bytes())
    code, message = run_cli("embed", source, "--models", tiny_models, "--out", source, "--device", "cpu")
    assert code == 3 and "is the input shard" in message
    assert source.read_bytes() == shard(golden_prepared).read_bytes()
    code, message = run_cli("embed", source, "--models", tiny_models, "--out", tmp_path, "--device", "cpu")
    assert code == 3 and "is a directory" in message
    theirs = tmp_path / "theirs.h5"
    theirs.write_text("not ours")
    code, message = run_cli("embed", source, "--models", tiny_models, "--out", theirs, "--device", "cpu")
    assert code == 3 and "does not start with the seal" in message and theirs.read_text() == "not ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard_00000.tsv", "theirs.h5"], "a refusal left a lock file"


def test_stop_signal_outside_the_embedding_loop_exits_6_and_loses_nothing(tmp_path, run_cli, tiny_models,
                                                                         golden_prepared, uninterrupted,
                                                                         monkeypatch):
    import virnucpro.embed

    out = tmp_path / "s.h5"
    command = ("embed", shard(golden_prepared), "--models", tiny_models, "--out", out, "--device", "cpu",
               "--checkpoint-every", "2", "--threads", "1")

    def signal_then(function):
        def wrapped(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            return function(*args, **kwargs)
        return wrapped

    # while the models load: nothing computed yet
    monkeypatch.setattr(virnucpro.embed, "_load_encoders", signal_then(virnucpro.embed._load_encoders))
    code, message = run_cli(*command)
    assert code == 6 and "SIGTERM received" in message and "rerun the same command" in message
    assert not out.exists()
    monkeypatch.undo()

    # while the finished shard is written: no temporary file left, every checkpoint part kept
    monkeypatch.setattr(h5shard, "verify_shard", signal_then(h5shard.verify_shard))
    code, message = run_cli(*command)
    assert code == 6 and not out.exists() and not list(out.parent.glob(f".{out.name}.*.tmp"))
    monkeypatch.undo()

    code, message = run_cli(*command)
    assert code == 0 and "resuming from checkpoint at record 60 of 60" in message
    assert "computed 0 nucleotide and 0 protein sequences" in message
    ids, nuc, prot, _ = read_h5(out)
    assert ids == uninterrupted[0]
    np.testing.assert_array_equal(nuc, uninterrupted[1])
    np.testing.assert_array_equal(prot, uninterrupted[2])


# --- stop signals that a library swallows or turns into another error ----------------------------

def test_a_stop_a_library_swallowed_while_loading_ends_embed_before_any_batch(tmp_path, run_cli, tiny_models,
                                                                              golden_prepared, monkeypatch):
    """torch's import swallows an exception raised in it (`except Exception`): the stop must still
    end the command (exit 6) before the shard is computed, not after it."""
    import virnucpro.embed

    load = virnucpro.embed._load_encoders
    batches = []

    def load_swallowing_a_stop(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except Exception:  # noqa: BLE001 - what the library does
            pass
        return load(*args, **kwargs)

    monkeypatch.setattr(virnucpro.embed, "_load_encoders", load_swallowing_a_stop)
    monkeypatch.setattr(virnucpro.embed.Embedder, "run",
                        lambda self, *a, **k: batches.append(1) or (_ for _ in ()).throw(AssertionError))
    code, message = run_cli("embed", shard(golden_prepared), "--models", tiny_models, "--out", tmp_path / "s.h5",
                            "--device", "cpu")
    assert code == 6 and "SIGTERM received" in message, message
    assert not batches and not (tmp_path / "s.h5").exists()


def test_a_stop_turned_into_another_error_while_writing_is_exit_6(tmp_path, run_cli, tiny_models,
                                                                 golden_prepared, monkeypatch):
    """h5py mangles an exception raised inside its file callbacks (an AttributeError comes out):
    after a stop, the command still exits 6, not 1 ("a bug"), and leaves no output or temporary file."""
    from virnucpro import h5shard

    write_rows = h5shard._write_rows

    def write_rows_mangling_a_stop(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except Exception as exc:  # noqa: BLE001
            raise AttributeError("'_io.FileIO' object has no attribute 'flush'") from exc
        return write_rows(*args, **kwargs)

    monkeypatch.setattr(h5shard, "_write_rows", write_rows_mangling_a_stop)
    code, message = run_cli("embed", shard(golden_prepared), "--models", tiny_models, "--out", tmp_path / "s.h5",
                            "--device", "cpu")
    assert code == 6 and "SIGTERM received" in message and "bug" not in message, message
    assert not (tmp_path / "s.h5").exists() and not list(tmp_path.glob("*.tmp")) + list(tmp_path.glob(".*.tmp"))


def test_a_second_stop_signal_while_the_process_exits_keeps_exit_6(tmp_path, tiny_models, golden_prepared):
    """Ctrl-C twice or scancel's repeated TERM: a signal during the interpreter's shutdown after a
    stop must not turn exit 6 into death by signal (143)."""
    script = tmp_path / "twice.py"
    script.write_text(
        "import atexit, os, signal, sys\n"
        "import virnucpro.embed as embed\n"
        "from virnucpro.cli import main\n"
        "load = embed._load_encoders\n"
        "def stopping(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return load(*a, **k)\n"
        "embed._load_encoders = stopping\n"
        "atexit.register(lambda: os.kill(os.getpid(), signal.SIGTERM))\n"
        "main(sys.argv[1:])\n")
    done = subprocess.run([sys.executable, str(script), "embed", str(shard(golden_prepared)), "--models",
                           str(tiny_models), "--out", str(tmp_path / "s.h5"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 6, (done.returncode, done.stderr[-2000:])


@pytest.mark.parametrize("record, what", [
    (b"x_chunk_1F1\tACGT\xff\tMK\n", "not UTF-8"),
    (b"x_chunk_1F1\tACGTAC\tMKJ\n", "protein letter 'J'"),
    (b"x_chunk_1F1\tACGTAC\tmk\n", "protein letter 'm'"),
    (b"x_chunk_1F1\tACGTAC\t\n", "an empty field"),
    (b"\tACGTAC\tMK\n", "an empty field"),
])
def test_a_shard_record_prepare_could_not_have_written_is_exit_5_naming_its_line(tmp_path, run_cli, tiny_models,
                                                                                golden_prepared, record, what):
    """Bad bytes, a letter outside the 20 amino acids or an empty field crashed the tokenizer in the
    look-ahead thread (exit 1) or were embedded silently. A damaged stage file is exit 5, as in predict."""
    source = shard(golden_prepared)
    lines = source.read_bytes().splitlines(keepends=True)
    damaged = tmp_path / source.name
    damaged.write_bytes(b"".join(lines[:3] + [record] + lines[3:]))
    code, message = run_cli("embed", damaged, "--models", tiny_models, "--out", tmp_path / "s.h5", "--device", "cpu")
    assert code == 5 and "line 4" in message and what in message and "rerun `virnucpro prepare`" in message, message


def test_a_shard_given_as_a_pipe_is_refused_by_name(tmp_path, run_cli, tiny_models):
    """`embed <(cat shard)`: the shard is read more than once, and the second read of a pipe found
    nothing, which was reported as 'not a virnucpro prepare shard (first line: '')'."""
    import os

    fifo = tmp_path / "shard.tsv"
    os.mkfifo(fifo)
    code, message = run_cli("embed", fifo, "--models", tiny_models, "--out", tmp_path / "s.h5", "--device", "cpu")
    assert code == 3 and "not a regular file" in message, message


def test_the_temporary_file_of_a_killed_write_is_removed_by_the_rerun(tmp_path, tiny_models, golden_prepared, run_cli):
    """A kill while the HDF5 file is written left `.s.h5.XXXXXXXX.tmp` (a shard's size) beside `--out`
    for good; the lock names it, so the next embed removes it. A like-named file not ours stays."""
    out = tmp_path / "s.h5"
    killed_while_writing = ("import os, signal, sys\n"
                            "from virnucpro import h5shard\n"
                            "def write(raw, path, fill):\n"
                            "    raw.write(b'half an HDF5 file')\n"
                            "    os.kill(os.getpid(), signal.SIGKILL)\n"
                            "h5shard._write_through_file = write\n"
                            "from virnucpro.entry import main\n"
                            "main()\n")
    done = subprocess.run([sys.executable, "-c", killed_while_writing, *embed_command(shard(golden_prepared), out,
                                                                                      tiny_models)[3:]],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    left = list(tmp_path.glob(".s.h5.*.tmp"))
    assert len(left) == 1 and left[0].read_bytes() == b"half an HDF5 file"
    not_ours = tmp_path / ".s.h5.mine0000.tmp"
    not_ours.write_text("a user's file")
    code, message = run_cli("embed", shard(golden_prepared), "--models", tiny_models, "--out", out, "--device", "cpu")
    assert code == 0, message
    assert sorted(p.name for p in tmp_path.glob(".s.h5.*")) == [not_ours.name]


@pytest.mark.parametrize("precision, documented", [("fp32", 1e-5), ("fp16", 4e-3), ("bf16", 4e-2)])
def test_batch_neighbours_move_a_vector_only_by_the_documented_rounding(tmp_path, tiny_models, golden_prepared,
                                                                        precision, documented):
    """docs/encoders.md: in fp32 a vector does not depend on its batch (<= 1e-5); in fp16/bf16 the
    rounding of the products does, by about 1e-3/1e-2: one sequence per batch vs all in one. A private
    copy of the models: an fp16 run writes ESM-2's fp16 copy beside the weights."""
    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    rows = []
    for budget in (1, 100_000):
        out = tmp_path / f"{budget}.h5"
        embed(shard(golden_prepared), out, models=models, device="cpu", precision=precision,
              token_budget=budget)
        rows.append(read_h5(out)[1:3])
    for alone, together in zip(*rows):
        assert float(np.abs(alone - together).max()) <= documented


def test_checkpoints_of_another_embed_into_the_same_output_are_said_and_kept(tmp_path, tiny_models,
                                                                                golden_prepared, capsys):
    """A reviewer's case: killed, then the shard re-prepared from changed inputs and embedded to the
    same --out; the first key's parts (GBs at real widths) stayed in s.h5.ckpt without a word."""
    other = tmp_path / "s.h5.ckpt" / ("ab" * 32)
    other.mkdir(parents=True)
    part = other / f"part_00000.{'cd' * 32}.npz"
    part.write_bytes(b"\0" * 2_000_000)
    embed(shard(golden_prepared), tmp_path / "s.h5", models=tiny_models, device="cpu")
    said = " ".join(capsys.readouterr().err.split())
    assert f"{tmp_path / 's.h5.ckpt'} still holds checkpoints of 1 other embed(s)" in said and "2.0 MB" in said, said
    assert part.stat().st_size == 2_000_000 and sorted(p.name for p in (tmp_path / "s.h5.ckpt").iterdir()) == [other.name]


@pytest.fixture
def stopped_on_a_mount(tmp_path, tiny_models, golden_prepared):
    """An embed stopped (exit 6) with its checkpoints in a --checkpoint-dir on a tmpfs of its own;
    returns the command and the mount point."""
    with tmpfs(tmp_path / "mnt", "16m") as point:
        command = embed_command(shard(golden_prepared), tmp_path / "s.h5", tiny_models) + ["--checkpoint-dir",
                                                                                         str(point)]
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        wait_for_parts(point, 2, process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 6
        yield command, point


def test_a_checkpoint_folder_that_became_read_only_is_exit_10_before_any_work(stopped_on_a_mount):
    command, point = stopped_on_a_mount
    remount_read_only(point)
    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 10 and "read-only" in rerun.stderr and str(point) in rerun.stderr, rerun.stderr
    assert "loading DNABERT-S" not in rerun.stderr and "Traceback" not in rerun.stderr, rerun.stderr


def test_a_checkpoint_folder_this_user_cannot_write_is_exit_10_naming_its_owner(stopped_on_a_mount, monkeypatch,
                                                                                  golden_prepared, tiny_models,
                                                                                  tmp_path):
    """Another user's folder in a shared one: its lock file locks read-only, so nothing failed until
    the first checkpoint part, an interval of embedding later. (Root may write anywhere: the
    permission check is made to say no for the key folder.)"""
    _, point = stopped_on_a_mount
    key = next(point.iterdir())
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == key else access(path, mode, **kw))
    with pytest.raises(OutputWriteError) as refused:
        embed(shard(golden_prepared), tmp_path / "s.h5", models=tiny_models, device="cpu", checkpoint_dir=point)
    assert f"cannot write into {key}: permission denied (the folder is root's" in refused.value.message
    assert len(list(key.glob("part_*.npz"))) >= 2, "the parts are kept"


def test_the_note_on_other_checkpoints_never_counts_this_shards_own_folder(tmp_path, capsys):
    """Its key folder stays when it holds a file virnucpro did not write: no "other embed" then."""
    from virnucpro.embed import _note_other_checkpoints

    own = tmp_path / "s.h5.ckpt" / ("ef" * 32)
    own.mkdir(parents=True)
    (own / "notes.txt").write_text("the user's\n")
    _note_other_checkpoints(own)
    assert "other embed" not in capsys.readouterr().err


def test_the_next_batch_is_laid_out_while_one_computes_across_windows_and_models(
        tmp_path, tiny_models, golden_prepared, monkeypatch):
    """The batches of all work items are one stream: before a batch computes, the next one has been
    handed to the layout thread (on a GPU, which launches it), even when it opens another window or
    belongs to the other model. The loop used to start each work item afresh, so the GPU's queue
    ran dry at every boundary."""
    from virnucpro.embed import Embedder, _ShardWork

    original_steps, original_run = _ShardWork.steps, Embedder.run
    handed, ran, next_was_handed = [0], [], []

    def steps(self, items, tokenized):
        for step in original_steps(self, items, tokenized):
            handed[0] += 1
            yield step

    def run(self, role, tokens, batch, collated=None):
        ran.append(role)
        next_was_handed.append(handed[0] > len(ran))
        return original_run(self, role, tokens, batch, collated)

    monkeypatch.setattr(_ShardWork, "steps", steps)
    monkeypatch.setattr(Embedder, "run", run)
    embed(shard(golden_prepared), tmp_path / "s.h5", models=tiny_models, device="cpu", checkpoint_every=20,
          threads=1)
    switches = sum(a != b for a, b in zip(ran, ran[1:]))
    assert switches >= 3, ran  # two windows at least, each with both models
    assert next_was_handed == [True] * (len(ran) - 1) + [False], list(zip(ran, next_was_handed))


def test_an_error_planning_the_next_item_comes_after_the_batch_in_hand_and_its_window(
        tmp_path, tiny_models, golden_prepared, monkeypatch):
    """The stream plans one step ahead: a failure tokenizing the next work item must not cost the
    batch in hand. It is computed and its window saved as a part first, as before the stream."""
    from virnucpro.embed import _ShardWork

    original_tokenize, calls = _ShardWork.tokenize, [0]

    def tokenize(self, item):
        calls[0] += 1
        if calls[0] == 3:  # the first work item of the second window
            raise RuntimeError("injected tokenizer failure")
        return original_tokenize(self, item)

    monkeypatch.setattr(_ShardWork, "tokenize", tokenize)
    checkpoints = tmp_path / "ck"
    with pytest.raises(RuntimeError, match="injected tokenizer failure"):
        embed(shard(golden_prepared), tmp_path / "s.h5", models=tiny_models, device="cpu", checkpoint_every=20,
              threads=1, checkpoint_dir=checkpoints)
    assert len(list(checkpoints.glob("*/part_*.npz"))) == 1, list(checkpoints.rglob("*"))


def test_what_is_left_of_a_work_item_is_planned_again_after_an_out_of_memory_halving(
        tmp_path, tiny_models, golden_prepared, monkeypatch):
    """An item is planned before the batch ahead of it runs: once that batch halves the token budget,
    the item's batches not handed out yet are planned with the halved budget, never the old one."""
    from virnucpro.embed import Embedder

    original_run, sizes, halved = Embedder.run, [], []

    def run(self, role, tokens, batch, collated=None):
        padded = len(batch) * max(len(tokens[i]) for i in batch)
        if role == "esm2" and not halved:
            halved.append(self.token_budget[role])
            self.token_budget[role] = max(1, padded // 4)  # as `run` does on out-of-memory
        elif role == "esm2":
            sizes.append((padded, self.token_budget[role], len(batch)))
        return original_run(self, role, tokens, batch, collated)

    monkeypatch.setattr(Embedder, "run", run)
    embed(shard(golden_prepared), tmp_path / "s.h5", models=tiny_models, device="cpu", token_budget=600,
          threads=1)
    assert halved and len(sizes) > 2, sizes
    late = sizes[1:]  # the first was handed out before the halving
    assert all(padded <= budget or count == 1 for padded, budget, count in late), sizes


def test_the_loop_counts_what_it_waited_for_and_says_so_on_a_gpu():
    """Where embed's loop stands still (the GPU, the next batch's layout and launch, the next tokens)
    is counted and, on a GPU, said in its closing line: the first GPU run kept the device 71% busy
    and could not tell why."""
    from concurrent.futures import ThreadPoolExecutor

    from virnucpro.embed import Embedder, _prefetched, _waits

    def slow(item):
        time.sleep(0.05)
        return item * 2

    waited = {"layout": 0.0}
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert list(_prefetched(pool, slow, [1, 2, 3], waited, "layout")) == [(1, 2), (2, 4), (3, 6)]
    assert 0.04 <= waited["layout"] < 1.0  # the first result at least was waited for
    assert _waits(Embedder({}, 4096, torch.device("cpu"))) == ""  # the CPU computes in the loop itself
    on_gpu = Embedder({}, 4096, torch.device("cuda"))
    on_gpu.waited.update(gpu=20.14, layout=6.3, tokens=0.04)
    assert _waits(on_gpu) == ("; the loop waited 20.1s for the GPU, 6.3s for batch layouts and launches, "
                              "0.0s for tokens")
