"""`embed --out FILE` never replaces a file that appeared at FILE, or took the place of the embedding
found there, while embed ran: FILE is checked when embed starts, hours before the finished shard
moves in, so the move looks again (a name nothing held is taken with a rename that refuses an
existing target; an earlier embedding is replaced only while it is still the file checked). The
refusal is exit 3 naming FILE, leaves no temporary file and keeps the checkpoints: the rerun, once
the file is moved away, only writes the shard."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import virnucpro.embed
from checkpoint_helpers import read_h5
from virnucpro import h5shard
from virnucpro import outdir as od
from virnucpro import prepared as fmt
from virnucpro.errors import BadInputError

THEIRS = b"a user's file, written while embed ran\n"


def shard(prepared: Path) -> Path:
    return prepared / "shards" / fmt.shard_name(0)


def command(prepared: Path, models: Path, out: Path) -> tuple:
    return ("embed", shard(prepared), "--models", models, "--out", out, "--device", "cpu", "--threads", "1")


def then(function, action):
    """`function`, doing `action()` first: what another program does while embed runs."""
    def wrapped(*args, **kwargs):
        action()
        return function(*args, **kwargs)
    return wrapped


def assert_refused_and_resumable(code: int, message: str, out: Path, what: str, run_cli, prepared, models,
                                 theirs: bytes = THEIRS) -> None:
    """Exit 3 naming `out`, which holds `theirs` still, nothing of ours left beside it but the
    checkpoints; once the file is moved away the rerun takes every vector from them and writes the shard."""
    assert code == 3, message
    assert f"{what} while virnucpro ran" in message and str(out) in message and "move it away" in message, message
    assert "Traceback" not in message
    assert out.read_bytes() == theirs
    beside = sorted(p.name for p in out.parent.iterdir())
    assert beside == ["s.h5", "s.h5.ckpt"], f"a temporary or lock file was left: {beside}"
    assert list((out.parent / "s.h5.ckpt").glob("*/part_*.npz")), "the refusal removed the checkpoints"
    out.rename(out.parent / "moved_away")
    code, message = run_cli(*command(prepared, models, out))
    assert code == 0, message
    assert "resuming from checkpoint at record 60 of 60" in message
    assert "computed 0 nucleotide and 0 protein sequences" in message
    ids, _nuc, _prot, _attrs = read_h5(out)
    assert ids == [record[0] for record in fmt.read_shard(shard(prepared))]
    assert (out.parent / "moved_away").read_bytes() == theirs


@pytest.mark.parametrize("hook, renameat2", [("load models", True), ("verify written shard", True),
                                             ("verify written shard", False)])
def test_a_file_that_appears_at_out_while_embed_runs_is_not_replaced(tmp_path, run_cli, tiny_models,
                                                                     golden_prepared, monkeypatch, hook, renameat2):
    out = tmp_path / "s.h5"
    if not renameat2:  # a kernel or file system without renameat2: the hard-link way
        monkeypatch.setattr(od, "_renameat2", None)
    appear = lambda: out.write_bytes(THEIRS)  # noqa: E731
    if hook == "load models":  # soon after the start-up check
        monkeypatch.setattr(virnucpro.embed, "_load_encoders", then(virnucpro.embed._load_encoders, appear))
    else:  # the last step before the move
        monkeypatch.setattr(h5shard, "verify_shard", then(h5shard.verify_shard, appear))
    code, message = run_cli(*command(golden_prepared, tiny_models, out))
    monkeypatch.undo()
    assert_refused_and_resumable(code, message, out, "appeared", run_cli, golden_prepared, tiny_models)


def earlier_embedding(out: Path, prepared: Path, models: Path) -> None:
    """A virnucpro embedding at `out` that embed replaces: as it wrote it (its seal holds), but its last
    byte does not read back sound (a file whose bytes changed since embed sealed them is not replaced)."""
    virnucpro.embed.embed(shard(prepared), out, models=models, device="cpu", threads=1)
    data = bytearray(out.read_bytes())
    data[-1] ^= 0xFF
    out.write_bytes(bytes(data))
    h5shard.seal_file(out)
    assert h5shard.seal_holds(out)


def overwritten_in_place_time_kept(out: Path) -> None:
    """Its first bytes rewritten through the same inode, its size and time as they were: only the seal
    at its start, looked at again, tells."""
    before = out.stat()
    with open(out, "r+b") as handle:
        handle.write(THEIRS)
    os.utime(out, ns=(before.st_atime_ns, before.st_mtime_ns))


def replaced_by_rename(out: Path) -> None:
    other = out.with_name("theirs.tmp")
    other.write_bytes(THEIRS)
    os.replace(other, out)


def deleted_then_written(out: Path) -> None:
    out.unlink()
    out.write_bytes(THEIRS)


def written_in_place(out: Path) -> None:
    out.write_bytes(THEIRS)


@pytest.mark.parametrize("change", [written_in_place, replaced_by_rename, deleted_then_written,
                                    overwritten_in_place_time_kept])
def test_an_earlier_embedding_changed_while_embed_runs_is_not_replaced(tmp_path, run_cli, tiny_models,
                                                                       golden_prepared, monkeypatch, change):
    out = tmp_path / "s.h5"
    earlier_embedding(out, golden_prepared, tiny_models)
    theirs = []
    monkeypatch.setattr(virnucpro.embed, "_load_encoders", then(virnucpro.embed._load_encoders,
                                                                lambda: (change(out), theirs.append(out.read_bytes()))))
    code, message = run_cli(*command(golden_prepared, tiny_models, out))
    monkeypatch.undo()
    assert_refused_and_resumable(code, message, out, "changed", run_cli, golden_prepared, tiny_models, theirs[0])


# --- the move itself (h5shard.write_shard) ----------------------------------------------------------------

ATTRS = {"shard_index": 0, "shard_of": 1, "shard_sha256": "0" * 64, "chunk_size": 500,
         "models": {"esm2": {"name": "tiny", "sha256": "0" * 64}}, "precision": "fp32", "device": "cpu"}


def write(path: Path, value: float, replacing=None) -> list[str]:
    ids = [f"r{i}_chunk_1F1" for i in range(5)]
    h5shard.write_shard(path, ids, lambda a, b: (np.full((b - a, 4), value, "f4"), np.full((b - a, 6), value, "f4")),
                        (4, 6), ATTRS, replacing=replacing)
    return ids


def first_value(path: Path) -> float:
    return float(read_h5(path)[1][0, 0])


def test_write_shard_takes_only_a_free_name_or_the_file_it_was_told_of(tmp_path):
    out = tmp_path / "s.h5"
    out.write_bytes(THEIRS)
    with pytest.raises(BadInputError, match="appeared while virnucpro ran") as refused:
        write(out, 1.0)  # nothing was there when the caller checked
    assert refused.value.code == 3 and out.read_bytes() == THEIRS
    out.unlink()
    write(out, 1.0)
    found = h5shard.file_state(out)
    write(out, 2.0, replacing=found)  # still the file checked: replaced
    assert first_value(out) == 2.0
    os.utime(out, ns=(0, 0))
    with pytest.raises(BadInputError, match="changed while virnucpro ran"):
        write(out, 3.0, replacing=found)  # its time changed since
    assert first_value(out) == 2.0
    out.unlink()  # the file checked was deleted meanwhile: nothing is lost by taking the name
    write(out, 4.0, replacing=found)
    assert first_value(out) == 4.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"], "a temporary file was left"


def test_folders_made_for_out_are_taken_back_when_embed_fails(tmp_path, run_cli, golden_prepared):
    """`--out new/sub/s.h5` with a mistyped --models (exit 4): the folders embed made are gone again,
    the folder that was there before is kept."""
    (tmp_path / "kept").mkdir()
    out = tmp_path / "kept" / "new" / "sub" / "s.h5"
    code, message = run_cli(*command(golden_prepared, tmp_path / "no-models", out))
    assert code == 4, message
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / "new").exists()


def test_a_kept_shard_a_user_added_data_to_is_not_replaced(tmp_path, run_cli, tiny_models, golden_prepared):
    """A dataset added with h5py (append mode) breaks the seal: embed replaced the file, the dataset lost."""
    import h5py

    out = tmp_path / "s.h5"
    virnucpro.embed.embed(shard(golden_prepared), out, models=tiny_models, device="cpu", threads=1)
    with h5py.File(out, "a") as handle:
        handle["cluster"] = np.arange(3)
    theirs = out.read_bytes()
    code, message = run_cli(*command(golden_prepared, tiny_models, out))
    flat = " ".join(message.split())
    assert code == 3 and "was written by virnucpro embed but changed since" in flat and "move it away" in flat, message
    assert out.read_bytes() == theirs
