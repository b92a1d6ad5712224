"""Checkpoint parts are checked completely before use: a damaged or crafted part is named, ignored and
recomputed, and the run still gives the embeddings of a run without checkpoints (exit 0)."""

from __future__ import annotations

import concurrent.futures
import errno
import gc
import io
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from checkpoint_helpers import npz_bytes, part_name, read_h5
import virnucpro.embed
from virnucpro import prepared as fmt
from virnucpro.embed import ROLES, CheckpointStore, Distinct, embed

EVERY = 4  # records per checkpoint window: part 0 holds records [0, 4), part 1 records [4, 8)
# the settings entries of the torch and the hardware that computed on this machine's CPU
TORCH, HARDWARE = f"torch={torch.__version__}", f"cpu_isa={torch.backends.cpu.get_cpu_capability()}"


@dataclass
class Plain:
    """A run without checkpoints to resume: its rows, its key folder's name and the parts it wrote."""

    rows: tuple
    key: str
    parts: list[Path]
    distinct: dict[str, int]


def shard(prepared: Path, index: int = 0) -> Path:
    return prepared / "shards" / fmt.shard_name(index)


def embed_keeping_parts(shard_file: Path, out: Path, tiny_models: Path) -> Path:
    """Embed a shard in windows of EVERY records, its parts kept (remove only closes the store); the key folder."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CheckpointStore, "remove", CheckpointStore.close)
        embed(shard_file, out, models=tiny_models, device="cpu", checkpoint_every=EVERY, threads=1)
    torch.set_num_threads(threads)
    key_folder, = out.with_name(out.name + ".ckpt").iterdir()
    return key_folder


@pytest.fixture(scope="module")
def plain(tmp_path_factory, tiny_models, golden_prepared) -> Plain:
    """Shard 0 embedded without checkpoints to resume, its parts kept."""
    out = tmp_path_factory.mktemp("plain") / "s.h5"
    key_folder = embed_keeping_parts(shard(golden_prepared), out, tiny_models)
    records = list(fmt.read_shard(shard(golden_prepared)))
    distinct = {role: len(Distinct.of([r[column] for r in records]).sequences)
                for role, column in zip(ROLES, (1, 2))}
    return Plain(read_h5(out), key_folder.name, sorted(key_folder.glob("part_*.npz")), distinct)


def genuine(plain: Plain, number: int) -> dict[str, np.ndarray]:
    """The arrays of a part the plain run wrote."""
    with np.load(plain.parts[number]) as data:
        arrays = {name: data[name] for name in data.files}
    assert all(len(arrays[f"{role}_index"]) >= 2 for role in ROLES), "part 1 needs two sequences per role"
    return arrays


def resume(tmp_path, run_cli, golden_prepared, tiny_models, plain: Plain, parts: dict[str, bytes | None]):
    """Run embed over a checkpoint folder holding the sound part 0 and the given files (None: a folder)."""
    folder = tmp_path / "s.h5.ckpt" / plain.key
    folder.mkdir(parents=True)
    shutil.copy(plain.parts[0], folder)
    for name, content in parts.items():
        if content is None:
            (folder / name).mkdir()
        else:
            (folder / name).write_bytes(content)
    return run_cli("embed", shard(golden_prepared), "--models", tiny_models, "--out", tmp_path / "s.h5",
                   "--device", "cpu", "--checkpoint-every", EVERY, "--threads", 1)


def assert_recomputed(code: int, message: str, out: Path, plain: Plain, damaged: list[str], *words: str):
    """Exit 0, one warning per damaged part naming it and saying what is wrong, part 0 used, same rows."""
    assert code == 0, message
    warnings = [line for line in message.splitlines() if line.startswith("warning: checkpoint part")]
    assert len(warnings) == len(damaged), message
    for name in damaged:
        naming = [warning for warning in warnings if f"part {name} is damaged" in warning]
        assert len(naming) == 1 and all(word in naming[0] for word in words), message
    with np.load(plain.parts[0]) as sound:
        kept = {role: len(sound[f"{role}_index"]) for role in ROLES}
    assert "resuming from checkpoint" in message
    assert (f"computed {plain.distinct['dnabert_s'] - kept['dnabert_s']} nucleotide and "
            f"{plain.distinct['esm2'] - kept['esm2']} protein sequences") in message, "only part 0 was trusted"
    ids, nucleotide, protein, _ = read_h5(out)
    assert ids == plain.rows[0]
    np.testing.assert_array_equal(nucleotide, plain.rows[1])
    np.testing.assert_array_equal(protein, plain.rows[2])


def changed(array: np.ndarray, value, position: int = 0) -> np.ndarray:
    """A copy with one element set."""
    array = array.copy()
    array.flat[position] = value
    return array


def npy(array: np.ndarray) -> bytes:
    """The .npy bytes of an array, as np.savez stores each member."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array)
    return buffer.getvalue()


def header_claiming(shape: tuple, descr: str) -> bytes:
    """An .npy header announcing an array of `shape`, followed by a few bytes of data only."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + bytes(64)


DAMAGE = {  # what is done to part 1's arrays, and words the warning must hold
    "negative index": (lambda a, n: {"esm2_index": changed(a["esm2_index"], -1)}, ("esm2_index", "outside")),
    "index past the end": (lambda a, n: {"dnabert_s_index": changed(a["dnabert_s_index"], n["dnabert_s"])},
                           ("dnabert_s_index", "outside")),
    "repeated index": (lambda a, n: {"esm2_index": changed(a["esm2_index"], a["esm2_index"][0], 1)},
                       ("esm2_index", "repeats")),
    "float indices": (lambda a, n: {"esm2_index": a["esm2_index"].astype(np.float64)}, ("esm2_index", "dtype")),
    "object indices": (lambda a, n: {"dnabert_s_index": a["dnabert_s_index"].astype(object)},
                       ("dnabert_s_index", "object")),
    "indices in two dimensions": (lambda a, n: {"esm2_index": a["esm2_index"][None, :]}, ("esm2_index", "shape")),
    "a header claiming 10**12 indices": (lambda a, n: {"esm2_index": header_claiming((10 ** 12,), "<i8")},
                                         ("esm2_index", "shape")),
    "object vectors": (lambda a, n: {"esm2_vectors": a["esm2_vectors"].astype(object)}, ("esm2_vectors", "object")),
    "float64 vectors": (lambda a, n: {"dnabert_s_vectors": a["dnabert_s_vectors"].astype(np.float64)},
                        ("dnabert_s_vectors", "float64")),
    "vectors in three dimensions": (lambda a, n: {"esm2_vectors": a["esm2_vectors"][:, None, :]},
                                    ("esm2_vectors", "shape")),
    "fewer rows than indices": (lambda a, n: {"esm2_vectors": a["esm2_vectors"][:-1]}, ("esm2_vectors", "shape")),
    "narrower vectors": (lambda a, n: {"dnabert_s_vectors": a["dnabert_s_vectors"][:, :-1]},
                         ("dnabert_s_vectors", "shape")),
    "a NaN": (lambda a, n: {"esm2_vectors": changed(a["esm2_vectors"], np.nan, 5)}, ("esm2_vectors", "finite")),
    "an infinity": (lambda a, n: {"dnabert_s_vectors": changed(a["dnabert_s_vectors"], -np.inf)},
                    ("dnabert_s_vectors", "finite")),
    "truncated data": (lambda a, n: {"esm2_vectors": npy(a["esm2_vectors"])[:-4]}, ("esm2_vectors", "bytes")),
    "trailing data": (lambda a, n: {"esm2_vectors": npy(a["esm2_vectors"]) + bytes(4)}, ("esm2_vectors", "bytes")),
    "a missing array": (lambda a, n: {"esm2_vectors": None}, ("missing array esm2_vectors",)),
    "no key": (lambda a, n: {"key": None}, ("missing array key",)),
    "the key of another folder": (lambda a, n: {"key": np.array("0" * 64)},
                                  ("another checkpoint", "key 0000000000000000")),
    "a key of bytes": (lambda a, n: {"key": np.array(a["key"].item().encode())}, ("key has dtype", "S64")),
    "a key in a row": (lambda a, n: {"key": a["key"][None]}, ("key has shape (1,)",)),
    "a header claiming a key of 10**8 characters": (lambda a, n: {"key": header_claiming((), "<U100000000")},
                                                    ("key has dtype",)),
    "an extra array": (lambda a, n: {"note": np.zeros(3)}, ("unexpected array note",)),
    "half a record": (lambda a, n: {"device": None}, ("missing array device",)),
    "a device not known": (lambda a, n: {"device": np.array("tpu")}, ("names the device 'tpu'", "not cpu or cuda")),
    "an attention path not known": (lambda a, n: {"attention": np.array("dnabert_s:magic,esm2:reference")},
                                    ("unknown attention path 'dnabert_s:magic'",)),
    "no attention path for a role": (lambda a, n: {"attention": np.array("esm2:fast")},
                                     ("names no attention path for its dnabert_s vectors",)),
    "a record of bytes": (lambda a, n: {"device": np.array(b"cpu")}, ("device has dtype", "S3")),
    "a record in a row": (lambda a, n: {"attention": a["attention"][None]}, ("attention has shape (1,)",)),
    "a header claiming a record of 10**8 characters": (lambda a, n: {"attention": header_claiming((), "<U100000000")},
                                                       ("attention has dtype", "at most 256 characters")),
    "a setting not known": (lambda a, n: {"settings": np.array("threads=1,batch_size=8")},
                            ("unknown setting 'batch_size=8'",)),
    "a setting of no value": (lambda a, n: {"settings": np.array("threads=0")}, ("unknown setting 'threads=0'",)),
    "settings without the rest of the record": (lambda a, n: {"device": None, "attention": None},
                                                 ("missing array attention, device",)),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_damaged_part_is_named_ignored_and_recomputed(tmp_path, run_cli, golden_prepared, tiny_models, plain,
                                                      damage):
    change, words = DAMAGE[damage]
    arrays = genuine(plain, 1)
    members = {**arrays, **change(arrays, plain.distinct)}
    content = npz_bytes({name: member for name, member in members.items() if member is not None})
    code, message = resume(tmp_path, run_cli, golden_prepared, tiny_models, plain, {part_name(1, content): content})
    assert_recomputed(code, message, tmp_path / "s.h5", plain, [part_name(1, content)], *words)


@pytest.fixture(scope="module")
def other_shard_parts(tmp_path_factory, tiny_models, golden_prepared) -> list[Path]:
    """The parts of shard 1, embedded in the same windows as shard 0."""
    out = tmp_path_factory.mktemp("other") / "other.h5"
    return sorted(embed_keeping_parts(shard(golden_prepared, 1), out, tiny_models).glob("part_*.npz"))


def test_parts_of_another_shard_copied_into_the_key_folder_are_ignored(tmp_path, run_cli, golden_prepared,
                                                                      tiny_models, plain, other_shard_parts):
    """Sound parts of shard 1 (their own checksums, in-range indices) moved under shard 0's key: never used."""
    folder = tmp_path / "s.h5.ckpt" / plain.key
    folder.mkdir(parents=True)
    foreign = other_shard_parts[:3]
    for part in foreign:
        shutil.copy(part, folder)
    code, message = run_cli("embed", shard(golden_prepared), "--models", tiny_models, "--out", tmp_path / "s.h5",
                            "--device", "cpu", "--checkpoint-every", EVERY, "--threads", 1)
    assert code == 0, message
    warnings = [line for line in message.splitlines() if line.startswith("warning: checkpoint part")]
    assert len(warnings) == len(foreign), message
    for part in foreign:
        assert any(f"part {part.name} is damaged" in line and "another checkpoint" in line for line in warnings)
    assert "resuming" not in message
    ids, nucleotide, protein, _ = read_h5(tmp_path / "s.h5")
    assert ids == plain.rows[0]
    np.testing.assert_array_equal(nucleotide, plain.rows[1])
    np.testing.assert_array_equal(protein, plain.rows[2])


def test_failed_part_write_ends_the_command_at_the_next_batch_with_exit_10(tmp_path, run_cli, golden_prepared,
                                                                          tiny_models, monkeypatch):
    """A full disk under the checkpoint folder: exit 10 naming the part one batch later, no output, part 0 kept."""
    batches, failed_after = [], []
    embed_batch, save, write_npz = virnucpro.embed._ShardWork.embed_batch, CheckpointStore.save, virnucpro.embed._write_npz

    def counted(self, *args):
        batches.append(args[0])
        return embed_batch(self, *args)

    def written_at_once(self, vectors, made):  # the write ends before the next batch: the boundary is known
        save(self, vectors, made)
        concurrent.futures.wait(self.pending)

    def disk_full_from_part_1(handle, arrays):
        if ".part_00000." in handle.name:
            return write_npz(handle, arrays)
        failed_after.append(len(batches))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(virnucpro.embed._ShardWork, "embed_batch", counted)
    monkeypatch.setattr(CheckpointStore, "save", written_at_once)
    monkeypatch.setattr(virnucpro.embed, "_write_npz", disk_full_from_part_1)
    out = tmp_path / "s.h5"
    code, message = run_cli("embed", shard(golden_prepared), "--models", tiny_models, "--out", out,
                            "--device", "cpu", "--checkpoint-every", EVERY, "--threads", 1)
    folder, = (tmp_path / "s.h5.ckpt").iterdir()
    assert code == 10, message
    assert f"cannot write checkpoint part {folder / '.part_00001.tmp.npz'}: the disk is full" in message
    assert "a rerun resumes from the parts already written" in " ".join(message.split()), message
    assert len(failed_after) == 1 and len(batches) <= failed_after[0] + 1, "the loop stopped at the next batch"
    assert not out.exists()
    assert [path.name[:11] for path in folder.glob("*part_*")] == ["part_00000."], "part 0 kept, no temporary left"


def test_part_that_is_not_an_npz_archive_is_ignored(tmp_path, run_cli, golden_prepared, tiny_models, plain):
    garbage = b"\x80\x04not an archive"
    array = npy(genuine(plain, 1)["esm2_index"])
    parts = {part_name(1, garbage): garbage, part_name(2, array): array}
    code, message = resume(tmp_path, run_cli, golden_prepared, tiny_models, plain, parts)
    assert_recomputed(code, message, tmp_path / "s.h5", plain, list(parts), "not a readable .npz archive")


def test_part_with_a_wrong_name_or_not_a_file_is_ignored(tmp_path, run_cli, golden_prepared, tiny_models, plain):
    content = plain.parts[1].read_bytes()
    parts = {"part_x.npz": content, part_name(2, b"other bytes"): content, part_name(3, content): None}
    code, message = resume(tmp_path, run_cli, golden_prepared, tiny_models, plain, parts)
    assert_recomputed(code, message, tmp_path / "s.h5", plain, list(parts)[1:])
    assert "part_x.npz; its parts are named part_<number>.<sha256>.npz): left as they are" in message
    assert (tmp_path / "s.h5.ckpt" / plain.key / "part_x.npz").read_bytes() == content
    assert "checksum mismatch" in message
    assert "not a regular file" in message


def test_of_parts_claiming_the_same_sequence_the_earlier_is_used_whole(tmp_path, run_cli, golden_prepared, tiny_models,
                                                                      plain):
    """Two sound parts of one key holding a sequence in common (parts of two runs copied into one
    folder) were both called damaged and deleted, sound work recomputed: the earlier one is used
    whole, the later one set aside, saying so (not as damage)."""
    arrays = genuine(plain, 1)
    rival = npz_bytes({**arrays, "esm2_index": arrays["esm2_index"][:1],
                       "esm2_vectors": arrays["esm2_vectors"][:1] + np.float32(1)})
    first, second = plain.parts[1].name, part_name(2, rival)
    code, message = resume(tmp_path, run_cli, golden_prepared, tiny_models, plain,
                           {first: plain.parts[1].read_bytes(), second: rival})
    assert code == 0, message
    assert "is damaged" not in message, message
    assert f"checkpoint part {second} holds sequences that {first} holds too" in message, message
    kept = {role: len(arrays[f"{role}_index"]) for role in ROLES}
    with np.load(plain.parts[0]) as sound:
        kept = {role: kept[role] + len(sound[f"{role}_index"]) for role in ROLES}
    assert (f"computed {plain.distinct['dnabert_s'] - kept['dnabert_s']} nucleotide and "
            f"{plain.distinct['esm2'] - kept['esm2']} protein sequences") in message, message
    ids, nucleotide, protein, _ = read_h5(tmp_path / "s.h5")
    assert ids == plain.rows[0]
    np.testing.assert_array_equal(nucleotide, plain.rows[1])
    np.testing.assert_array_equal(protein, plain.rows[2])


def test_part_without_vectors_of_one_role_is_used(tmp_path, run_cli, golden_prepared, tiny_models, plain):
    """A role with no new sequence in a window is saved as an empty index and a (0, 0) block."""
    arrays = genuine(plain, 1)
    content = npz_bytes({**arrays, "esm2_index": np.zeros(0, np.int64), "esm2_vectors": np.zeros((0, 0), np.float32)})
    code, message = resume(tmp_path, run_cli, golden_prepared, tiny_models, plain, {part_name(1, content): content})
    assert code == 0 and "damaged" not in message, message
    with np.load(plain.parts[0]) as sound:
        nucleotides = plain.distinct["dnabert_s"] - len(sound["dnabert_s_index"]) - len(arrays["dnabert_s_index"])
        proteins = plain.distinct["esm2"] - len(sound["esm2_index"])
    assert f"computed {nucleotides} nucleotide and {proteins} protein sequences" in message
    ids, nucleotide, protein, _ = read_h5(tmp_path / "s.h5")
    np.testing.assert_array_equal(nucleotide, plain.rows[1])
    np.testing.assert_array_equal(protein, plain.rows[2])


def test_stop_signal_while_parts_are_checked_exits_6_and_keeps_them(tmp_path, run_cli, golden_prepared, tiny_models,
                                                                   plain, monkeypatch):
    """A SIGTERM that lands while a part is read is a stop (exit 6), not damage to that part."""
    check_values = virnucpro.embed._check_values

    def signal_then_check(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        return check_values(*args)

    monkeypatch.setattr(virnucpro.embed, "_check_values", signal_then_check)
    code, message = resume(tmp_path, run_cli, golden_prepared, tiny_models, plain,
                           {plain.parts[1].name: plain.parts[1].read_bytes()})
    assert code == 6 and "SIGTERM received" in message and "damaged" not in message, message
    kept = sorted(path.name for path in (tmp_path / "s.h5.ckpt" / plain.key).glob("part_*.npz"))
    assert kept == [plain.parts[0].name, plain.parts[1].name]


@pytest.mark.parametrize("flock", [True, False], ids=["flock", "no-flock"])
def test_a_busy_checkpoint_folder_is_waited_for_then_resumed(tmp_path, monkeypatch, capsys, flock):
    """Another embed of the same inputs holds the folder (a resumed pipeline task whose first
    attempt still runs): the second waits, saying so, and takes the folder when the first ends.
    Where the file system has no flock (Lustre mounted without it) the O_EXCL lock does the same."""
    import errno as errno_codes
    import threading
    import time

    from virnucpro import embed as embed_module
    from virnucpro import outdir
    from virnucpro.embed import CheckpointStore

    def no_flock(*args, **kwargs):
        raise OSError(errno_codes.ENOSYS, "Function not implemented")

    if not flock:
        monkeypatch.setattr(outdir.fcntl, "flock", no_flock)
    monkeypatch.setattr(embed_module, "CHECKPOINT_WAIT_SECONDS", 0.05)
    first = CheckpointStore(tmp_path / "key")
    second = []
    waiter = threading.Thread(target=lambda: second.append(CheckpointStore(tmp_path / "key")))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive() and not second, "the second store did not wait"
    first.close()
    waiter.join(10)
    assert second, "the second store never got the folder"
    second[0].close()
    err = capsys.readouterr().err
    assert "is in use by another virnucpro command" in err and "waiting for it to end" in err


@pytest.fixture(scope="module")
def fast_parts(tmp_path_factory, tiny_models, golden_prepared) -> list[Path]:
    """The parts of shard 0 embedded on the fast attention path (forced: the CPU default is the reference path)."""
    import virnucpro.encoders

    out = tmp_path_factory.mktemp("fast") / "s.h5"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(virnucpro.encoders, "choose_path", lambda requested, device, model="": "fast")
        virnucpro.embed._load_encoders_cached.cache_clear()
        try:
            key_folder = embed_keeping_parts(shard(golden_prepared), out, tiny_models)
        finally:
            virnucpro.embed._load_encoders_cached.cache_clear()
    return sorted(key_folder.glob("part_*.npz"))


def record(part: Path) -> tuple[str, str]:
    """(device, attention) recorded in a checkpoint part."""
    with np.load(part) as data:
        return str(data["device"]), str(data["attention"])


def test_a_resumed_shard_names_every_path_that_computed_its_vectors(tmp_path, run_cli, golden_prepared,
                                                                   tiny_models, plain, fast_parts):
    """A run on the fast path killed after 3 parts, resumed on the reference path: the attributes
    name both paths of both models, not only the paths of the process that wrote the file."""
    assert {record(part) for part in fast_parts} == {("cpu", "dnabert_s:fast,esm2:fast")}
    assert {record(part) for part in plain.parts} == {("cpu", "dnabert_s:reference,esm2:reference")}
    folder = tmp_path / "s.h5.ckpt" / plain.key
    folder.mkdir(parents=True)
    for part in fast_parts[:3]:
        shutil.copy(part, folder)
    code, message = run_cli("embed", shard(golden_prepared), "--models", tiny_models, "--out", tmp_path / "s.h5",
                            "--device", "cpu", "--checkpoint-every", EVERY, "--threads", 1)
    assert code == 0 and "resuming from checkpoint" in message, message
    ids, nucleotide, protein, attrs = read_h5(tmp_path / "s.h5")
    assert attrs["attention"] == "dnabert_s:fast,dnabert_s:reference,esm2:fast,esm2:reference"
    assert attrs["device"] == "cpu"
    np.testing.assert_allclose(nucleotide, plain.rows[1], atol=1e-5, rtol=0)
    np.testing.assert_allclose(protein, plain.rows[2], atol=1e-5, rtol=0)


def test_a_part_computed_on_another_device_is_named_in_the_device_attribute(tmp_path, run_cli, golden_prepared,
                                                                           tiny_models, plain):
    """Part 1 computed on a GPU (its record says so), the rest here: device 'cpu+cuda', which readers accept."""
    from virnucpro import h5shard

    content = npz_bytes({**genuine(plain, 1), "device": np.array("cuda")})
    code, message = resume(tmp_path, run_cli, golden_prepared, tiny_models, plain, {part_name(1, content): content})
    assert code == 0 and "damaged" not in message, message
    assert read_h5(tmp_path / "s.h5")[3]["device"] == "cpu+cuda"
    assert h5shard.read_info(tmp_path / "s.h5").device == "cpu+cuda"


def test_a_part_of_an_older_virnucpro_is_used_and_said_unknown(tmp_path, run_cli, golden_prepared, tiny_models,
                                                              plain):
    """A part without the record (written before parts kept one): its vectors are used, and the
    attributes say honestly that what computed them is unknown."""
    from virnucpro import h5shard

    arrays = genuine(plain, 1)
    content = npz_bytes({name: array for name, array in arrays.items()
                         if name not in ("device", "attention", "settings")})
    code, message = resume(tmp_path, run_cli, golden_prepared, tiny_models, plain, {part_name(1, content): content})
    assert code == 0 and "damaged" not in message, message
    assert "do not record which device and attention path computed them" in message
    with np.load(plain.parts[0]) as sound:
        nucleotides = plain.distinct["dnabert_s"] - len(sound["dnabert_s_index"]) - len(arrays["dnabert_s_index"])
    assert f"computed {nucleotides} nucleotide" in message, "part 1 was used"
    attrs = read_h5(tmp_path / "s.h5")[3]
    assert attrs["device"] == "cpu+unknown"
    assert attrs["attention"] == "dnabert_s:reference,dnabert_s:unknown,esm2:reference,esm2:unknown"
    assert h5shard.read_info(tmp_path / "s.h5").device == "cpu+unknown"


def test_a_resume_with_other_settings_records_both_in_the_shard_and_in_run_info(tmp_path, run_cli, golden_prepared,
                                                                               tiny_models, plain):
    """A reviewer's case: after a kill, a rerun with another token budget, window and thread count
    resumed, and nothing said that part of the vectors was batched otherwise. Part 0 of the plain run
    (default CPU budget, windows of EVERY, one thread), the rest batched otherwise: the shard's
    `settings` and run_info.json's `embed_settings` hold both values of each."""
    from virnucpro import h5shard

    folder = tmp_path / "s.h5.ckpt" / plain.key
    folder.mkdir(parents=True)
    shutil.copy(plain.parts[0], folder)
    with np.load(plain.parts[0]) as part:
        assert str(part["settings"]) == (f"checkpoint_every={EVERY},{HARDWARE},dnabert_s:token_budget=4096,"
                                         f"esm2:token_budget=4096,threads=1,{TORCH}")
    code, message = run_cli("embed", shard(golden_prepared), "--models", tiny_models, "--out", tmp_path / "s.h5",
                            "--device", "cpu", "--checkpoint-every", 7, "--token-budget", 300, "--threads", 2)
    assert code == 0 and "resuming from checkpoint" in message, message
    both = (f"checkpoint_every={EVERY},checkpoint_every=7,{HARDWARE},dnabert_s:token_budget=300,"
            f"dnabert_s:token_budget=4096,esm2:token_budget=300,esm2:token_budget=4096,threads=1,threads=2,{TORCH}")
    assert read_h5(tmp_path / "s.h5")[3]["settings"] == both
    assert h5shard.read_info(tmp_path / "s.h5").settings == tuple(both.split(","))


def test_a_part_without_settings_is_used_and_its_settings_said_unknown(tmp_path, run_cli, golden_prepared,
                                                                      tiny_models, plain):
    """A part of a virnucpro that recorded the device and paths but not the settings: used (its vectors
    are sound), one warning, and 'unknown' among the shard's settings."""
    from virnucpro import h5shard

    arrays = genuine(plain, 1)
    content = npz_bytes({name: array for name, array in arrays.items() if name != "settings"})
    code, message = resume(tmp_path, run_cli, golden_prepared, tiny_models, plain, {part_name(1, content): content})
    assert code == 0 and "damaged" not in message, message
    assert message.count("do not record the settings that batched them") == 1, message
    info = h5shard.read_info(tmp_path / "s.h5")
    assert "unknown" in info.settings and f"checkpoint_every={EVERY}" in info.settings, info.settings
    assert info.device == "cpu"


def test_any_whole_number_the_cli_takes_is_recorded_and_read_back(tmp_path, tiny_models, small_sample):
    """A reviewer's case: a --token-budget of 11 digits was written into the settings, then refused by
    every reader as damaged (exit 5, and the rerun the message advised wrote the same file)."""
    from virnucpro import h5shard
    from virnucpro.predict import predict

    out = tmp_path / "s.h5"
    embed(shard(small_sample[0]), out, models=tiny_models, device="cpu", threads=1, token_budget=99999999999,
          checkpoint_every=10**30)
    settings = h5shard.read_info(out).settings
    assert f"checkpoint_every={10**30}" in settings and "esm2:token_budget=99999999999" in settings, settings
    assert h5shard.settings_in_order(["threads=10", f"threads={10**30}", "threads=9"]) == \
        ["threads=9", "threads=10", f"threads={10**30}"]
    assert predict(small_sample[0], [out], tmp_path / "p", models=tiny_models, threshold=0.5) is not None


@pytest.mark.parametrize("device", ["cuda+cpu", "cpu+cpu", "cpu+tpu", "", "cpu+"])
def test_the_device_attribute_is_devices_joined_in_sorted_order(tmp_path, tiny_models, golden_prepared, device):
    from h5_helpers import edited_shard
    from virnucpro import h5shard
    from virnucpro.errors import InconsistentInputsError

    out = tmp_path / "s.h5"
    embed(shard(golden_prepared), out, models=tiny_models, device="cpu", threads=1)
    with edited_shard(out) as handle:
        handle.attrs["device"] = device
    with pytest.raises(InconsistentInputsError, match="attribute device must be cpu or cuda, or several"):
        h5shard.read_info(out)


@pytest.mark.parametrize("settings", ["threads=1,batch=3", "threads=x", "threads=1,", "threads=-2"])
def test_a_settings_attribute_that_embed_never_writes_is_refused(tmp_path, tiny_models, golden_prepared, settings):
    from h5_helpers import edited_shard
    from virnucpro import h5shard
    from virnucpro.errors import InconsistentInputsError

    out = tmp_path / "s.h5"
    embed(shard(golden_prepared), out, models=tiny_models, device="cpu", threads=1)
    assert h5shard.read_info(out).settings[-2:] == ("threads=1", TORCH)
    with edited_shard(out) as handle:
        handle.attrs["settings"] = settings
    with pytest.raises(InconsistentInputsError, match="attribute settings holds"):
        h5shard.read_info(out)


class _FailingAfter(io.BytesIO):
    """A file whose storage fills up after `room` bytes, as a disk does mid-part."""

    def __init__(self, room: int):
        super().__init__()
        self.room = room

    def write(self, data) -> int:
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def test_a_part_archive_reads_back_as_written():
    arrays = {"key": np.array("k" * 64), "esm2_index": np.arange(5, dtype=np.int64),
              "esm2_vectors": np.random.default_rng(1).random((5, 3), dtype=np.float32)}
    handle = io.BytesIO()
    virnucpro.embed._write_npz(handle, arrays)
    handle.seek(0)
    with np.load(handle, allow_pickle=False) as loaded:
        assert sorted(loaded.files) == sorted(arrays)
        for name, array in arrays.items():
            np.testing.assert_array_equal(loaded[name], array)
            assert loaded[name].dtype == array.dtype


@pytest.mark.parametrize("room", [10, 200, 1_000])
def test_a_part_write_that_fails_leaves_no_archive_open_to_complain_later(room, monkeypatch):
    """numpy < 2.2's savez left its archive open on a failed write; collected later, it printed a traceback."""
    complaints = []
    monkeypatch.setattr(sys, "unraisablehook", complaints.append)
    arrays = {"esm2_vectors": np.ones((50, 10), np.float32), "esm2_index": np.arange(50)}
    with pytest.raises(OSError):
        virnucpro.embed._write_npz(_FailingAfter(room), arrays)
    gc.collect()
    assert complaints == []


def test_an_output_already_written_keeps_the_parts_another_output_may_resume_from(tmp_path, run_cli, golden_prepared,
                                                                                 tiny_models, plain):
    """A review's case: parts are keyed by shard, models and precision, not by output. In a
    --checkpoint-dir shared by two outputs, an embed into a.h5 that found a.h5 complete deleted the
    parts a killed embed into b.h5 would resume from, without a word. They are kept and named; in
    the default <out>.ckpt, which is a.h5's alone, its leftovers still go."""
    shared = tmp_path / "ck"
    again = ["--models", tiny_models, "--device", "cpu", "--checkpoint-every", EVERY, "--threads", 1]
    code, message = run_cli("embed", shard(golden_prepared), "--out", tmp_path / "a.h5", "--checkpoint-dir", shared, *again)
    assert code == 0 and not list(shared.rglob("part_*.npz")), message
    folder = shared / plain.key  # an embed into b.h5 killed after two windows
    folder.mkdir()
    for part in plain.parts[:2]:
        shutil.copy(part, folder)
    code, message = run_cli("embed", shard(golden_prepared), "--out", tmp_path / "a.h5", "--checkpoint-dir", shared, *again)
    assert code == 0 and "already holds these" in message, message
    assert f"{folder} holds checkpoints of this shard" in message and "kept" in message, message
    assert sorted(path.name for path in folder.glob("part_*.npz")) == [part.name for part in plain.parts[:2]]
    code, message = run_cli("embed", shard(golden_prepared), "--out", tmp_path / "b.h5", "--checkpoint-dir", shared, *again)
    assert code == 0 and "resum" in message, message
    assert read_h5(tmp_path / "b.h5")[0] == plain.rows[0] and not folder.exists()
    own = tmp_path / "a.h5.ckpt" / plain.key  # a kill of a.h5's own embed between writing and removing
    own.mkdir(parents=True)
    shutil.copy(plain.parts[0], own)
    code, message = run_cli("embed", shard(golden_prepared), "--out", tmp_path / "a.h5", *again)
    assert code == 0 and "holds checkpoints" not in message and not own.parent.exists(), message


def test_an_empty_default_checkpoint_folder_a_kill_left_goes_with_the_rerun(tmp_path, run_cli, golden_prepared,
                                                                            tiny_models):
    """A review's case: a kill after the key folder's removal, before that of the default <out>.ckpt
    above it, left that empty folder for good (the rerun found the output written and returned). A
    --checkpoint-dir the user named stays, empty or not."""
    again = ["--models", tiny_models, "--device", "cpu", "--threads", 1]
    code, message = run_cli("embed", shard(golden_prepared), "--out", tmp_path / "a.h5", *again)
    assert code == 0 and not (tmp_path / "a.h5.ckpt").exists(), message
    (tmp_path / "a.h5.ckpt").mkdir()
    code, message = run_cli("embed", shard(golden_prepared), "--out", tmp_path / "a.h5", *again)
    assert code == 0 and "already holds these" in message, message
    assert not (tmp_path / "a.h5.ckpt").exists()
    other = tmp_path / "a.h5.ckpt" / "other-models"  # checkpoints of another embed into a.h5: hours of work
    other.mkdir(parents=True)
    (other / "part_000000.npz").write_bytes(b"kept")
    code, message = run_cli("embed", shard(golden_prepared), "--out", tmp_path / "a.h5", *again)
    assert code == 0 and (other / "part_000000.npz").read_bytes() == b"kept", message
    (tmp_path / "ck").mkdir()
    code, message = run_cli("embed", shard(golden_prepared), "--out", tmp_path / "a.h5", "--checkpoint-dir",
                            tmp_path / "ck", *again)
    assert code == 0 and (tmp_path / "ck").is_dir(), message


@pytest.mark.parametrize("every", [3, 100_000], ids=["smaller-windows", "one-window"])
def test_a_resume_in_other_windows_after_losing_a_part_computes_every_missing_vector(tmp_path, run_cli, golden_prepared,
                                                                                    tiny_models, plain, every):
    """Every part but the last kept, then a resume with another --checkpoint-every: windows and batches
    then mix restored and missing sequences. A window (or batch) taken as done when any of it was
    done left zero vectors, written and scored as real ones (no test resumed in other windows)."""
    folder = tmp_path / "s.h5.ckpt" / plain.key
    folder.mkdir(parents=True)
    for part in plain.parts[:-1]:
        shutil.copy(part, folder)
    code, message = run_cli("embed", shard(golden_prepared), "--models", tiny_models, "--out", tmp_path / "s.h5",
                            "--device", "cpu", "--checkpoint-every", every, "--threads", 1)
    assert code == 0 and "resuming from checkpoint" in message, message
    ids, nucleotide, protein, _ = read_h5(tmp_path / "s.h5")
    assert ids == plain.rows[0]
    assert np.abs(nucleotide).sum(axis=1).min() > 0 and np.abs(protein).sum(axis=1).min() > 0, "a zero vector"
    np.testing.assert_allclose(nucleotide, plain.rows[1], atol=1e-5, rtol=0)
    np.testing.assert_allclose(protein, plain.rows[2], atol=1e-5, rtol=0)


def test_a_vector_never_computed_is_a_bug_report_not_a_zero_row(tmp_path, golden_prepared, tiny_models, monkeypatch):
    """The last guard: the shard is never written while a distinct sequence has no vector."""
    monkeypatch.setattr(virnucpro.embed._ShardWork, "_missing", lambda self, role, tokens, indices: [])
    with pytest.raises(RuntimeError, match="were never computed"):
        embed(shard(golden_prepared), tmp_path / "s.h5", models=tiny_models, device="cpu", threads=1)
    assert not (tmp_path / "s.h5").exists()
