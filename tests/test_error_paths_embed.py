"""Error paths of embed that must keep sound work and name the real cause: a checkpoint part that
cannot be read (the limit on open files, its permissions) is kept, never discarded as damaged; the
limit on open files is named where the checkpoint writer and DNABERT-S's loader meet it; a stop
right after the HDF5 temporary file is created leaves nothing behind; an embedding file in a folder
that cannot be entered is exit 3 naming the folder."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from virnucpro import prepared as fmt
from virnucpro.embed import CheckpointStore, embed
from virnucpro.errors import ExitCode
from permission_helpers import unprivileged

CLI = [sys.executable, "-m", "virnucpro"]
EVERY = 4  # records per checkpoint window: shard 0 (60 records) leaves 15 parts

# Lowers the limit on open files of this process to the files it holds now: its next open fails
# (EMFILE), as `prlimit --pid PID --nofile=N:` does to a running embed.
AT_THE_LIMIT = """
import os, resource
def at_the_limit(spare=0):
    free = os.dup(0)
    os.close(free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (free + spare, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
"""

# `virnucpro ARGS` whose limit on open files is reached when it reads its first checkpoint part
LIMIT_AT_THE_FIRST_PART = AT_THE_LIMIT + """
import virnucpro.embed
read_part = virnucpro.embed._read_part
def read_at_the_limit(*args):
    at_the_limit()
    return read_part(*args)
virnucpro.embed._read_part = read_at_the_limit
from virnucpro.entry import main
main()
"""

# one checkpoint part written past the limit on open files: the error the command would end with
WRITE_AT_THE_LIMIT = AT_THE_LIMIT + """
import sys
from pathlib import Path
import numpy as np
from virnucpro.embed import CheckpointStore
from virnucpro.errors import VirnucproError

store = CheckpointStore(Path(sys.argv[1]))
at_the_limit()
store.save({role: ([0], [np.zeros((1, 4), np.float32)]) for role in ("dnabert_s", "esm2")})
try:
    store.flush()
except VirnucproError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(int(exc.code))
"""

# one step of DNABERT-S's loading with `spare` files left below the limit on open files; what
# escapes is reported as the CLI reports it
LOAD_AT_THE_LIMIT = AT_THE_LIMIT + """
import sys
from pathlib import Path
import safetensors.torch, tokenizers, torch  # imported by the loader as it needs them: not past the limit
from virnucpro.encoders import dnabert_s
from virnucpro.errors import VirnucproError, process_limit

folder, step, spare = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
at_the_limit(spare)
try:
    if step == "encoder":
        dnabert_s.DnabertSEncoder(folder, torch.device("cpu"))
    elif step == "weights":
        dnabert_s._weights(folder)
    else:
        dnabert_s._tokenizer(folder, 1 << 20)
except VirnucproError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(int(exc.code))
except Exception as exc:
    limit = process_limit(exc)
    print(f"error: {limit}" if limit else f"unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(int(limit.code) if limit else 1)
"""

# `virnucpro ARGS` stopped (SIGTERM) the moment the temporary file of the HDF5 output exists
STOP_AT_THE_TEMPORARY = """
import os, signal
import virnucpro.h5shard
made = virnucpro.h5shard.new_temporary_file
def stopped_once_made(*args, **kwargs):
    fd, name = made(*args, **kwargs)
    if os.path.basename(name).startswith(".s.h5."):
        signal.raise_signal(signal.SIGTERM)
    return fd, name
virnucpro.h5shard.new_temporary_file = stopped_once_made
from virnucpro.entry import main
main()
"""


# `virnucpro ARGS` stopped (SIGTERM) as it starts loading the models, its checkpoint folder taken
STOP_AS_THE_MODELS_LOAD = """
import signal
import virnucpro.embed
load = virnucpro.embed._load_encoders
def stopped_as_loading(*args):
    signal.raise_signal(signal.SIGTERM)
    return load(*args)
virnucpro.embed._load_encoders = stopped_as_loading
from virnucpro.entry import main
main()
"""


def shard(prepared: Path, index: int = 0) -> Path:
    return prepared / "shards" / fmt.shard_name(index)


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text and "this is a bug" not in text, text


def _embed_args(prepared: Path, out: Path, models: Path) -> list[str]:
    return ["embed", str(shard(prepared)), "--models", str(models), "--out", str(out), "--device", "cpu",
            "--checkpoint-every", str(EVERY), "--threads", "1"]


@pytest.fixture(scope="module")
def kept_parts(tmp_path_factory, tiny_models, golden_prepared) -> Path:
    """The `s.h5.ckpt` folder of shard 0 embedded in windows of EVERY records, its parts kept and its
    output deleted, so that a run into a copy of it resumes from every part (read only: copy it)."""
    out = tmp_path_factory.mktemp("kept") / "s.h5"
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CheckpointStore, "remove", CheckpointStore.close)
        embed(shard(golden_prepared), out, models=tiny_models, device="cpu", checkpoint_every=EVERY, threads=1)
    torch.set_num_threads(threads)
    out.unlink()
    folder = out.with_name(out.name + ".ckpt")
    assert len(list(folder.glob("*/part_*.npz"))) > 2
    return folder


def _copied_parts(kept_parts: Path, tmp_path: Path) -> list[Path]:
    """The parts of a private copy of `kept_parts` beside `tmp_path/s.h5`, in the order they are read."""
    folder = Path(shutil.copytree(kept_parts, tmp_path / "s.h5.ckpt"))
    return sorted(folder.glob("*/part_*.npz"))


# ------------------------------------------------------------------ 1. parts that cannot be read are kept


def test_a_resume_at_the_open_files_limit_keeps_every_part_and_names_the_limit(tmp_path, kept_parts, golden_prepared,
                                                                             tiny_models):
    """Under `prlimit --nofile` during a resume every part failed to open and was deleted as
    "damaged" (228 parts became 41): hours of GPU work lost to a limit of the process."""
    parts = _copied_parts(kept_parts, tmp_path)
    _resume_keeps_every_part(parts, [sys.executable, "-c", LIMIT_AT_THE_FIRST_PART], ["ulimit -n"], tmp_path,
                             golden_prepared, tiny_models)
    assert not (tmp_path / "s.h5").exists()


def _resume_keeps_every_part(parts: list[Path], command: list[str], words: list[str], tmp_path: Path,
                             golden_prepared: Path, tiny_models: Path) -> None:
    """Resume an embed over `parts` (`command`: how it starts, a fault planted or a limit set): exit 10
    saying `words`, no traceback, and no part called damaged or deleted."""
    done = subprocess.run([*command, *_embed_args(golden_prepared, tmp_path / "s.h5", tiny_models)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == ExitCode.OUTPUT_WRITE, done.stderr[-3000:]
    assert all(word in done.stderr for word in words) and "damaged" not in done.stderr, done.stderr[-3000:]
    _no_traceback(done.stderr)
    assert all(part.is_file() for part in parts), "a part that could not be read was deleted"


def test_a_part_without_read_permission_is_kept_and_named(tmp_path, kept_parts, golden_prepared, tiny_models):
    """A part of mode 000 was "damaged (not a readable .npz archive: PermissionError ...)" and deleted."""
    prefix = unprivileged()
    parts = _copied_parts(kept_parts, tmp_path)
    parts[1].chmod(0)
    _resume_keeps_every_part(parts, [*prefix, *CLI], [f"cannot read checkpoint part {parts[1]}: permission denied",
                                                      "chmod u+r"], tmp_path, golden_prepared, tiny_models)


FAILING_OPEN_OF_PARTS = """
import builtins, errno, io, os, sys
real, code = builtins.open, getattr(errno, sys.argv.pop(1))
def failing(file, *args, **kwargs):
    if isinstance(file, (str, os.PathLike)) and os.path.basename(os.fspath(file)).startswith("part_"):
        raise OSError(code, "injected", os.fspath(file))
    return real(file, *args, **kwargs)
builtins.open = io.open = failing  # zipfile opens through io.open
from virnucpro.entry import main
main()
"""


@pytest.mark.parametrize("code", ["EINVAL", "EOVERFLOW"])
def test_a_part_whose_read_fails_with_any_system_error_is_kept(tmp_path, kept_parts, golden_prepared, tiny_models,
                                                               code):
    """Only a listed set of errors kept the part: any other failed read (an errno that list lacked) had it
    deleted as "damaged", its vectors computed again."""
    parts = _copied_parts(kept_parts, tmp_path)
    _resume_keeps_every_part(parts, [sys.executable, "-c", FAILING_OPEN_OF_PARTS, code], ["cannot read checkpoint part"],
                             tmp_path, golden_prepared, tiny_models)


FAILING_ZIP_END_OF_PARTS = """
import builtins, errno, io, os, sys
sys.path.insert(0, TESTS_DIR)
from fault_helpers import ReadsFailPast
class FailingEnd(ReadsFailPast):
    def read(self, size=-1):  # only zipfile's small read of the end record, not the hash's whole-file reads
        if 0 <= size <= 1024 and self.handle.tell() >= self.good:
            raise OSError(errno.EIO, "injected")
        return self.handle.read(size)
real = builtins.open
def opened(file, mode="r", *args, **kwargs):
    handle = real(file, mode, *args, **kwargs)
    named = isinstance(file, (str, os.PathLike)) and os.path.basename(os.fspath(file)).startswith("part_")
    return FailingEnd(handle, os.fstat(handle.fileno()).st_size - 1024) if named else handle
builtins.open = io.open = opened
from virnucpro.entry import main
main()
""".replace("TESTS_DIR", repr(str(Path(__file__).parent)))


def test_a_part_whose_zip_end_the_storage_fails_to_read_is_kept(tmp_path, kept_parts, golden_prepared, tiny_models):
    """zipfile calls a failed read of an archive's end "File is not a zip file": the part was deleted as
    damaged, its vectors computed again."""
    parts = _copied_parts(kept_parts, tmp_path)
    _resume_keeps_every_part(parts, [sys.executable, "-c", FAILING_ZIP_END_OF_PARTS], ["cannot read checkpoint part"],
                             tmp_path, golden_prepared, tiny_models)


# ------------------------------------------------------------------ 2. the checkpoint writer at the limit


def test_a_part_written_at_the_open_files_limit_names_the_limit(tmp_path):
    """It said "fix: free space, fix the permissions or choose another output location"."""
    done = subprocess.run([sys.executable, "-c", WRITE_AT_THE_LIMIT, str(tmp_path / "ckpt" / ("0" * 64))],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == ExitCode.OUTPUT_WRITE, done.stderr[-3000:]
    assert "cannot write checkpoint part" in done.stderr and "ulimit -n" in done.stderr, done.stderr
    assert "free space" not in done.stderr and "permissions" not in done.stderr, done.stderr
    assert not list((tmp_path / "ckpt").rglob("*.npz")), "the part cut short was left"


# ------------------------------------------------------------------ 3. DNABERT-S loaded at the limit


@pytest.mark.parametrize("step, spare", [("encoder", 0), ("encoder", 1), ("weights", 0), ("tokenizer", 0)])
def test_dnabert_s_loaded_at_the_open_files_limit_names_the_limit_not_the_models(tiny_models, step, spare):
    """config.json, the weights (safetensors: "No such file or directory" when its own open fails;
    torch's mapping: RuntimeError "... Too many open files (24)") and the tokenizer ("Too many open
    files (os error 24)") read past the limit were exit 4, "fix: put it right with virnucpro models tiny"."""
    folder = next(path for path in tiny_models.iterdir() if path.is_dir() and path.name.startswith("DNABERT-S"))
    done = subprocess.run([sys.executable, "-c", LOAD_AT_THE_LIMIT, str(folder), step, str(spare)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == ExitCode.OUTPUT_WRITE, done.stderr[-3000:]
    assert "ulimit -n" in done.stderr and "models tiny" not in done.stderr, done.stderr[-3000:]


@pytest.mark.parametrize("files", [5, 6, 7, 8])
def test_embed_under_a_real_limit_on_open_files_says_so(tmp_path, small_sample, tiny_models, files):
    """`ulimit -n 6` made embed blame the DNABERT-S weights (exit 4, "corrupt, truncated ... models tiny")."""
    prepared, _ = small_sample

    def limited():
        resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))

    done = subprocess.run([*CLI, "embed", str(shard(prepared)), "--models", str(tiny_models), "--out",
                           str(tmp_path / "t" / "x.h5"), "--device", "cpu"], capture_output=True, text=True,
                          timeout=300, preexec_fn=limited)
    assert done.returncode in (0, ExitCode.OUTPUT_WRITE), done.stderr[-3000:]
    if done.returncode:
        assert "ulimit -n" in done.stderr and "models tiny" not in done.stderr, done.stderr
        _no_traceback(done.stderr)


# ------------------------------------------------------------------ 4. a stop as the HDF5 file is created


def test_a_stop_as_the_temporary_file_is_created_leaves_nothing(tmp_path, golden_prepared, tiny_models):
    """A SIGTERM right after the temporary `.s.h5.XXXXXXXX.tmp` was created (before the write's clean-up
    was armed) left it for good: the lock that named it was removed with the command."""
    out = tmp_path / "s.h5"
    done = subprocess.run([sys.executable, "-c", STOP_AT_THE_TEMPORARY,
                           *_embed_args(golden_prepared, out, tiny_models)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == ExitCode.INTERRUPTED, done.stderr[-3000:]
    assert "SIGTERM" in done.stderr, done.stderr[-3000:]
    assert not list(tmp_path.glob(".s.h5.*")), "the temporary file of the stopped write was left"
    assert not out.exists()


@pytest.mark.parametrize("own_folder", [False, True], ids=["default", "checkpoint-dir"])
def test_a_stop_before_the_first_part_leaves_no_checkpoint_folder(tmp_path, golden_prepared, tiny_models, own_folder):
    """Stopped while the models load, embed left an empty `s.h5.ckpt/<key>` (its lock file only):
    nothing to resume from. A --checkpoint-dir the user named stays, emptied of what embed made."""
    out = tmp_path / "s.h5"
    given = ["--checkpoint-dir", str(tmp_path / "mine")] if own_folder else []
    done = subprocess.run([sys.executable, "-c", STOP_AS_THE_MODELS_LOAD,
                           *_embed_args(golden_prepared, out, tiny_models), *given],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == ExitCode.INTERRUPTED, done.stderr[-3000:]
    assert sorted(path.name for path in tmp_path.iterdir()) == (["mine"] if own_folder else [])
    if own_folder:
        assert not list((tmp_path / "mine").iterdir())


def _predict_with_a_closed_shard(tmp_path, small_sample, tiny_models, closed: str, owner: int | None = None):
    """(predict's result, the shard, its folder) for a shard whose file or folder (`closed`) has mode
    000 (and belongs to `owner` when given), run without root's permission bypass."""
    prefix = unprivileged()
    prepared, embedded = small_sample
    folder = tmp_path / "emb"
    folder.mkdir()
    h5 = Path(shutil.copy(embedded, folder / "s.h5"))
    closed_path = h5 if closed == "file" else folder
    if owner is not None:
        os.chown(closed_path, owner, owner)
    closed_path.chmod(0)
    try:
        done = subprocess.run([*prefix, *CLI, "predict", "--prepared", str(prepared), "--embeddings", str(h5),
                               "--outdir", str(tmp_path / "out"), "--models", str(tiny_models)],
                              capture_output=True, text=True, timeout=300)
    finally:
        closed_path.chmod(0o755)
    return done, h5, folder


@pytest.mark.parametrize("closed", ["file", "folder"])
def test_a_permission_hint_for_another_users_file_names_its_owner_not_chmod_u(tmp_path, small_sample, tiny_models,
                                                                            closed):
    """A container reviewer's case: a models folder or shard of another user was "make it readable
    (chmod u+r)", which only its owner can run; the hint names the owner and what they can run."""
    done, h5, folder = _predict_with_a_closed_shard(tmp_path, small_sample, tiny_models, closed, owner=54321)
    closed_path = h5 if closed == "file" else folder
    assert done.returncode == ExitCode.BAD_INPUT, done.stderr[-3000:]
    rights = "r" if closed == "file" else "rx"
    assert "belongs to uid 54321" in done.stderr and f"chmod o+{rights} {closed_path}" in done.stderr, done.stderr
    assert "chmod u+" not in done.stderr, done.stderr
    _no_traceback(done.stderr)


# ------------------------------------------------------------------ 5. an embedding file in a closed folder


def test_an_embedding_file_in_a_folder_that_cannot_be_entered_is_exit_3_naming_the_folder(tmp_path, small_sample,
                                                                                        tiny_models):
    """Path.is_dir() raised PermissionError outside the reader's guard: "cannot write ...", exit 10."""
    done, h5, folder = _predict_with_a_closed_shard(tmp_path, small_sample, tiny_models, "folder")
    assert done.returncode == ExitCode.BAD_INPUT, done.stderr[-3000:]
    assert f"cannot read embedding shard {h5}: permission denied on its folder {folder}" in done.stderr, done.stderr
    assert "chmod u+rx" in done.stderr and "cannot write" not in done.stderr, done.stderr
    _no_traceback(done.stderr)


@pytest.mark.parametrize("text, code", [("Too many open files in system (os error 23)", errno.ENFILE),
                                        ("Too many open files (os error 24)", errno.EMFILE),
                                        ("No such file or directory", None)])
def test_a_librarys_words_for_the_system_wide_limit_are_not_taken_for_the_process_limit(text, code):
    """A reviewer's case: "... in system" (the kernel's file table: fs.file-max) holds the words of
    the process limit (`ulimit -n`), and was named as that."""
    from virnucpro.errors import open_files_limit_in_text

    assert open_files_limit_in_text(text) == code


def test_a_shard_without_read_permission_names_who_may_read_it(tmp_path, golden_prepared, tiny_models):
    """A reviewer's case: a shard copied as another user was "cannot read shard ...: Permission denied,
    fix: check the path"; the path was right. As predict says it: the mode, and who can change it."""
    prefix = unprivileged()
    prepared = Path(shutil.copytree(golden_prepared, tmp_path / "prepared"))
    shard = prepared / fmt.load_manifest(prepared)["shards"][0]["file"]
    shard.chmod(0)
    done = subprocess.run([*prefix, *CLI, "embed", str(shard), "--models", str(tiny_models), "--out",
                           str(tmp_path / "s.h5"), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert done.returncode == ExitCode.BAD_INPUT, done.stderr[-3000:]
    assert f"cannot read shard {shard}: permission denied" in done.stderr and "chmod u+r" in done.stderr, done.stderr
    assert "check the path" not in done.stderr
    _no_traceback(done.stderr)


@pytest.mark.parametrize("command", ["prepare", "embed"])
def test_a_file_that_cannot_be_opened_is_named_with_the_fault_and_its_fix(tmp_path, golden_prepared, tiny_models,
                                                                          command):
    """A reviewer's cases: one hint for every reason ("check the path", "check the file permissions")
    was wrong for most: a file in a folder that cannot be entered, a dangling link, a file on the way."""
    source = golden_prepared / fmt.load_manifest(golden_prepared)["shards"][0]["file"]
    closed = tmp_path / "closed"
    closed.mkdir()
    shutil.copy(source, closed / "s.tsv")
    (tmp_path / "dangling.tsv").symlink_to(tmp_path / "gone.tsv")
    (tmp_path / "plain").write_text("x")
    what = "input file" if command == "prepare" else "shard"

    def refusal(path: Path, *prefix: str) -> str:
        args = [command, str(path), *(["--outdir", str(tmp_path / "o")] if command == "prepare" else
                                      ["--models", str(tiny_models), "--out", str(tmp_path / "s.h5")])]
        done = subprocess.run([*prefix, *CLI, *args], capture_output=True, text=True, timeout=300)
        assert done.returncode == ExitCode.BAD_INPUT, done.stderr[-3000:]
        _no_traceback(done.stderr)
        return done.stderr

    said = refusal(tmp_path / "dangling.tsv")
    assert f"{what} {tmp_path / 'dangling.tsv'} is a symbolic link to a missing path ({tmp_path / 'gone.tsv'})" in said
    said = refusal(tmp_path / "plain" / "s.tsv")
    assert "a part of its path is a file, not a folder" in said and "permission" not in said, said
    closed.chmod(0o700)
    os.chown(closed, 65534, 65534)
    said = refusal(closed / "s.tsv", *unprivileged())
    assert f"permission denied on its folder {closed}" in said and "chmod" in said and "check the" not in said, said


def test_a_failed_write_of_the_checkpoint_identity_names_that_file_and_leaves_none(tmp_path, monkeypatch):
    """A full disk while the folder's identity was written said "cannot write checkpoint part .part_…tmp",
    a file never begun; the identity's temporary file stayed."""
    import errno

    import numpy as np

    from virnucpro import embed
    from virnucpro.errors import OutputWriteError

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    folder = tmp_path / "ckpt" / ("0" * 64)
    store = embed.CheckpointStore(folder, identity={"key": "k"})
    monkeypatch.setattr(embed.json, "dump", full)
    store.save({role: ([0], [np.zeros((1, 4), np.float32)]) for role in embed.ROLES})
    with pytest.raises(OutputWriteError) as failed:
        store.flush()
    assert f"cannot write checkpoint identity file {folder}/.identity." in str(failed.value), failed.value
    assert "the disk is full" in str(failed.value) and not list(folder.glob(".*.tmp*")), failed.value
