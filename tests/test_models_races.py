"""Models files that change while virnucpro reads or writes them: a file replaced (`mv`, rsync,
re-staging) while it is hashed never gets the old file's sha256 cached under the new file's stamp;
a kill while ESM-2's fp16 copy is written leaves nothing the next holder of the folder's lock does
not remove; and a command that finds models missing while a download holds the folder says so.

The replacement is real: another file is renamed over the path being hashed, from inside the read
of the real file (the first read of that file triggers it), so it always falls in the window."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from store_fixtures import (ESM2_COPY as COPY, ESM2_WEIGHTS as WEIGHTS,  # noqa: E402,F401 (autouse fixture)
                            folder_held_by_another_process, fresh_model_process_state)

from virnucpro.encoders.esm2 import Esm2Encoder  # noqa: E402
from virnucpro.errors import ExitCode, ModelsError  # noqa: E402
from virnucpro.models import download, store  # noqa: E402

CPU = torch.device("cpu")


def real_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def other_esm2(models: Path, name: str = "incoming.pt") -> Path:
    """Another ESM-2 checkpoint of the same shape (other weights), beside the models folder."""
    data = torch.load(str(models / WEIGHTS), weights_only=False)
    data["model"]["encoder.sentence_encoder.layers.0.fc1.bias"] += 0.5
    path = models.parent / name
    torch.save(data, str(path))
    return path


# --- 1. a file replaced while it is hashed ---------------------------------------------------------

class _SwappingFile:
    """A real open file whose reads run `swap` once, right after the first read returned."""

    def __init__(self, handle, swap):
        self._handle, self._swap = handle, swap

    def read(self, *args):
        data = self._handle.read(*args)
        if self._swap is not None:
            swap, self._swap = self._swap, None
            swap()
        return data

    def __enter__(self):
        self._handle.__enter__()
        return self

    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._handle, name)


@pytest.fixture
def swap_while_read(monkeypatch):
    """`arm(path, incoming)`: the next time the models code opens `path` and reads from it, each
    file of `incoming` in turn (one per open) is renamed over `path` in the middle of that read."""
    monkeypatch.setattr(store, "_CACHE_MIN_BYTES", 1)  # the tiny .pt counts as big: cached
    pending: dict[str, list[Path]] = {}

    def opening(file, *args, **kwargs):
        handle = builtins.open(file, *args, **kwargs)
        queue = pending.get(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else None
        if not queue:
            return handle
        incoming = queue.pop(0)
        return _SwappingFile(handle, lambda: os.rename(incoming, file))

    monkeypatch.setattr(store, "open", opening, raising=False)

    def arm(path: Path, *incoming: Path) -> None:
        pending[os.fspath(path)] = list(incoming)
    return arm


def cached_pairs_are_true(models: Path) -> None:
    """Every hash the cache file and the process remember for a file at its current stamp is that
    file's real sha256."""
    cache = json.loads((models / store.HASH_CACHE).read_text()) if (models / store.HASH_CACHE).exists() else {}
    for rel, entry in cache.items():
        path = models / rel
        if path.is_file() and all(entry.get(k) == v for k, v in store._stamp(path.stat()).items()):
            assert entry["sha256"] == real_sha256(path), f"{rel}: the cache pairs another file's sha256 with its stamp"
    for key, entry in store.remembered_hashes.items():
        path = Path(key[0])
        if path.is_file() and key == store._remembered_key(path, path.stat()):
            assert entry["sha256"] == real_sha256(path), f"{path}: remembered with another file's sha256"


def test_a_file_replaced_while_hashed_is_verified_as_the_new_file(models, swap_while_read):
    incoming = other_esm2(models)
    new_sha256 = real_sha256(incoming)
    swap_while_read(models / WEIGHTS, incoming)
    with pytest.raises(ModelsError) as first:
        store.locate(models)
    assert first.value.code == ExitCode.MODELS
    assert f"{models / WEIGHTS} has sha256 {new_sha256}" in first.value.message, first.value.message
    cached_pairs_are_true(models)
    store.remembered_hashes.clear()  # a later embed: another process, reading the cache file
    with pytest.raises(ModelsError, match=f"has sha256 {new_sha256}"):
        store.locate(models)


def test_the_recorded_file_put_back_while_hashed_verifies(models, swap_while_read):
    """The reverse: a damaged file in place, the good one renamed over it while it is hashed."""
    good = models.parent / "good.pt"
    shutil.copy2(models / WEIGHTS, good)
    damaged = other_esm2(models, "damaged.pt")
    os.replace(damaged, models / WEIGHTS)
    swap_while_read(models / WEIGHTS, good)
    assert store.locate(models).sha256["esm2"] == real_sha256(models / WEIGHTS)
    cached_pairs_are_true(models)
    store.remembered_hashes.clear()
    store.locate(models)


def test_a_file_that_keeps_changing_while_hashed_is_exit_4_naming_it(models, swap_while_read):
    others = [other_esm2(models, f"other{i}.pt") for i in range(8)]
    for i, path in enumerate(others):  # each one differs from the one before
        data = torch.load(str(path), weights_only=False)
        data["model"]["encoder.sentence_encoder.layers.0.fc1.bias"] += i
        torch.save(data, str(path))
    swap_while_read(models / WEIGHTS, *others)
    with pytest.raises(ModelsError) as info:
        store.locate(models)
    assert info.value.code == ExitCode.MODELS
    assert f"{models / WEIGHTS} changed while it was being verified" in info.value.message
    assert "wait for whatever writes it to finish, then rerun" in (info.value.hint or "")
    cached_pairs_are_true(models)


def test_models_check_caches_the_fp16_copy_only_as_it_hashed_it(models, swap_while_read):
    Esm2Encoder(models / WEIGHTS, CPU, torch.float16)  # writes and records the copy
    store.remembered_hashes.clear()
    (models / store.HASH_CACHE).unlink()
    intruder = models.parent / "intruder.safetensors"
    intruder.write_bytes((models / COPY).read_bytes()[:-1] + b"\0")
    swap_while_read(models / COPY, intruder)
    store.check(models)
    cached_pairs_are_true(models)
    store.remembered_hashes.clear()
    encoder = Esm2Encoder(models / WEIGHTS, CPU, torch.float16)  # the changed copy is not trusted
    assert encoder.loaded_from == models / COPY
    assert real_sha256(models / COPY) == store.read_manifest(models)["models"]["esm2"]["fp16"]["sha256"]


def test_record_keeps_the_stamp_of_the_file_hashed_not_of_the_file_there_now(models):
    """`HashCache.record` takes the stamp of what was hashed: a file found changed is not recorded."""
    cache = store.HashCache(models)
    path = models / WEIGHTS
    stamp = path.stat()
    digest = real_sha256(path)
    incoming = other_esm2(models)
    os.replace(incoming, path)
    cache.record(WEIGHTS, path, digest, stamp)
    cache.save()
    cached_pairs_are_true(models)


# --- 2. a kill while the fp16 copy is written -------------------------------------------------------

KILLED_IN_THE_WRITE = r"""
import resource, signal, sys
from pathlib import Path
import safetensors.torch
import torch
from virnucpro.encoders.esm2 import Esm2Encoder

real_save_file = safetensors.torch.save_file

def save_file_killed_by_the_kernel(tensors, filename, metadata=None):
    # a file-size limit under the copy's size: the kernel ends the process (SIGXFSZ) inside the write
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
    real_save_file(tensors, filename, metadata=metadata)

safetensors.torch.save_file = save_file_killed_by_the_kernel
Esm2Encoder(Path(sys.argv[1]), torch.device("cpu"), torch.float16)
print("not killed", flush=True)
"""


def tree(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def test_a_kill_while_the_fp16_copy_is_written_leaves_nothing_the_next_holder_keeps(models, tmp_path, tiny_models):
    control = tmp_path / "control"
    shutil.copytree(tiny_models, control)
    Esm2Encoder(control / WEIGHTS, CPU, torch.float16)  # a copy never interrupted
    user_file = models / ".tmpAbC123"  # safetensors' naming, but the user's: never removed
    user_file.write_text("mine\n")
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_THE_WRITE, str(models / WEIGHTS)],
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGXFSZ, killed.stdout + killed.stderr
    left = tree(models) - tree(control) - {user_file.name}
    assert left, "the kill left no temporary file: it did not fall inside the write"
    encoder = Esm2Encoder(models / WEIGHTS, CPU, torch.float16)  # the next holder of the lock
    assert encoder.loaded_from == models / COPY
    assert tree(models) == tree(control) | {user_file.name}
    assert user_file.read_text() == "mine\n"


def test_leftovers_are_removed_but_never_a_file_of_another_name(models):
    scratch = models / f".{COPY}.abcd1234.tmp"
    scratch.mkdir()
    (scratch / ".tmpXy12Z9").write_bytes(b"half a copy")
    (scratch / "notes.txt").write_text("the user's\n")
    lone = models / f".{COPY}.efgh5678.tmp"
    lone.write_bytes(b"an older virnucpro's temporary copy")
    Esm2Encoder(models / WEIGHTS, CPU, torch.float16)
    assert not (scratch / ".tmpXy12Z9").exists() and not lone.exists()
    assert (scratch / "notes.txt").read_text() == "the user's\n"


# --- 3. models missing while a download holds the folder --------------------------------------------

def _missing_while_held(models: Path, call) -> ModelsError:
    (models / "500_model_tiny.pth").unlink()
    with folder_held_by_another_process(models) as pid:
        with pytest.raises(ModelsError) as info:
            call()
    assert info.value.code == ExitCode.MODELS
    assert f"pid {pid}" in info.value.message, info.value.message
    return info.value


@pytest.mark.parametrize("how", ["locate", "offline", "online_check"])
def test_models_missing_while_a_download_holds_the_folder_says_so(models, how, monkeypatch):
    calls = {"locate": lambda: store.locate(models),
             "offline": lambda: download.ensure(models, offline=True),
             "online_check": lambda: download._to_download(models, list(store.ROLES), offline=False)}
    error = _missing_while_held(models, calls[how])
    assert f"writing models into {models} now" in error.message and "in progress" in error.message
    assert "wait for it to finish" in error.hint
    assert "models download" not in error.hint and "models tiny" not in error.hint


def test_models_missing_with_nobody_holding_the_folder_still_names_the_fix(models):
    (models / "500_model_tiny.pth").unlink()
    with pytest.raises(ModelsError) as info:
        store.locate(models)
    assert "models tiny" in info.value.hint and "in progress" not in info.value.message


def test_embed_with_models_missing_during_a_download_says_wait(models, run_cli, small_sample):
    prepared, _ = small_sample
    (models / WEIGHTS).unlink()  # embed needs the encoders only
    from virnucpro import prepared as fmt

    with folder_held_by_another_process(models) as pid:
        code, err = run_cli("embed", prepared / "shards" / fmt.shard_name(0), "--models", models,
                            "--out", models.parent / "s.h5", "--device", "cpu")
    assert code == ExitCode.MODELS and f"pid {pid}" in err and "in progress" in err, err
    assert "virnucpro models download" not in err and "virnucpro models tiny" not in err, err


def test_a_scratch_folder_takes_the_models_folders_permissions(models):
    """mkdtemp makes it 0700: in a folder shared by a group, what a killed writer leaves in it could
    be removed by its owner alone, where a file beside the copy could be removed by any member."""
    os.chmod(models, 0o2775)
    with store.scratch_folder(models / COPY) as scratch:
        assert scratch.stat().st_mode & 0o777 == 0o775


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to act as another user")
def test_another_users_leftover_that_cannot_be_removed_is_named():
    """A leftover this user may not open was kept without a word: the space it holds (GBs) went unseen."""
    import tempfile

    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c"]
    if subprocess.run([*as_nobody, "import virnucpro"], capture_output=True, cwd="/").returncode != 0:
        pytest.skip("the other user cannot reach this checkout's Python (a private folder on its path)")
    shared = Path(tempfile.mkdtemp(prefix="virnucpro-shared-", dir="/tmp"))  # reachable by the other user
    try:
        os.chmod(shared, 0o777)
        scratch = shared / f".{COPY}.abcd1234.tmp"
        scratch.mkdir(mode=0o700)
        (scratch / ".tmpXy12Z9").write_bytes(b"half a copy")
        script = ("import sys; from pathlib import Path; from virnucpro.models import store; "
                  "store.remove_leftover_temporaries(Path(sys.argv[1]))")
        done = subprocess.run([*as_nobody, script, str(shared / COPY)], capture_output=True, text=True,
                              env={**os.environ, "HOME": str(shared)}, cwd="/")
        assert done.returncode == 0, done.stderr
        assert str(scratch) in done.stderr and "user root" in done.stderr and "rm -r" in done.stderr, done.stderr
        assert (scratch / ".tmpXy12Z9").exists()
    finally:
        shutil.rmtree(shared)


def test_a_scratch_folder_kept_for_a_file_virnucpro_did_not_write_names_that_file_not_rm(models, capsys):
    """A review's case: the warning said the folder was another user's and to `rm -r` it, which would
    delete the user's file that was the reason it was kept."""
    scratch = models / f".{COPY}.abcd1234.tmp"
    scratch.mkdir()
    (scratch / ".tmpXy12Z9").write_bytes(b"half a copy")
    (scratch / "keep.txt").write_text("notes")
    store.remove_leftover_temporaries(models / COPY)
    err = capsys.readouterr().err
    assert "was kept: it holds 'keep.txt', which virnucpro did not write" in " ".join(err.split()), err
    assert "rm -r" not in err
    assert (scratch / "keep.txt").read_text() == "notes" and not (scratch / ".tmpXy12Z9").exists()
