"""A checkpoint key folder may hold files virnucpro never wrote whose names look like parts
(`part_mine.npz`, a backup `part_00001.npz`): only `part_<number>.<sha256>.npz` names are parts.
Others are named once as not ours and left exactly as they are, on resume and on every clean-up."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from virnucpro.embed import CheckpointStore

SIZES = {"dnabert_s": 2, "esm2": 2}
WIDTHS = {"dnabert_s": 4, "esm2": 3}
FOREIGN = {"part_mine.npz": b"my own notes", "part_00001.npz": b"a backup copy"}


def store_with_one_part(folder: Path) -> CheckpointStore:
    """A held checkpoint folder holding one written part (distinct sequence 0 of each role)."""
    store = CheckpointStore(folder)
    store.save({role: ([0], [np.full((1, WIDTHS[role]), 0.5, np.float32)]) for role in SIZES})
    store.flush()
    return store


def put_foreign(folder: Path) -> None:
    for name, data in FOREIGN.items():
        (folder / name).write_bytes(data)


def assert_foreign_intact(folder: Path) -> None:
    for name, data in FOREIGN.items():
        assert (folder / name).read_bytes() == data, f"{name} was changed or deleted"


def test_a_resume_leaves_part_like_names_it_did_not_write(tmp_path, capsys):
    folder = tmp_path / "key"
    store_with_one_part(folder).close()
    put_foreign(folder)
    resumed = CheckpointStore(folder)
    parts = list(resumed.load(SIZES, WIDTHS))
    assert [list(part.vectors["dnabert_s"][0]) for part in parts] == [[0]]
    assert_foreign_intact(folder)
    err = capsys.readouterr().err
    assert "damaged" not in err, err
    assert err.count("virnucpro did not write") == 1, err
    assert "part_mine.npz" in err and "part_00001.npz" in err, err
    resumed.close()


def test_the_clean_up_after_success_keeps_them_and_the_folder_with_a_note(tmp_path, capsys):
    folder = tmp_path / "ckpt" / "key"
    store = store_with_one_part(folder)
    put_foreign(folder)
    store.remove()
    assert sorted(p.name for p in folder.iterdir()) == sorted(FOREIGN)
    assert_foreign_intact(folder)
    err = capsys.readouterr().err
    assert f"checkpoint folder {folder} holds 2 file(s) virnucpro did not write" in err, err
    assert "part_mine.npz" in err and "and the folder with them" in err, err


def test_a_store_that_saved_nothing_keeps_them_too(tmp_path, capsys):
    folder = tmp_path / "key"
    folder.mkdir()
    put_foreign(folder)
    CheckpointStore(folder).close()
    assert_foreign_intact(folder)
    assert "part_00001.npz" in capsys.readouterr().err


def test_a_folder_left_empty_is_still_removed_without_a_note(tmp_path, capsys):
    folder = tmp_path / "ckpt" / "key"
    store_with_one_part(folder).remove()
    assert not (tmp_path / "ckpt").exists()
    assert "did not write" not in capsys.readouterr().err
