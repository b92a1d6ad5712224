"""Checkpoints an embed passes by: those of this very shard made with another precision, other
models or another virnucpro are not resumed from (another version's encoders may compute other
vectors: they are never mixed into one file), and embed says so before computing, naming what
differs and, for a precision, how to resume from them; so it does for the checkpoints of this very
shard and settings in the default folder when --checkpoint-dir names another one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import virnucpro.embed
from virnucpro import __version__
from virnucpro import prepared as fmt
from virnucpro.embed import CheckpointStore, embed
from checkpoint_helpers import read_h5

EVERY = 4  # records per checkpoint window: shard 0 (60 records) leaves 15 parts


def shard(prepared: Path) -> Path:
    return prepared / "shards" / fmt.shard_name(0)


def kept_checkpoints(out: Path, prepared: Path, models: Path, monkeypatch, **settings) -> Path:
    """The key folder of shard 0 embedded into `out` with `settings`, every part kept and the output
    deleted, as an embed stopped at its last window leaves them."""
    threads = torch.get_num_threads()
    with monkeypatch.context() as patch:
        patch.setattr(CheckpointStore, "remove", CheckpointStore.close)
        embed(shard(prepared), out, models=models, device="cpu", checkpoint_every=EVERY, threads=1, **settings)
    torch.set_num_threads(threads)
    out.unlink()
    (folder,) = Path(settings.get("checkpoint_dir") or out.with_name(out.name + ".ckpt")).iterdir()
    assert len(list(folder.glob("part_*.npz"))) > 2
    return folder


def embed_cli(run_cli, prepared: Path, models: Path, out: Path, *more) -> tuple[int, str]:
    return run_cli("embed", shard(prepared), "--models", models, "--out", out, "--device", "cpu",
                   "--checkpoint-every", EVERY, "--threads", 1, *more)


def assert_computed_whole(code: int, message: str) -> None:
    assert code == 0, message
    assert "resuming from checkpoint" not in message, message


def test_checkpoints_of_another_precision_are_named_with_the_way_to_resume(tmp_path, run_cli, golden_prepared,
                                                                           tiny_models, monkeypatch):
    folder = kept_checkpoints(tmp_path / "s.h5", golden_prepared, tiny_models, monkeypatch)
    code, message = embed_cli(run_cli, golden_prepared, tiny_models, tmp_path / "s.h5", "--precision", "bf16")
    assert_computed_whole(code, message)
    assert (f"{folder} holds checkpoints of this shard made with --precision fp32 (this run: bf16): not used; "
            "give --precision fp32 to resume from them") in message, message


def test_following_the_precision_hint_resumes(tmp_path, run_cli, golden_prepared, tiny_models, monkeypatch):
    kept_checkpoints(tmp_path / "s.h5", golden_prepared, tiny_models, monkeypatch)
    code, message = embed_cli(run_cli, golden_prepared, tiny_models, tmp_path / "s.h5", "--precision", "fp32")
    assert code == 0 and "resuming from checkpoint" in message, message


def test_checkpoints_of_another_virnucpro_are_not_mixed_in(tmp_path, run_cli, golden_prepared, tiny_models,
                                                           monkeypatch):
    """Parts of 0.1.0 were resumed by this version without a word, and the file named this version
    only: a run upgraded between a kill and its retry mixed two versions' vectors."""
    monkeypatch.setattr(virnucpro.embed, "__version__", "0.1.0")
    folder = kept_checkpoints(tmp_path / "s.h5", golden_prepared, tiny_models, monkeypatch)
    monkeypatch.undo()
    code, message = embed_cli(run_cli, golden_prepared, tiny_models, tmp_path / "s.h5")
    assert_computed_whole(code, message)
    assert (f"{folder} holds checkpoints of this shard made with virnucpro 0.1.0 (this is {__version__}: vectors "
            "of another version are never mixed in): not used") in message, message
    assert "precision or virnucpro version" in message and "with the same virnucpro" in message, message
    fresh = tmp_path / "fresh" / "s.h5"
    assert embed_cli(run_cli, golden_prepared, tiny_models, fresh)[0] == 0
    for mine, theirs in zip(read_h5(tmp_path / "s.h5")[:3], read_h5(fresh)[:3]):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))


def test_checkpoints_in_the_default_folder_are_named_when_another_is_given(tmp_path, run_cli, golden_prepared,
                                                                            tiny_models, monkeypatch):
    default = kept_checkpoints(tmp_path / "s.h5", golden_prepared, tiny_models, monkeypatch)
    code, message = embed_cli(run_cli, golden_prepared, tiny_models, tmp_path / "s.h5", "--checkpoint-dir",
                              tmp_path / "elsewhere")
    assert_computed_whole(code, message)
    hint = f"(move the folder {default} into {tmp_path / 'elsewhere'} to resume from them)"
    assert (f"{default} holds checkpoints of this shard with these models and precision, but --checkpoint-dir "
            f"names {tmp_path / 'elsewhere'}: they are not used {hint}") in message, message
    (tmp_path / "s.h5").unlink()
    shutil.move(str(default), str(tmp_path / "elsewhere"))  # the hint, followed
    code, message = embed_cli(run_cli, golden_prepared, tiny_models, tmp_path / "s.h5", "--checkpoint-dir",
                              tmp_path / "elsewhere")
    assert code == 0 and "resuming from checkpoint" in message and "not used" not in message, message


def test_the_default_folder_named_as_checkpoint_dir_is_no_other_folder(tmp_path, run_cli, golden_prepared,
                                                                       tiny_models, monkeypatch):
    """`--checkpoint-dir $PWD/s.h5.ckpt` is the default folder spelt otherwise: no "not used" said."""
    default = kept_checkpoints(tmp_path / "s.h5", golden_prepared, tiny_models, monkeypatch)
    monkeypatch.chdir(tmp_path)
    code, message = embed_cli(run_cli, golden_prepared, tiny_models, Path("s.h5"), "--checkpoint-dir",
                              default.parent.resolve())
    assert code == 0 and "resuming from checkpoint" in message and "not used" not in message, message


def test_checkpoints_of_a_virnucpro_before_versioned_keys_are_named(tmp_path, run_cli, golden_prepared, tiny_models,
                                                                    monkeypatch):
    """Their key has no version and their folder records no identity (0.1.0's, say): found by that key."""
    identity = virnucpro.embed.checkpoint_identity
    monkeypatch.setattr(virnucpro.embed, "checkpoint_identity",
                        lambda *args: {key: value for key, value in identity(*args).items() if key != "version"})
    monkeypatch.setattr(CheckpointStore, "_write_identity", lambda self: None)
    folder = kept_checkpoints(tmp_path / "s.h5", golden_prepared, tiny_models, monkeypatch)
    monkeypatch.undo()
    current = folder.parent / ("d" * 64)  # another embed's of this version: it records its identity
    current.mkdir()
    (current / virnucpro.embed.IDENTITY_NAME).write_text(json.dumps({"shard": "0" * 64, "version": __version__}))
    code, message = embed_cli(run_cli, golden_prepared, tiny_models, tmp_path / "s.h5")
    assert_computed_whole(code, message)
    assert (f"{folder} holds checkpoints of this shard written by a virnucpro older than {__version__}"
            in message), message
    # the closing note on what stays does not ask to keep them for a rerun (an upgrade review's case)
    said = " ".join(message.split())
    assert "checkpoints of 2 other embed(s)" in said and f"(1 of them by a virnucpro older than {__version__}" in said


def test_an_identity_file_nested_past_pythons_limit_is_no_failure(tmp_path, run_cli, golden_prepared, tiny_models):
    """JSON nested 60,000 deep (under the 64 KiB read limit) raised RecursionError: exit 1, "a bug"."""
    other = tmp_path / "s.h5.ckpt" / ("f" * 64)
    other.mkdir(parents=True)
    (other / ".identity.json").write_text("[" * 60000)
    code, message = embed_cli(run_cli, golden_prepared, tiny_models, tmp_path / "s.h5")
    assert code == 0, message


@pytest.mark.parametrize("settings", [{}, {"precision": "bf16"}])
def test_a_key_folder_records_what_it_was_made_with_and_nothing_is_said_of_it_when_resumed(
        tmp_path, run_cli, golden_prepared, tiny_models, monkeypatch, settings):
    folder = kept_checkpoints(tmp_path / "s.h5", golden_prepared, tiny_models, monkeypatch, **settings)
    assert (folder / ".identity.json").is_file()
    more = ["--precision", settings["precision"]] if settings else []
    code, message = embed_cli(run_cli, golden_prepared, tiny_models, tmp_path / "s.h5", *more)
    assert code == 0 and "resuming from checkpoint" in message and "not used" not in message, message
    assert not (tmp_path / "s.h5.ckpt").exists(), "the finished shard's folder, identity included, is removed"
