"""The helpers other modules share with `virnucpro.outdir` (who holds a folder, the kind of an output,
creating an output folder, atomic writes), and the limits and usage errors the models store shares
with `virnucpro.errors`."""

from __future__ import annotations

import errno
import json
import os
import pwd
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
from store_fixtures import folder_held_by_another_process

from virnucpro import outdir as od
from virnucpro.errors import PATH_MAX_DEFAULT, BadInputError, ModelsError, OutputWriteError, UsageError
from virnucpro.models import download, store


def _no_flock(monkeypatch) -> None:
    """A file system without flock (some NFS mounts): the fallback lock file tells."""
    def no_flock(_fd, _operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(od.fcntl, "flock", no_flock)


# ------------------------------------------------------------------ lock_holder

def test_lock_holder_names_the_process_holding_the_folder_and_none_when_free(tmp_path):
    folder = tmp_path / "m"
    assert od.lock_holder(folder) is None  # no folder at all
    with folder_held_by_another_process(folder) as pid:
        assert f"pid {pid} of {pwd.getpwuid(os.geteuid()).pw_name} on {socket.gethostname()}" in od.lock_holder(folder)
    assert od.lock_holder(folder) is None  # released: the lock file stays, unheld


def test_lock_holder_without_flock_reads_a_live_fallback_lock(tmp_path, monkeypatch):
    _no_flock(monkeypatch)
    folder = tmp_path / "nfs"
    with od.folder_lock(folder, "models folder"):
        assert f"pid {os.getpid()}" in od.lock_holder(folder)
    assert od.lock_holder(folder) is None


def test_lock_holder_never_reads_a_fallback_lock_through_a_link(tmp_path, monkeypatch):
    """A link at the fallback lock's name is no lock of ours: its target is not read (it named a
    forged holder, read whole, before)."""
    _no_flock(monkeypatch)
    folder = tmp_path / "m"
    folder.mkdir()
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({**od._holder(), "host": "forged-host"}))
    (folder / od.FALLBACK_LOCK_NAME).symlink_to(forged)
    assert od.lock_holder(folder) is None


# ------------------------------------------------------------------ marker_kind

def test_marker_kind_reads_the_kind_of_an_output_folder(tmp_path):
    assert od.marker_kind(tmp_path) is None
    (tmp_path / od.MARKER_NAME).write_text(json.dumps({"kind": "predict", "files": {}}))
    assert od.marker_kind(tmp_path) == "predict"
    (tmp_path / od.MARKER_NAME).write_text("{cut short")
    assert od.marker_kind(tmp_path) == od.DAMAGED


def test_a_marker_larger_than_any_of_ours_is_damaged_and_never_read_whole(tmp_path, monkeypatch):
    """A marker names the files of one folder: one past MARKER_LIMIT is not ours, however valid its
    JSON, and reading it must not take memory in proportion to it."""
    marker = json.dumps({"kind": "predict", "files": {"a" * 200: 1}})
    (tmp_path / od.MARKER_NAME).write_text(marker)
    monkeypatch.setattr(od, "MARKER_LIMIT", len(marker) - 1)
    assert od.marker_kind(tmp_path) == od.DAMAGED
    monkeypatch.setattr(od, "MARKER_LIMIT", len(marker))
    assert od.marker_kind(tmp_path) == "predict"


@pytest.mark.parametrize("marker, said", [('{"kind": "run", "files": {}}', "`virnucpro run`"),
                                          ("[1, 2]", "a virnucpro command")])
def test_a_models_folder_that_is_a_command_output_says_which(tmp_path, marker, said):
    (tmp_path / od.MARKER_NAME).write_text(marker)
    with pytest.raises(ModelsError, match=f"{tmp_path} is the output of {said}, not a models folder"):
        store.read_manifest(tmp_path)


# ------------------------------------------------------------------ make_folder

def test_make_folder_creates_parents_and_refuses_a_file_in_the_way(tmp_path):
    od.make_folder(tmp_path / "a" / "b", "--outdir")
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInputError, match="--outdir .* is a file"):
        od.make_folder(tmp_path / "file", "--outdir")
    with pytest.raises(BadInputError, match="cannot create --outdir .*: .*file on its way is a file, not a folder") as refused:
        od.make_folder(tmp_path / "file" / "sub", "--outdir")
    assert refused.value.hint == "choose another path"


def test_embed_out_in_a_folder_that_cannot_be_created_is_a_storage_failure(small_sample, tmp_path, monkeypatch):
    """The directory of `embed --out` is made as every output folder is: permission denied (a
    read-only file system, a full disk) is exit 10 as for --outdir (it was exit 3 for embed only)."""
    from virnucpro import prepared as fmt
    from virnucpro.embed import embed

    blocked = tmp_path / "locked" / "sub"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == blocked and self.parent.is_dir():  # its parent is made first, then it is refused
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(OutputWriteError, match=f"cannot write {blocked}: permission denied"):
        embed(small_sample[0] / "shards" / fmt.shard_name(0), blocked / "x.h5", device="cpu")
    assert not (tmp_path / "locked").exists()  # the folders it made are taken back


# ------------------------------------------------------------------ write_atomically

def test_write_atomically_writes_synced_bytes_with_the_mode_of_a_new_file(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    old = os.umask(0o027)
    try:
        od.write_atomically(tmp_path / "f.json", b"first")
        od.write_atomically(tmp_path / "f.json", b"second")
    finally:
        os.umask(old)
    assert (tmp_path / "f.json").read_bytes() == b"second"
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o640
    assert len(synced) == 4  # the file, then the folder holding the rename, each time
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_write_atomically_replaces_a_link_never_writing_through_it(tmp_path):
    target = tmp_path / "theirs"
    target.write_text("theirs")
    (tmp_path / "link").symlink_to(target)
    od.write_atomically(tmp_path / "link", b"ours")
    assert target.read_text() == "theirs" and not (tmp_path / "link").is_symlink()
    assert (tmp_path / "link").read_bytes() == b"ours"


def test_write_atomically_leaves_nothing_when_it_fails(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(OSError):
        od.write_atomically(tmp_path / "folder", b"data")  # a folder cannot be replaced by a file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


# ------------------------------------------------------------------ the models store's limits and usage errors

def _manifest_naming(directory: Path, rel: str) -> None:
    directory.mkdir()
    entry = {"files": [rel], "sha256": {}}
    (directory / store.MANIFEST).write_text(json.dumps({"format_version": 1, "models": {"esm2": entry}}))


def test_a_manifest_path_of_path_max_bytes_is_too_long(tmp_path):
    """PATH_MAX counts the final NUL: a path of 4096 bytes is refused by the kernel."""
    longest = ("d" * 200 + "/") * 20 + "x" * (PATH_MAX_DEFAULT - 1 - 201 * 20)
    assert len(longest) == PATH_MAX_DEFAULT - 1
    _manifest_naming(tmp_path / "fits", longest)
    assert store.read_manifest(tmp_path / "fits")["models"]["esm2"]["files"] == [longest]
    _manifest_naming(tmp_path / "long", longest + "x")
    with pytest.raises(ModelsError, match="too long for a file name"):
        store.read_manifest(tmp_path / "long")


def test_models_usage_errors_are_usage_errors(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="unknown model"):
        download.download(tmp_path, only="nope")
    with pytest.raises(UsageError, match="--mirror"):
        download.check_mirror("ftp://example.org")
    monkeypatch.setenv("HOME", "relative")
    with pytest.raises(UsageError, match="cannot be determined"):
        store.models_dir("~/models")
    assert not hasattr(store, "ModelsUsageError")


# ------------------------------------------------------------------ fresh_work_folder

def test_fresh_work_folder_clears_our_leftovers_and_refuses_strays_links_and_a_late_arrival(tmp_path, monkeypatch):
    """The staging folder of prepare and predict: ours is emptied and made again; anything else at
    its name, or in it, is refused (exit 3) and left as it is; one made meanwhile is not taken over."""
    import re

    ours = re.compile(r"part\.tmp")
    folder = tmp_path / ".staging"
    folder.mkdir()
    (folder / "part.tmp").write_text("left by a killed command")
    assert od.fresh_work_folder(folder, ours, "the staging folder") == folder and list(folder.iterdir()) == []
    (folder / "theirs.txt").write_text("mine")
    with pytest.raises(BadInputError, match="holds theirs.txt"):
        od.fresh_work_folder(folder, ours, "the staging folder")
    assert (folder / "theirs.txt").read_text() == "mine"
    link = tmp_path / ".linked"
    link.symlink_to(folder)
    with pytest.raises(BadInputError, match="is a symbolic link"):
        od.fresh_work_folder(link, ours, "the staging folder")
    late = tmp_path / ".late"
    monkeypatch.setattr(od, "remove_written", lambda path, _ours: path.mkdir())  # another process, meanwhile
    with pytest.raises(BadInputError, match="appeared meanwhile"):
        od.fresh_work_folder(late, ours, "the staging folder")


def test_the_mode_of_new_files_is_read_without_setting_the_umask(monkeypatch):
    """Setting the umask to 0 and back (the old way) let a file another thread made meanwhile be 0666."""
    before = os.umask(0o027)
    try:
        def never(_mask):
            raise AssertionError("the umask was set")

        monkeypatch.setattr(os, "umask", never)
        assert od.file_mode() == 0o640
    finally:
        monkeypatch.undo()
        os.umask(before)


# ------------------------------------------------------------------ new files in a folder with a default ACL

ACL_ENTRY = struct.Struct("<HHI")  # tag, permission bits, user or group id: POSIX ACLs in Linux xattrs
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
NO_ID = 0xFFFFFFFF


def shared_by_default_acl(folder: Path, reader: int) -> Path:
    """`folder` with a default ACL that lets user `reader` read what is made in it (setfacl -d -m
    u:READER:rx), as a project folder shared with a collaborator; skips where ACLs are refused."""
    folder.mkdir()
    entries = [(ACL_USER_OBJ, 7, NO_ID), (ACL_USER, 5, reader), (ACL_GROUP_OBJ, 5, NO_ID), (ACL_MASK, 5, NO_ID),
               (ACL_OTHER, 0, NO_ID)]
    try:
        os.setxattr(folder, "system.posix_acl_default",
                    struct.pack("<I", 2) + b"".join(ACL_ENTRY.pack(*entry) for entry in entries))
    except OSError as exc:
        pytest.skip(f"no POSIX ACLs here: {exc}")
    return folder


def acl_mask(path: Path) -> int:
    """The permission bits of the ACL mask of `path` (which caps every named user's and group's rights)."""
    data = os.getxattr(path, "system.posix_acl_access")
    entries = [ACL_ENTRY.unpack_from(data, offset) for offset in range(4, len(data), ACL_ENTRY.size)]
    return next(perm for tag, perm, _id in entries if tag == ACL_MASK)


def test_files_made_under_a_default_acl_stay_readable_to_its_users_under_umask_077(tmp_path):
    """The files written through a temporary (mkstemp's 0600, then a chmod to the umask's mode) got ACL
    mask ---: the collaborator the folder's default ACL names could not read a shard or a model file."""
    from virnucpro import h5shard
    from virnucpro.models.store import replaced_like
    folder = shared_by_default_acl(tmp_path / "project", reader=4321)
    old = os.umask(0o077)
    try:
        od.write_atomically(folder / "manifest.json", b"{}\n")
        with replaced_like(folder / "weights.pt", like=[]) as temporary:
            temporary.write_bytes(b"weights")
        h5shard.write_shard(folder / "shard.h5", ["r0"], lambda a, b: (np.zeros((b - a, 2), np.float32),
                                                                      np.zeros((b - a, 3), np.float32)),
                            (2, 3), {})
    finally:
        os.umask(old)
    for name in ("manifest.json", "weights.pt", "shard.h5"):
        assert acl_mask(folder / name) & 4, f"{name}: the ACL mask does not let its users read it"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "shard.h5", "weights.pt"]
