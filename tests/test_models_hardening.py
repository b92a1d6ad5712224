"""Models hardening: byte bounds on downloads, `models tiny` written atomically and never through a
link, fp16 copies and models folders that never replace or follow what virnucpro did not write,
manifests and classifier files that are read with bounds."""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from memory_helpers import traced_peak  # noqa: E402
from store_fixtures import closed_port_url  # noqa: E402

from virnucpro.classifier import load_classifier  # noqa: E402
from virnucpro.encoders import esm2  # noqa: E402
from virnucpro.encoders.esm2 import Esm2Encoder  # noqa: E402
from virnucpro.errors import ExitCode, ModelsError  # noqa: E402
from virnucpro.models import download, pins, store  # noqa: E402
from virnucpro.models.tiny import TINY_FILES  # noqa: E402

MiB = 1024 * 1024
CLASSIFIER_PATH = "VirNucPro/commit/300_model.pth"


# ------------------------------------------------------------------ a mirror that never stops

class _Flood:
    """A local server answering every GET with `total` zero bytes (announcing `announce`, if set);
    `cut_off` is set when the client hung up before the end."""

    def __init__(self, total: int, announce: int | None = None):
        self.requests, self.cut_off = 0, threading.Event()
        flood = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                flood.requests += 1
                self.send_response(200)
                if announce is not None:
                    self.send_header("Content-Length", str(announce))
                self.end_headers()
                try:
                    for _ in range(total // MiB):
                        self.wfile.write(b"\0" * MiB)
                except OSError:
                    flood.cut_off.set()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def bounded_classifier(monkeypatch):
    """classifier_300 pinned as usual but bounded at 1 MiB, and no proxy for 127.0.0.1."""
    monkeypatch.setattr(download, "BACKOFF_SECONDS", 0.0)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    spec = pins.FileSource("300_model.pth", "https://origin.invalid", CLASSIFIER_PATH,
                           git_sha1="0" * 40, max_bytes=MiB)
    role = pins.RoleSource("classifier_300", "300_model.pth", "https://origin.invalid", "commit", (spec,))
    monkeypatch.setattr(pins, "SOURCES", {**pins.SOURCES, "classifier_300": role})


def test_an_endless_mirror_is_cut_off_at_the_files_bound(bounded_classifier, tmp_path, run_cli):
    flood = _Flood(total=256 * MiB)
    try:
        code, err = run_cli("models", "download", "--dest", tmp_path / "m", "--only", "classifier_300",
                            "--mirror", flood.url)
        assert flood.cut_off.wait(5)  # the client hung up long before the 256 MiB were sent
    finally:
        flood.close()
    assert code == ExitCode.MODELS and "more than the 1,048,576" in err, err
    assert not (tmp_path / "m" / "300_model.pth.part").exists()
    assert not (tmp_path / "m" / "300_model.pth").exists()


def test_an_absurd_content_length_is_refused_before_anything_is_written(bounded_classifier, tmp_path, run_cli):
    flood = _Flood(total=2 * MiB, announce=10**13)
    try:
        code, err = run_cli("models", "download", "--dest", tmp_path / "m", "--only", "classifier_300",
                            "--mirror", flood.url)
    finally:
        flood.close()
    assert code == ExitCode.MODELS and "announces 10,000,000,000,000 bytes" in err, err
    assert flood.requests == 1 and not (tmp_path / "m" / "300_model.pth.part").exists()


def test_every_published_file_has_a_bound_well_above_its_real_size():
    """Bounds are upper bounds: never tight enough to refuse the genuine file."""
    bound = {Path(spec.relpath).name: spec.max_bytes for source in pins.SOURCES.values() for spec in source.files}
    assert bound["esm2_t36_3B_UR50D.pt"] >= 2 * 5.7e9
    assert bound["pytorch_model.bin"] >= 2 * 0.5e9
    assert min(bound["300_model.pth"], bound["500_model.pth"]) >= 10 * 7e6
    assert min(bound.values()) >= 16 * MiB


# ------------------------------------------------------------------ models tiny

def _tiny_bytes(folder: Path) -> dict[str, str]:
    """sha256 of every tiny model file in `folder` (absent ones left out)."""
    rels = [rel for files in TINY_FILES.values() for rel in files]
    return {rel: hashlib.sha256((folder / rel).read_bytes()).hexdigest()
            for rel in rels if (folder / rel).is_file()}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def test_tiny_never_writes_through_a_link(tmp_path, tiny_models, run_cli):
    farm = tmp_path / "farm"
    shutil.copytree(tiny_models, farm)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (farm / "500_model_tiny.pth").unlink()
    (farm / "500_model_tiny.pth").symlink_to(victim)
    code, err = run_cli("models", "tiny", farm)
    assert code == ExitCode.BAD_INPUT and "500_model_tiny.pth is a symbolic link" in err, err
    assert victim.read_text() == "precious\n" and (farm / "500_model_tiny.pth").is_symlink()


def test_tiny_never_replaces_a_file_it_did_not_write(tmp_path, run_cli):
    farm = tmp_path / "farm"
    farm.mkdir()
    (farm / "300_model_tiny.pth").write_text("my own notes\n")
    code, err = run_cli("models", "tiny", farm)
    assert code == ExitCode.BAD_INPUT and "300_model_tiny.pth is a file the manifest does not record" in err
    assert (farm / "300_model_tiny.pth").read_text() == "my own notes\n"
    assert not (farm / "esm2_tiny.pt").exists()  # everything is checked before anything is written


def test_tiny_on_a_failing_disk_is_exit_10_naming_the_file_and_leaves_nothing_half_written(
        tmp_path, tiny_models, run_cli, monkeypatch):
    from virnucpro import outdir
    from virnucpro.models import tiny

    written = []
    write = tiny.write_atomically

    def write_then_fail(target, data):
        if len(written) == 2:
            with outdir.replaced_atomically(target) as temporary:  # its temporary file, half written
                temporary.write_bytes(data[: len(data) // 2])
                raise OSError(28, "No space left on device")
        written.append(target)
        write(target, data)

    monkeypatch.setattr(tiny, "write_atomically", write_then_fail)
    farm = tmp_path / "farm"
    code, err = run_cli("models", "tiny", farm)
    assert code == ExitCode.OUTPUT_WRITE and "the disk is full" in err, err
    third = [rel for files in TINY_FILES.values() for rel in files][2]
    assert str(farm / third) in err
    present = _tiny_bytes(farm)
    assert len(present) == 2 and _leftovers(farm) == []
    assert all(present[rel] == digest for rel, digest in _tiny_bytes(tiny_models).items() if rel in present)
    monkeypatch.undo()
    assert run_cli("models", "tiny", farm)[0] == 0
    assert _tiny_bytes(farm) == _tiny_bytes(tiny_models)


def _no_file_bigger_than(limit: int):
    """preexec_fn: files this process writes stop at `limit` bytes with EFBIG (a quota)."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_tiny_under_a_real_file_size_quota_is_exit_10(tmp_path):
    farm = tmp_path / "farm"
    run = subprocess.run([sys.executable, "-m", "virnucpro", "models", "tiny", str(farm)],
                         capture_output=True, text=True, preexec_fn=_no_file_bigger_than(64 * 1024))
    assert run.returncode == ExitCode.OUTPUT_WRITE, run.stderr
    assert "cannot write the tiny models" in run.stderr and "bug" not in run.stderr
    assert _tiny_bytes(farm) == {} and _leftovers(farm) == []


_BLOCK_ON_THIRD_FILE = """
import sys
from virnucpro import outdir
from virnucpro.models import tiny
from virnucpro.cli import main
count = []
write = tiny.write_atomically
def blocked(target, data):
    count.append(1)
    if len(count) == 3:
        with outdir.replaced_atomically(target) as temporary:  # its temporary file, half written
            temporary.write_bytes(data[: len(data) // 2])
            print("ready", flush=True)
            sys.stdin.read()  # SIGTERM arrives here
    write(target, data)
tiny.write_atomically = blocked
main(["models", "tiny", sys.argv[1]])
"""


def test_tiny_stopped_mid_write_leaves_nothing_half_written_and_a_rerun_completes_it(tmp_path, tiny_models):
    farm = tmp_path / "farm"
    child = subprocess.Popen([sys.executable, "-c", _BLOCK_ON_THIRD_FILE, str(farm)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGTERM)
    _out, err = child.communicate()
    assert child.returncode == ExitCode.INTERRUPTED, err
    present = _tiny_bytes(farm)
    assert len(present) == 2 and _leftovers(farm) == []
    assert all(present[rel] == _tiny_bytes(tiny_models)[rel] for rel in present)
    rerun = subprocess.run([sys.executable, "-m", "virnucpro", "models", "tiny", str(farm)],
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert _tiny_bytes(farm) == _tiny_bytes(tiny_models)


# ------------------------------------------------------------------ fp16 copy, ensure, manifests

@pytest.fixture
def models(tmp_path, tiny_models) -> Path:
    folder = tmp_path / "models"
    shutil.copytree(tiny_models, folder)
    esm2._told.clear()
    return folder


def test_the_fp16_copy_never_replaces_a_file_the_manifest_does_not_record(models, capsys):
    mine = models / "esm2_tiny.fp16.safetensors"
    mine.write_bytes(b"the user's own file")
    home = store.esm2_home(models / "esm2_tiny.pt")
    with pytest.raises(ModelsError, match="in the way of ESM-2's fp16 copy") as info:
        esm2.ensure_fp16_copy(home)
    assert str(mine) in info.value.message
    encoder = Esm2Encoder(models / "esm2_tiny.pt", torch.device("cpu"), torch.float16)
    assert encoder.loaded_from == models / "esm2_tiny.pt"
    assert mine.read_bytes() == b"the user's own file"
    assert "fp16" not in store.read_manifest(models)["models"]["esm2"]


def test_a_tiny_folder_missing_a_file_is_never_completed_with_the_published_model(models, monkeypatch):
    (models / "300_model_tiny.pth").unlink()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(download, "download_roles", lambda *a, **k: pytest.fail("downloads"))
    with pytest.raises(ModelsError, match="tiny test models .* are incomplete") as info:
        download.ensure(models)
    assert "virnucpro models tiny" in info.value.hint and "300_model_tiny.pth" in info.value.message


@pytest.mark.parametrize("unrelated", ['[{"src": "app.js"}]', '{"format_version": "2.1", "name": "web app"}',
                                       '{"models": ["a.onnx"]}', "not json"])
def test_an_unrelated_manifest_above_hand_staged_weights_is_ignored(tmp_path, unrelated):
    (tmp_path / "manifest.json").write_text(unrelated)
    weights = tmp_path / "models" / "esm2_t36_3B_UR50D.pt"
    weights.parent.mkdir()
    weights.write_bytes(b"weights")
    assert store.esm2_home(weights) is None


def test_a_models_path_with_an_unknown_user_is_a_usage_error(run_cli, monkeypatch):
    monkeypatch.setenv("VIRNUCPRO_MODELS", "~no_such_user_virnucpro/m")
    code, err = run_cli("models", "check")
    assert code == ExitCode.USAGE and "~no_such_user_virnucpro" in err and "bug" not in err, err
    code, err = run_cli("models", "download", "--dest", "~no_such_user_virnucpro/m")
    assert code == ExitCode.USAGE, err


def test_a_manifest_that_is_a_fifo_or_endless_is_exit_4_naming_it(models, run_cli):
    manifest = models / "manifest.json"
    manifest.unlink()
    os.mkfifo(manifest)
    code, err = run_cli("models", "check", models)
    assert code == ExitCode.MODELS and f"{manifest} is unreadable" in err and "not a regular file" in err
    manifest.unlink()
    manifest.symlink_to("/dev/zero")
    code, err = run_cli("models", "check", models)
    assert code == ExitCode.MODELS and "not a regular file" in err, err
    manifest.unlink()
    with open(manifest, "wb") as handle:
        handle.truncate(store.MANIFEST_MAX_BYTES + 1)  # sparse: no disk used
    code, err = run_cli("models", "check", models)
    assert code == ExitCode.MODELS and "larger than 16,777,216 bytes" in err, err


def test_download_never_writes_through_a_linked_subfolder(tmp_path, run_cli):
    shared = tmp_path / "shared_dnabert"
    shared.mkdir()
    dest = tmp_path / "farm"
    dest.mkdir()
    (dest / "DNABERT-S").symlink_to(shared)
    code, err = run_cli("models", "download", "--dest", dest, "--only", "dnabert_s", "--mirror", closed_port_url())
    assert code == ExitCode.BAD_INPUT and f"{dest / 'DNABERT-S'} is a symbolic link" in err, err
    assert list(shared.iterdir()) == []


# ------------------------------------------------------------------ classifier files

def test_a_huge_classifier_file_is_refused_without_reading_it(tmp_path):
    huge = tmp_path / "huge.pth"
    with open(huge, "wb") as handle:
        handle.truncate(3 * 1024**3)  # sparse
    with pytest.raises(ModelsError, match="far above any classifier") as info:
        traced_peak(lambda: load_classifier(huge))
    assert str(huge) in info.value.message
    _, peak = traced_peak(lambda: pytest.raises(ModelsError, load_classifier, huge))
    assert peak < 16 * MiB


def test_what_is_given_as_a_classifier_is_named_when_not_a_file(tmp_path):
    fifo = tmp_path / "fifo.pth"
    os.mkfifo(fifo)
    with pytest.raises(ModelsError, match="is a directory"):
        load_classifier(tmp_path)
    with pytest.raises(ModelsError, match="not a regular file"):
        load_classifier(fifo)
    with pytest.raises(ModelsError, match="not a regular file"):
        load_classifier(Path("/dev/zero"))


def test_models_check_given_a_file_says_so(tmp_path, run_cli):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, err = run_cli("models", "check", afile)
    assert code == ExitCode.MODELS and "is not a directory (it is a file)" in err, err
    assert str(afile) in err
    # its own way of being given the folder (a reviewer's case: the hint named --models and --dest)
    assert "`virnucpro models check DIR` or VIRNUCPRO_MODELS=DIR" in " ".join(err.split()) and "--dest" not in err


@pytest.mark.parametrize("offline", [[], ["--offline"]])
def test_run_refuses_a_models_variable_naming_a_file_before_any_work(tmp_path, run_cli, monkeypatch, offline):
    """VIRNUCPRO_MODELS naming a file: `run` prepared the whole input first, then said exit 3 "is a
    file"; with --offline it said the models were missing and to download into the file."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    monkeypatch.setenv("VIRNUCPRO_MODELS", str(afile))
    reads = tmp_path / "reads.fa"
    reads.write_text(">r1\n" + "ATG" * 200 + "\n")
    code, err = run_cli("run", reads, "--outdir", tmp_path / "out", *offline)
    assert code == ExitCode.MODELS and f"models directory {afile} is not a directory (it is a file)" in err, err
    assert "download" not in err and not (tmp_path / "out").exists(), err


@pytest.mark.parametrize("target, words", [("missing", "a link to a missing path"), ("file", "it is a file)")])
def test_a_models_link_is_described_by_what_it_points_to(tmp_path, run_cli, target, words):
    afile = tmp_path / "afile"
    afile.write_text("x")
    link = tmp_path / "models"
    link.symlink_to(afile if target == "file" else tmp_path / "nowhere")
    code, err = run_cli("models", "check", link)
    assert code == ExitCode.MODELS and words in err, err


def test_tiny_stopped_before_writing_leaves_no_folder_behind(tmp_path, monkeypatch):
    """Stopped (exit 6) while the models are made, before anything is written: the folder it created
    goes with its lock file, as `claim` does for the other commands; a folder that existed stays."""
    from virnucpro.errors import InterruptedByUser
    from virnucpro.models import tiny

    def stopped():
        raise InterruptedByUser("SIGTERM received: stopped")

    monkeypatch.setattr(tiny, "_made_models", stopped)
    new = tmp_path / "new" / "tiny"
    with pytest.raises(InterruptedByUser):
        tiny.make_tiny(new)
    assert not new.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(InterruptedByUser):
        tiny.make_tiny(existing)
    assert existing.is_dir() and not any(existing.iterdir())


@pytest.mark.parametrize("version, kind", [("true", "a boolean"), ("1.0", "a float"), ('"1"', "a string")])
def test_a_format_version_that_only_equals_1_in_python_is_refused(models, run_cli, version, kind):
    """`true == 1 == 1.0` in Python: such a manifest was read as version 1. A review's case: "1" was
    refused as "format_version '1'; this virnucpro reads version 1", which reads as a contradiction."""
    manifest = models / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"format_version": 1', f'"format_version": {version}', 1))
    code, err = run_cli("models", "check", models)
    said = " ".join(err.split())
    assert code == ExitCode.MODELS and f"`format_version` is {kind}, not a whole number" in said, err


@pytest.mark.parametrize("version, side", [(2, "a newer"), (0, "an older")])
def test_a_models_manifest_of_another_format_says_which_side_is_newer(models, run_cli, version, side):
    manifest = models / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"format_version": 1', f'"format_version": {version}', 1))
    code, err = run_cli("models", "check", models)
    said = " ".join(err.split())
    assert code == ExitCode.MODELS and f"has format_version {version}: {side} virnucpro wrote it" in said, err
