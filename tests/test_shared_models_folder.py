"""A models folder shared by a group on a cluster: what one member's fp16 run writes there keeps the
folder usable by the others (modes taken from the files replaced or derived from, never the writer's
umask), a sticky folder never gets a copy it cannot record, and one process hashes a big unchanged
file once even when the hash cache cannot be saved.

Tests that need another user fork a child that drops to `nobody` (root only; skipped elsewhere):
everything the child runs is imported first, since the venv's python lives under a folder other
users cannot read."""

from __future__ import annotations

import ast
import contextlib
import io
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pytest
import torch

from store_fixtures import ESM2_COPY as COPY, ESM2_WEIGHTS as WEIGHTS, fresh_model_process_state  # noqa: F401
from virnucpro.encoders import esm2
from virnucpro.encoders.esm2 import Esm2Encoder
from virnucpro.models import store

CPU = torch.device("cpu")


@pytest.fixture
def umask():
    """Set the process umask for the test (the writer's own), restored afterwards."""
    before = os.umask(0o022)
    os.umask(before)
    yield os.umask
    os.umask(before)


def _modes(folder: Path, mode: int) -> None:
    """Every file of the folder (subfolders too) at `mode`; the folders searchable by all."""
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else mode)


@pytest.fixture
def shared(tiny_models) -> Path:
    """A copy of the tiny models in a folder every user can reach (not under pytest's 0700 tmp)."""
    base = Path(tempfile.mkdtemp(prefix="virnucpro-shared-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        shutil.copytree(tiny_models, base / "models")
        _modes(base / "models", 0o664)
        yield base / "models"
    finally:
        shutil.rmtree(base)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _nobody() -> pwd.struct_passwd:
    """The `nobody` user, or a skip where this test cannot become another user."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user `nobody` here")


def as_nobody(function):
    """Run `function()` in a forked child as `nobody`; (its result's repr, or "EXC <traceback>", and
    the fp16 notes it said). The child writes no pytest state: it leaves with os._exit."""
    user = _nobody()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        try:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            answer = repr(function())
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, never raised in the child
            answer = "EXC " + "".join(traceback.format_exception(exc))
        os.write(write, "\0".join([answer, *sorted(esm2._told)]).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as handle:
        text = handle.read().decode()
    os.waitpid(pid, 0)
    answer, *told = text.split("\0")
    return answer, told


def _load_fp16(models: Path):
    """What an fp16 embed does first: the encoder, from the copy when it can."""
    return Esm2Encoder(models / WEIGHTS, CPU, torch.float16).loaded_from


# --- 1. a member with umask 077 ---------------------------------------------------------------------

def test_fp16_run_under_umask_077_keeps_the_group_folders_modes(shared, umask):
    os.chmod(shared, 0o2775)
    umask(0o077)
    assert _load_fp16(shared) == shared / COPY
    assert _mode(shared / store.MANIFEST) == 0o664
    assert _mode(shared / COPY) == 0o664  # the .pt's
    assert _mode(shared / store.HASH_CACHE) == 0o664  # the manifest's


def test_modes_are_never_wider_than_the_files_they_come_from(shared, umask):
    os.chmod(shared / WEIGHTS, 0o640)
    os.chmod(shared / store.MANIFEST, 0o644)
    umask(0o000)
    assert _load_fp16(shared) == shared / COPY
    assert _mode(shared / COPY) == 0o640
    assert _mode(shared / store.MANIFEST) == 0o644
    assert _mode(shared / store.HASH_CACHE) == 0o644


def test_a_new_manifest_takes_the_umask(tmp_path, umask):
    umask(0o027)
    store.write_manifest(tmp_path, {"models": {}})
    assert _mode(tmp_path / store.MANIFEST) == 0o640


def test_other_users_use_the_folder_after_a_umask_077_members_fp16_run(shared, umask):
    _nobody()
    os.chmod(shared, 0o2775)
    umask(0o077)
    _load_fp16(shared)
    Esm2Encoder(shared / WEIGHTS, CPU, torch.float32)  # everything the child loads, imported here
    answer, told = as_nobody(lambda: (store.locate(shared).esm2.name, _load_fp16(shared).name))
    assert answer == repr((WEIGHTS, COPY)) and told == []


def test_a_copy_this_user_cannot_read_loads_the_pt_with_one_message(shared):
    _nobody()
    _load_fp16(shared)  # the copy, recorded
    os.chmod(shared / COPY, 0o600)  # another member's, from before modes were kept
    Esm2Encoder(shared / WEIGHTS, CPU, torch.float32)
    answer, told = as_nobody(lambda: [_load_fp16(shared).name for _ in range(2)])
    assert answer == repr([WEIGHTS, WEIGHTS]), answer
    assert len(told) == 1 and "cannot be read by this user" in told[0] and str(shared / COPY) in told[0]
    assert _mode(shared / COPY) == 0o600  # another user's file: left as it is


# --- 2. a sticky group folder ------------------------------------------------------------------------

def test_sticky_folder_with_another_users_manifest_writes_no_copy_and_says_why_once(shared):
    _nobody()
    os.chmod(shared, 0o1777)  # root's manifest: nobody may not rename over it
    Esm2Encoder(shared / WEIGHTS, CPU, torch.float32)
    written = []

    def twice():
        import safetensors.torch

        save = safetensors.torch.save_file
        safetensors.torch.save_file = lambda *a, **k: (written.append(a[1]), save(*a, **k))
        first = _load_fp16(shared).name
        esm2._told.clear()
        return first, _load_fp16(shared).name, written

    answer, told = as_nobody(twice)
    assert answer == repr((WEIGHTS, WEIGHTS, [])), answer  # no copy even started
    assert len(told) == 1 and "sticky" in told[0] and str(shared / store.MANIFEST) in told[0], told
    assert "in the way" not in told[0]
    assert sorted(p.name for p in shared.iterdir() if "fp16" in p.name) == []


def test_copy_not_recorded_is_removed_and_the_next_run_writes_it(shared, monkeypatch):
    def refused(*_args):
        raise PermissionError(1, "Operation not permitted", str(shared / store.MANIFEST))

    monkeypatch.setattr(store, "record_fp16_copy", refused)
    assert _load_fp16(shared) == shared / WEIGHTS
    assert not (shared / COPY).exists() and not [p for p in shared.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    esm2._told.clear()
    assert _load_fp16(shared) == shared / COPY


def test_copy_left_unrecorded_by_a_changed_manifest_is_removed(shared, monkeypatch):
    monkeypatch.setattr(store, "record_fp16_copy", lambda *_args: False)
    assert _load_fp16(shared) == shared / WEIGHTS
    assert not (shared / COPY).exists()
    assert any("changed while" in note for note in esm2._told), esm2._told


def test_a_file_in_the_way_before_the_copy_is_left_as_it_is(shared):
    (shared / COPY).write_bytes(b"my own file\n")
    assert _load_fp16(shared) == shared / WEIGHTS
    assert (shared / COPY).read_bytes() == b"my own file\n"


@pytest.mark.parametrize("record", ["changed manifest", "failed write"])
def test_failed_record_never_removes_a_file_put_in_the_copys_place_meanwhile(shared, monkeypatch, record):
    """The user's file replaces the copy while the manifest is written: the record fails, and what is
    at the copy's name is no longer ours, so it stays."""
    def user_file_then_failure(*_args):
        mine = shared / "mine.tmp-user"
        mine.write_bytes(b"my own file\n")
        os.replace(mine, shared / COPY)
        if record == "failed write":
            raise PermissionError(1, "Operation not permitted", str(shared / store.MANIFEST))
        return False

    monkeypatch.setattr(store, "record_fp16_copy", user_file_then_failure)
    assert _load_fp16(shared) == shared / WEIGHTS
    assert (shared / COPY).read_bytes() == b"my own file\n"


# --- 3. one process hashes a big unchanged file once -------------------------------------------------

@pytest.fixture
def counted_hashes(monkeypatch):
    """Every file of 1 byte or more counts as big (cached); {path: times hashed}, by either way of
    hashing a file (`sha256_file`, and `hashed_as_it_is` for what is cached)."""
    monkeypatch.setattr(store, "_CACHE_MIN_BYTES", 1)
    counts: dict[str, int] = {}

    def counted(real):
        def counting(path, git_sha1=False):
            counts[str(path)] = counts.get(str(path), 0) + 1
            return real(path, git_sha1=git_sha1)
        return counting

    monkeypatch.setattr(store, "sha256_file", counted(store.sha256_file))
    monkeypatch.setattr(store, "hashed_as_it_is", counted(store.hashed_as_it_is))
    return counts


def test_one_process_hashes_each_unchanged_file_once_when_the_cache_cannot_be_saved(shared, counted_hashes):
    (shared / store.HASH_CACHE).mkdir()  # nothing can be saved at the cache's name (as root, too)
    for _ in range(2):
        store.scan(shared, store.ROLES)  # run: will_download, then ensure
    store.locate(shared)
    _load_fp16(shared)  # the copy's checks hash the .pt too
    weights = str(shared / WEIGHTS)
    assert counted_hashes[weights] == 1, counted_hashes
    assert max(counted_hashes.values()) == 1, counted_hashes


def test_a_changed_file_and_models_check_are_hashed_again(shared, counted_hashes):
    store.scan(shared, ["classifier_300"])
    store.check(shared)  # ignores every cache
    path = shared / "300_model_tiny.pth"
    assert counted_hashes[str(path)] == 2
    path.write_bytes(path.read_bytes())  # same bytes, a new ctime
    store.scan(shared, ["classifier_300"])
    assert counted_hashes[str(path)] == 3


def test_models_check_after_a_chmod_caches_the_fp16_copy_for_the_runs_too(shared, counted_hashes, capsys):
    _load_fp16(shared)  # staged: the .pt, the copy and their hashes
    time.sleep(0.05)  # a later ctime than the cached one, even on a coarse clock
    _modes(shared, 0o664)  # the staging's chmod: every cached entry is stale now
    store.check(shared)
    assert "fp16 copy esm2_tiny.fp16.safetensors: verified" in capsys.readouterr().err
    store.remembered_hashes.clear()  # a run: another process
    counted_hashes.clear()
    (shared / store.HASH_CACHE).chmod(0o444)
    assert _load_fp16(shared) == shared / COPY
    assert counted_hashes == {}


def test_staging_doc_makes_files_readable_before_models_check_records_their_hashes():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "models.md").read_text()
    staging = doc.split("## Staging the models on a cluster", 1)[1].split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in staging.splitlines() if line.strip()]
    chmod = next(i for i, line in enumerate(commands) if line.startswith("chmod -R"))
    check = next(i for i, line in enumerate(commands) if re.match(r"virnucpro models check\b", line))
    assert chmod < check


def test_a_lock_file_made_under_umask_077_can_be_locked_by_the_other_members(shared, umask):
    """A lock file left by a member under umask 077 was 0600: every other member's command in the
    shared folder failed to open it (permission denied), though the folder let them in."""
    from virnucpro.outdir import LOCK_NAME, folder_lock

    folder = shared.parent / "group-folder"
    folder.mkdir()
    folder.chmod(0o777)
    umask(0o077)
    with folder_lock(folder, "the shared folder"):
        pass
    assert (folder / LOCK_NAME).exists() and _mode(folder / LOCK_NAME) == 0o644

    def lock_as_another_user():
        with folder_lock(folder, "the shared folder"):
            return "locked"

    answer, _ = as_nobody(lock_as_another_user)
    assert answer == "'locked'", answer


# --- 4. a folder writable through its group, and another user's killed writer ------------------------

#: A writer of the fp16 copy (as `write_fp16_copy` writes it), killed while its scratch folder holds
#: its temporary file and safetensors' own: what it leaves in the models folder `sys.argv[1]`.
KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from virnucpro.models import store
folder = Path(sys.argv[1])
target = folder / sys.argv[2]
with store.scratch_folder(target) as scratch, store.replaced_like(target, [folder / sys.argv[3]], within=scratch) as tmp:
    tmp.write_bytes(b"x" * 1000)
    (scratch / ".tmpAbC123").write_bytes(b"y" * 1000)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_writer(models: Path) -> Path:
    """The scratch folder a real writer of the copy (this user's process), killed mid-write, left."""
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(models), COPY, WEIGHTS], capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    [leftover] = _leftovers(models)
    return leftover


def _leftovers(models: Path) -> list[Path]:
    """The temporary files and scratch folders of the copy in the models folder."""
    return sorted(path for path in models.iterdir() if path.name.startswith(f".{COPY}.") and path.name.endswith(".tmp"))


def with_stderr(function):
    """`function` that also returns what was said on stderr meanwhile (for `as_nobody`)."""
    def said():
        buffer = io.StringIO()
        with contextlib.redirect_stderr(buffer):
            result = function()
        return result, buffer.getvalue()
    return said


def test_a_member_writes_the_copy_in_a_folder_writable_only_through_its_group(shared):
    user = _nobody()
    os.chown(shared, 0, user.pw_gid)
    os.chmod(shared, 0o575)  # root's folder: its owner has r-x, the group (nobody's) rwx
    Esm2Encoder(shared / WEIGHTS, CPU, torch.float32)
    answer, told = as_nobody(lambda: _load_fp16(shared).name)
    assert answer == repr(COPY) and told == [], (answer, told)
    assert _leftovers(shared) == []


@pytest.mark.parametrize("mode, loaded", [(0o1777, WEIGHTS), (0o775, COPY)], ids=["sticky", "group"])
def test_another_users_leftover_this_user_cannot_remove_is_named_once(shared, mode, loaded):
    """Root's killed writer left its scratch folder; nobody may read it but not empty it (a sticky
    folder; a group folder without setgid, where the scratch folder has root's group)."""
    user = _nobody()
    os.chown(shared, 0, user.pw_gid)
    os.chmod(shared, mode)
    leftover = _killed_writer(shared)
    Esm2Encoder(shared / WEIGHTS, CPU, torch.float32)
    answer, _told = as_nobody(with_stderr(lambda: [_load_fp16(shared).name for _ in range(2)]))
    names, said = ast.literal_eval(answer)
    assert names == [loaded, loaded], answer
    named = [line for line in said.splitlines() if str(leftover) in line]
    assert len(named) == 1 and "user root" in named[0] and "rm -r" in named[0], said
    assert leftover.is_dir()  # root's: left as it is


def test_this_users_own_leftover_is_removed_by_the_next_write(shared):
    os.chmod(shared, 0o1777)
    _killed_writer(shared)
    assert _load_fp16(shared) == shared / COPY
    assert _leftovers(shared) == []


# --- 5. hints for a folder of tiny test models -------------------------------------------------------

def _followed(hint: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run (as root, who may write the folder) the last command quoted in `hint`, its FASTA and OUT
    placeholders filled in."""
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\n" + "ATGAAACCCGGGTTTTAA" * 40 + "\n")
    words = shlex.split(re.findall(r"`([^`]+)`", hint)[-1])
    assert words[0] == "virnucpro", hint
    filled = [{"FASTA": str(fasta), "OUT": str(tmp_path / "out")}.get(word, word) for word in words[1:]]
    return subprocess.run([sys.executable, "-m", "virnucpro", *filled, "--threads", "1"], capture_output=True,
                          text=True)


@pytest.mark.parametrize("mode", [0o755, 0o1777], ids=["read-only", "sticky"])
def test_the_fp16_hint_for_tiny_models_writes_the_copy_when_followed(shared, mode, tmp_path):
    """`models download` refuses a folder of tiny test models (exit 2), and `models tiny` writes
    no copy: the hint names an fp16 run, which does."""
    _nobody()
    os.chmod(shared, mode)  # root's folder (nobody may not write it) / root's manifest in a sticky one
    Esm2Encoder(shared / WEIGHTS, CPU, torch.float32)
    answer, told = as_nobody(lambda: _load_fp16(shared).name)
    assert answer == repr(WEIGHTS) and len(told) == 1, (answer, told)
    assert "models download" not in told[0] and str(shared) in told[0], told
    done = _followed(told[0], tmp_path)
    assert done.returncode == 0, done.stderr
    esm2._told.clear()
    answer, told = as_nobody(lambda: _load_fp16(shared).name)
    assert answer == repr(COPY) and told == [], (answer, told)
