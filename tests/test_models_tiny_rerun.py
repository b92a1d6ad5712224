"""`virnucpro models tiny DIR` run again on a folder it already wrote: ESM-2's fp16 copy that an fp16
embed recorded there stays recorded while it still derives from the rewritten .pt (else the copy
virnucpro wrote goes with its record), and a stop acted on once the folder is complete says so.

Real commands in their own processes: the CLI, and for the stop a real SIGTERM that the command's
own process sends itself at an exact moment (an audit hook, as in test_error_paths_outdir)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from virnucpro import prepared as fmt
from virnucpro.errors import ExitCode
from virnucpro.models import store

CLI = [sys.executable, "-m", "virnucpro"]
COPY = "esm2_tiny.fp16.safetensors"
IN_THE_WAY = "is in the way of ESM-2's fp16 copy"


def virnucpro(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)


def fp16_embed(models: Path, small_sample, out: Path) -> subprocess.CompletedProcess:
    """`virnucpro embed` of the small sample's shard at fp16 on the CPU (writes the fp16 copy)."""
    shard = small_sample[0] / "shards" / fmt.shard_name(0)
    return virnucpro("embed", shard, "--models", models, "--out", out, "--device", "cpu",
                     "--precision", "fp16", "--threads", "1")


def esm2_entry(models: Path) -> dict:
    return json.loads((models / store.MANIFEST).read_text())["models"]["esm2"]


def tiny_folder(models: Path) -> None:
    done = virnucpro("models", "tiny", models)
    assert done.returncode == 0, done.stderr


def test_rerun_keeps_the_record_of_an_fp16_copy_that_still_derives_from_the_pt(tmp_path, small_sample):
    models = tmp_path / "tiny"
    tiny_folder(models)
    first = fp16_embed(models, small_sample, tmp_path / "a.h5")
    assert first.returncode == 0, first.stderr
    record = esm2_entry(models)["fp16"]
    assert record["file"] == COPY and (models / COPY).is_file()
    copy = (models / COPY).read_bytes()

    tiny_folder(models)  # the same bytes again: the copy still derives from the .pt
    assert esm2_entry(models).get("fp16") == record
    assert store.sha256_file(models / "esm2_tiny.pt") == record["source_sha256"]
    assert (models / COPY).read_bytes() == copy

    again = fp16_embed(models, small_sample, tmp_path / "b.h5")
    assert again.returncode == 0, again.stderr
    assert IN_THE_WAY not in again.stderr and "writing it again" not in again.stderr, again.stderr
    assert esm2_entry(models).get("fp16") == record and (models / COPY).read_bytes() == copy
    assert virnucpro("models", "check", models).returncode == 0


def test_rerun_removes_an_fp16_copy_derived_from_other_weights_with_its_record(tmp_path, small_sample):
    import torch

    models = tmp_path / "tiny"
    tiny_folder(models)
    weights = models / "esm2_tiny.pt"  # other weights in place and recorded, as another writer leaves them
    data = torch.load(str(weights), weights_only=False)
    data["model"]["encoder.sentence_encoder.layers.0.fc1.bias"] += 0.5
    torch.save(data, str(weights))
    manifest = store.read_manifest(models)
    manifest["models"]["esm2"]["sha256"]["esm2_tiny.pt"] = store.sha256_file(weights)
    store.write_manifest(models, manifest)
    first = fp16_embed(models, small_sample, tmp_path / "a.h5")
    assert first.returncode == 0, first.stderr
    stale = esm2_entry(models)["fp16"]

    tiny_folder(models)  # the tiny .pt again: the recorded copy derives from the other weights
    assert store.sha256_file(weights) != stale["source_sha256"]
    assert "fp16" not in esm2_entry(models) and not (models / COPY).exists()

    again = fp16_embed(models, small_sample, tmp_path / "b.h5")
    assert again.returncode == 0, again.stderr
    assert IN_THE_WAY not in again.stderr, again.stderr
    assert esm2_entry(models)["fp16"]["source_sha256"] == store.sha256_file(weights)
    assert store.sha256_file(models / COPY) == esm2_entry(models)["fp16"]["sha256"]


def test_rerun_leaves_a_file_at_the_copys_name_that_the_manifest_does_not_record(tmp_path):
    models = tmp_path / "tiny"
    tiny_folder(models)
    (models / COPY).write_bytes(b"the user's own file")
    tiny_folder(models)
    assert (models / COPY).read_bytes() == b"the user's own file" and "fp16" not in esm2_entry(models)



def test_rerun_never_removes_a_file_an_fp16_record_names_outside_the_copys_name(tmp_path):
    """A hand-edited record naming another file (`../victim`, a user's file beside the models) is
    dropped or refused, the file kept: only the copy's own name is ever removed."""
    models = tmp_path / "tiny"
    tiny_folder(models)
    victim = tmp_path / "victim"
    victim.write_bytes(b"not ours")
    (models / "notes.txt").write_bytes(b"the user's notes")
    for named in ("../victim", "notes.txt"):
        manifest = json.loads((models / store.MANIFEST).read_text())
        manifest["models"]["esm2"]["fp16"] = {"file": named, "sha256": "0" * 64, "source_sha256": "1" * 64}
        (models / store.MANIFEST).write_text(json.dumps(manifest))
        done = virnucpro("models", "tiny", models)
        if named == "../victim":  # the manifest's own check refuses it
            assert done.returncode == ExitCode.MODELS and "not a file name inside" in done.stderr, done.stderr
            continue
        assert done.returncode == 0, done.stderr
        assert "fp16" not in esm2_entry(models) and virnucpro("models", "check", models).returncode == 0
    assert victim.read_bytes() == b"not ours" and (models / "notes.txt").read_bytes() == b"the user's notes"


# The command line, run in a process whose audit hook sends it SIGTERM itself at the first call `open`
# after the last tiny model file is renamed into place (the folder is then complete; the open is the
# sync of the folder that follows the rename).
STOPPED_WHEN_COMPLETE = r"""
import os, runpy, signal, sys
armed, fired = [], []

def hook(name, args):
    if fired:
        return
    if name == "os.rename" and len(args) > 1 and os.fsdecode(args[1]).endswith("/500_model_tiny.pth"):
        armed.append(True)
    elif armed and name == "open":
        fired.append(True)
        sys.stderr.write("TEST: SIGTERM sent\n")
        os.kill(os.getpid(), signal.SIGTERM)

sys.addaudithook(hook)
sys.argv = ["virnucpro", *sys.argv[1:]]
runpy.run_module("virnucpro", run_name="__main__", alter_sys=True)
"""


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every model file and the manifest (the hash cache and the lock aside), by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def test_a_stop_once_the_tiny_folder_is_complete_says_nothing_is_left_to_rerun(tmp_path):
    complete = tmp_path / "complete"
    tiny_folder(complete)
    stopped = tmp_path / "stopped"
    done = subprocess.run([sys.executable, "-c", STOPPED_WHEN_COMPLETE, "models", "tiny", str(stopped)],
                          capture_output=True, text=True)
    assert "TEST: SIGTERM sent" in done.stderr, f"the moment never came: {done.stderr}"
    assert done.returncode == ExitCode.INTERRUPTED, done.stderr
    assert "nothing to rerun: the outputs are complete" in done.stderr, done.stderr
    assert f"finished outputs were in place in {stopped}" in done.stderr, done.stderr
    assert "unfinished output removed" not in done.stderr, done.stderr
    assert folder_files(stopped) == folder_files(complete)
    assert not [p for p in stopped.rglob("*.tmp")]
    assert virnucpro("models", "check", stopped).returncode == 0


def test_no_writable_temporary_folder_is_exit_10_not_a_bug(tmp_path, monkeypatch, run_cli):
    """It was "unexpected FileNotFoundError ... this is a bug" with a traceback (exit 1)."""
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))
    code, err = run_cli("models", "tiny", str(tmp_path / "tiny"))
    assert code == ExitCode.OUTPUT_WRITE, err
    assert "no writable temporary folder for the tiny models" in err and "TMPDIR" in err, err
    assert "Traceback" not in err and "bug" not in err, err


def test_a_scratch_folder_that_cannot_be_removed_afterwards_does_not_fail_the_models_written(tmp_path, run_cli,
                                                                                              monkeypatch):
    """The storage going away while the scratch folder was removed made `models tiny` exit 10, "rerun: it
    resumes", with its models written and nothing to resume."""
    import errno
    import os

    real = os.unlink

    def failing(path, *args, **kwargs):
        if kwargs.get("dir_fd") is not None or "virnucpro-tiny-" in os.fspath(path):
            raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN), os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(os, "unlink", failing)
    code, message = run_cli("models", "tiny", tmp_path / "models")
    monkeypatch.undo()
    assert code == 0, message
    assert run_cli("models", "check", tmp_path / "models")[0] == 0
