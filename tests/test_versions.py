"""Stage files of another format version: refused with exit 5, saying which side is older and what
to do (a newer file needs the virnucpro that wrote it; an older one is made again, in the pipeline
without -resume), for the prepare manifest, a prepare shard and an embedding file."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from h5_helpers import edited_shard
from virnucpro import __version__, h5shard
from virnucpro import prepared as fmt


@pytest.fixture
def sample(tmp_path, golden_prepared, golden_embeddings) -> tuple[Path, list[Path]]:
    prepared = tmp_path / "prepared"
    shutil.copytree(golden_prepared, prepared)
    copies = [Path(shutil.copy(path, tmp_path / path.name)) for path in golden_embeddings]
    return prepared, copies


def _set_manifest_version(prepared: Path, embeddings: list[Path], version: int) -> Path:
    manifest = json.loads((prepared / fmt.MANIFEST).read_text())
    manifest["format_version"] = version
    (prepared / fmt.MANIFEST).write_text(json.dumps(manifest))
    return prepared / fmt.MANIFEST


def _set_shard_header_version(prepared: Path, embeddings: list[Path], version: int) -> Path:
    shard = prepared / "shards" / "shard_00000.tsv"
    lines = shard.read_text().splitlines(keepends=True)
    lines[0] = lines[0].replace(f"format_version={fmt.FORMAT_VERSION}", f"format_version={version}")
    shard.write_text("".join(lines))
    return shard


def _set_h5_version(prepared: Path, embeddings: list[Path], version: int) -> Path:
    with edited_shard(embeddings[0]) as handle:
        handle.attrs["format_version"] = version
    return embeddings[0]


@pytest.mark.parametrize("forge, current", [(_set_manifest_version, fmt.FORMAT_VERSION),
                                            (_set_shard_header_version, fmt.FORMAT_VERSION),
                                            (_set_h5_version, h5shard.FORMAT_VERSION)])
@pytest.mark.parametrize("step, side", [(1, "a newer virnucpro wrote it"), (-1, "an older virnucpro wrote it")])
def test_a_stage_file_of_another_format_says_which_side_is_older(sample, tiny_models, tmp_path, run_cli,
                                                                 forge, current, step, side):
    prepared, embeddings = sample
    forged = forge(prepared, embeddings, current + step)
    if forged.suffix == ".tsv":  # a shard alone is read by embed (predict first finds its sha256 changed)
        code, err = run_cli("embed", forged, "--models", tiny_models, "--out", tmp_path / "s.h5", "--device", "cpu")
    else:
        code, err = run_cli("predict", "--prepared", prepared, "--embeddings", *embeddings,
                            "--outdir", tmp_path / "out", "--models", tiny_models)
    assert code == 5, err
    assert str(forged) in err and f"format_version {current + step}: {side}" in err, err
    assert f"this one ({__version__}) reads version {current}" in err, err
    if step > 0:
        assert "use the virnucpro that wrote it" in err and "-resume" not in err, err
    else:
        assert "with this version" in err and "without -resume" in err, err


@pytest.mark.parametrize("written_by", ["0.1.0", __version__])
def test_an_output_folder_of_another_version_is_named_as_such(tmp_path, reference_dir, run_cli, written_by):
    """A folder an older virnucpro wrote, holding files this one cannot prove it wrote: one refusal
    naming both versions, whose fix is the folder (it took one rerun per refusal to find out)."""
    outdir = tmp_path / "prepared"
    fasta = reference_dir / "golden" / "mixed.fa"
    assert run_cli("prepare", fasta, "--outdir", outdir)[0] == 0
    marker = json.loads((outdir / ".virnucpro.json").read_text())
    (outdir / ".virnucpro.json").write_text(json.dumps({**marker, "virnucpro_version": written_by}))
    (outdir / "chunks.tsv").write_text((outdir / "chunks.tsv").read_text() + "\n")
    code, err = run_cli("prepare", fasta, "--outdir", outdir)
    assert code == 3 and "chunks.tsv" in err, err
    if written_by != __version__:
        assert f"was written by virnucpro {written_by}, and this is {__version__}" in err, err
        assert "move that folder away or delete it" in err, err
    else:
        assert "was written by" not in err and "which virnucpro did not write" in err, err


@pytest.mark.parametrize("value", [None, "3", True, 2.0])
def test_a_format_version_that_is_no_whole_number_is_malformed_not_older(sample, tiny_models, tmp_path, run_cli,
                                                                         value):
    prepared, embeddings = sample
    manifest = json.loads((prepared / fmt.MANIFEST).read_text())
    (prepared / fmt.MANIFEST).write_text(json.dumps({**manifest, "format_version": value}))
    code, err = run_cli("predict", "--prepared", prepared, "--embeddings", *embeddings,
                        "--outdir", tmp_path / "out", "--models", tiny_models)
    assert code == 5 and "not a whole number" in err and "older virnucpro" not in err and "-resume" not in err, err


def test_predict_says_when_it_scores_embeddings_another_version_wrote(sample, tiny_models, tmp_path, run_cli):
    """A review's case: `embed` never reuses another version's embedding file, yet `predict` scored one
    (same format) without a word, and run_info.json named predict's version only."""
    prepared, embeddings = sample
    common = ["--prepared", prepared, "--embeddings", *embeddings, "--models", tiny_models]
    code, err = run_cli("predict", *common, "--outdir", tmp_path / "same")
    assert code == 0 and "written by virnucpro" not in err, err
    with edited_shard(embeddings[-1]) as handle:
        handle.attrs["virnucpro_version"] = "0.1.0"
    code, err = run_cli("predict", *common, "--outdir", tmp_path / "other")
    assert code == 0, err
    said = " ".join(err.split())
    assert f"1 embedding shard(s) were written by virnucpro 0.1.0, this is {__version__}: {embeddings[-1]};" in said, err
    for path in embeddings[:4]:
        with edited_shard(path) as handle:
            handle.attrs["virnucpro_version"] = "0.1.1"
    code, err = run_cli("predict", *common, "--outdir", tmp_path / "five")
    said = " ".join(err.split())
    assert (f"5 embedding shard(s) were written by virnucpro 0.1.0, 0.1.1, this is {__version__}: "
            f"{embeddings[0]}, {embeddings[1]}, {embeddings[2]} and 2 more;") in said, err
    same, other = (json.loads((tmp_path / name / "run_info.json").read_text()) for name in ("same", "other"))
    assert same["stage_versions"] == {"prepare": __version__, "embed": [__version__]}, same
    assert other["stage_versions"] == {"prepare": __version__, "embed": sorted(["0.1.0", __version__])}, other


def test_predict_says_when_it_scores_a_prepare_folder_another_version_wrote(sample, tiny_models, tmp_path, run_cli):
    """A version-skew review's case: a prepare folder of 0.1.0 (which let through ids that only look
    alike, refused since) was scored without a word, where embedding files of another version are
    named."""
    prepared, embeddings = sample
    common = ["--prepared", prepared, "--embeddings", *embeddings, "--models", tiny_models]
    code, err = run_cli("predict", *common, "--outdir", tmp_path / "same")
    assert code == 0 and "was prepared by virnucpro" not in err, err
    _set_manifest_field(prepared, "virnucpro_version", "0.1.0")
    code, err = run_cli("predict", *common, "--outdir", tmp_path / "other")
    said = " ".join(err.split())
    assert code == 0 and f"{prepared} was prepared by virnucpro 0.1.0, this is {__version__}" in said, err
    assert "prepare the input again with this version" in said, err


def _set_manifest_field(prepared: Path, key: str, value) -> None:
    manifest = json.loads((prepared / fmt.MANIFEST).read_text())
    (prepared / fmt.MANIFEST).write_text(json.dumps({**manifest, key: value}))

def test_an_older_embedding_file_is_refused_naming_its_format(tmp_path, run_cli, sample, tiny_models):
    """An upgrade review's case: an embedding file of a virnucpro before sealed files (format 1 or 2:
    HDF5 from its first byte) was "not a valid virnucpro embedding shard", no format named, though the
    docs promise both formats named."""
    import h5py

    prepared, _embeddings = sample
    old = tmp_path / "old.h5"
    with h5py.File(old, "w") as handle:
        handle.attrs["format_version"] = 2
        handle.attrs["virnucpro_version"] = "0.1.0"
    code, err = run_cli("predict", "--prepared", prepared, "--embeddings", old, "--outdir", tmp_path / "out",
                        "--models", tiny_models)
    assert code == 5 and "has format_version 2: an older virnucpro wrote it" in err and "reads version 3" in err, err
    assert "rerun `virnucpro embed`" in err, err
    with h5py.File(old, "w") as handle:  # this format, but no seal: no older virnucpro's, whatever it is
        handle.attrs["format_version"] = 3
    code, err = run_cli("predict", "--prepared", prepared, "--embeddings", old, "--outdir", tmp_path / "out",
                        "--models", tiny_models)
    assert code == 5 and "older virnucpro wrote it" not in err and "does not start with the seal" in err, err


def test_an_embedding_file_of_a_newer_virnucpro_is_named_so_never_one_to_delete(tmp_path, run_cli, sample,
                                                                              tiny_models):
    """A version-skew review's case: a newer virnucpro's embedding file (a seal of another version, or
    an unsealed file of a newer format) was called cut short or an older one's, and the fix said to
    delete it; it needs the virnucpro that wrote it."""
    import h5py

    prepared, embeddings = sample
    unsealed = tmp_path / "unsealed.h5"
    with h5py.File(unsealed, "w") as handle:
        handle.attrs["format_version"] = h5shard.FORMAT_VERSION + 1
    newer_seal = tmp_path / "newer_seal.h5"
    data = bytearray(embeddings[0].read_bytes())
    assert data.startswith(h5shard.SEAL_MAGIC)
    data[len(h5shard.SEAL_MAGIC) - 2:len(h5shard.SEAL_MAGIC) - 1] = b"2"
    newer_seal.write_bytes(bytes(data))
    for path, what in ((unsealed, f"has format_version {h5shard.FORMAT_VERSION + 1}"),
                       (newer_seal, "has seal format_version 2")):
        code, err = run_cli("predict", "--prepared", prepared, "--embeddings", path, "--outdir", tmp_path / "out",
                            "--models", tiny_models)
        said = " ".join(err.split())
        assert code == 5 and f"{path} {what}: a newer virnucpro wrote it" in said, err
        assert "use the virnucpro that wrote it" in said and "delete" not in said, err
    cut = tmp_path / "cut.h5"  # a seal line cut before its line's end: no version read from it
    cut.write_bytes(h5shard.SEAL_MAGIC[:-2] + b"23")
    code, err = run_cli("predict", "--prepared", prepared, "--embeddings", cut, "--outdir", tmp_path / "out",
                        "--models", tiny_models)
    assert code == 5 and "newer" not in err and "does not start with the seal" in " ".join(err.split()), err

def test_a_run_work_folder_holding_an_older_checkpoint_lock_is_resumed(tmp_path, run_cli, reference_dir,
                                                                       tiny_models, monkeypatch):
    """An upgrade review's case: 0.1.0 named its checkpoint folder's lock `lock` (until Nov 30); `run`
    refused its own work folder holding one, saying virnucpro never writes that file there."""
    from virnucpro import predict as predict_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "r"
    command = ("run", reference_dir / "golden/mixed.fa", "--outdir", out, "--models", tiny_models, "--device", "cpu",
               "--threads", "1")
    with monkeypatch.context() as patch:  # a run that stops with its work kept
        patch.setattr(predict_module, "write_tables", full)
        assert run_cli(*command)[0] == 10
    older = out / ".virnucpro-work" / "checkpoints" / ("c" * 64)
    older.mkdir(parents=True)
    (older / "mylock").write_text("")  # a name like it is no file of virnucpro's: refused, kept
    code, message = run_cli(*command)
    assert code == 3 and "mylock" in message and (older / "mylock").exists(), message
    (older / "mylock").rename(older / "lock")
    code, message = run_cli(*command)
    assert code == 0 and "already done, reusing it" in message, message
    assert not (out / ".virnucpro-work").exists()


def _predict(run_cli, sample, outdir: Path, tiny_models) -> tuple[int, str]:
    prepared, embeddings = sample
    return run_cli("predict", "--prepared", prepared, "--embeddings", *embeddings, "--models", tiny_models,
                   "--outdir", outdir)


def _record_as_written_by(outdir: Path, version: str) -> None:
    """The results in `outdir` as another version wrote them: its run_info, and the folder's record of it."""
    run_info = outdir / "run_info.json"
    run_info.write_text(json.dumps({**json.loads(run_info.read_text()), "virnucpro_version": version}))
    marker = json.loads((outdir / ".virnucpro.json").read_text())
    marker["files"]["run_info.json"] = [run_info.lstat().st_size, run_info.lstat().st_mtime_ns]
    (outdir / ".virnucpro.json").write_text(json.dumps(marker))


def test_predict_says_it_replaces_earlier_results_and_which_version_wrote_them(sample, tiny_models, tmp_path,
                                                                              run_cli):
    """A review's leftover: `run` said it would replace an earlier run's results, a standalone predict
    replaced them (an older version's too) without a word."""
    out = tmp_path / "out"
    code, message = _predict(run_cli, sample, out, tiny_models)
    assert code == 0 and "replacing" not in message, message
    finished = json.loads((out / "run_info.json").read_text())["finished"]
    code, message = _predict(run_cli, sample, out, tiny_models)
    assert code == 0, message
    assert f"replacing the earlier results in {out} (finished {finished}) when this predict succeeds" in message
    _record_as_written_by(out, "0.1.5")
    code, message = _predict(run_cli, sample, out, tiny_models)
    assert code == 0 and f"replacing the earlier results of virnucpro 0.1.5 in {out}" in message, message
    assert json.loads((out / "run_info.json").read_text())["virnucpro_version"] == __version__
