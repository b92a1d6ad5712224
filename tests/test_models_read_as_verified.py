"""A models file is read as the version the command verified: `run` checks the models before its
prepare (hours, on a pipe) and loads the encoders after it, and predict hashed the classifier for
run_info after loading it. A file replaced or written in between used to compute the results while
the outputs named the sha256 of the file checked."""

from __future__ import annotations

import json
import os

import pytest
import torch
from fault_helpers import ReadsFailPast

from virnucpro import classifier as classifier_module
from virnucpro import embed as embed_module
from virnucpro import prepared as fmt
from virnucpro import run as run_module
from virnucpro.errors import ModelsError
from virnucpro.models import store

TINY_ESM = "esm2_tiny.pt"
TINY_CLASSIFIER = "500_model_tiny.pth"


def _other_esm2(path) -> None:
    """The checkpoint at `path` rewritten in place with one weight matrix scaled: same format, other vectors."""
    data = torch.load(path, weights_only=False)
    key = next(k for k, v in data["model"].items() if v.is_floating_point() and v.dim() == 2)
    data["model"][key] = data["model"][key] * 3.0
    torch.save(data, path)


def _other_classifier(path, into) -> None:
    """The classifier at `path` with its virus bias raised, saved the original way at `into`."""
    model = classifier_module.load_classifier(path)
    with torch.no_grad():
        model.output_layer.bias[1] += 5.0
    classifier_module.save_original_way(model, into)


@pytest.fixture
def shard_path(golden_prepared):
    return golden_prepared / fmt.load_manifest(golden_prepared)["shards"][0]["file"]


@pytest.fixture
def run_changing(tmp_path, reference_dir, models, run_cli, monkeypatch):
    """`run` on the models copy whose file `change(models)` alters right after its prepare (when the
    models have been checked and before the encoders load); returns (exit code, message)."""
    def start(change):
        prepare_once = run_module._prepare_once

        def prepare_then_change(*args, **kwargs):
            done = prepare_once(*args, **kwargs)
            change(models)
            return done
        monkeypatch.setattr(run_module, "_prepare_once", prepare_then_change)
        return run_cli("run", reference_dir / "vanilla/test_with_orfs.fa", "--outdir", tmp_path / "r",
                       "--models", models, "--device", "cpu")
    return start


def test_an_encoder_rewritten_after_the_check_is_exit_4_not_embedded_under_the_old_checksum(run_changing, tmp_path):
    code, message = run_changing(lambda models: _other_esm2(models / TINY_ESM))
    said = " ".join(message.split())
    assert code == 4, message
    assert TINY_ESM in said and "changed after virnucpro verified it" in said, message
    assert not (tmp_path / "r" / "run_info.json").exists()


def test_an_encoder_replaced_by_rename_after_the_check_is_exit_4(run_changing, tmp_path):
    def replace(models):
        other = models / "other.pt"
        other.write_bytes((models / TINY_ESM).read_bytes())
        _other_esm2(other)
        os.replace(other, models / TINY_ESM)
    code, message = run_changing(replace)
    assert code == 4 and "changed after virnucpro verified it" in " ".join(message.split()), message


def test_a_chmod_or_a_hard_link_after_the_check_changes_nothing(run_changing, tmp_path):
    def touched(models):
        os.chmod(models / TINY_ESM, 0o644)  # the ctime changes, not the bytes
        os.link(models / "DNABERT-S-tiny" / "model.safetensors", tmp_path / "backup.safetensors")
    code, message = run_changing(touched)
    assert code == 0, message


def test_weights_written_in_place_while_a_shard_is_computed_are_exit_4(shard_path, models, run_cli, monkeypatch,
                                                                         tmp_path):
    """On the CPU the ESM-2 weights stay memory-mapped from the file: written in place meanwhile,
    they would change under the computation; checked again before the shard is written."""
    compute = embed_module._compute

    def computed_then_written(*args, **kwargs):
        done = compute(*args, **kwargs)
        _other_esm2(models / TINY_ESM)
        return done
    monkeypatch.setattr(embed_module, "_compute", computed_then_written)
    code, message = run_cli("embed", shard_path, "--models", models, "--out", tmp_path / "s.h5", "--device", "cpu")
    assert code == 4 and "changed after virnucpro verified it" in " ".join(message.split()), message
    assert not (tmp_path / "s.h5").exists()


def test_run_scores_with_the_classifier_it_checked_and_records_its_checksum(run_changing, tmp_path, models):
    checked = store.sha256_file(models / TINY_CLASSIFIER)
    code, message = run_changing(lambda folder: _other_classifier(folder / TINY_CLASSIFIER, folder / TINY_CLASSIFIER))
    assert code == 0, message
    assert store.sha256_file(models / TINY_CLASSIFIER) != checked  # the file did change
    info = json.loads((tmp_path / "r" / "run_info.json").read_text())
    assert info["classifier"]["sha256"] == checked


def test_predict_refuses_a_classifier_written_while_it_was_loaded(tmp_path, golden_prepared, golden_embeddings,
                                                                     tiny_models, run_cli, monkeypatch):
    mine, other = tmp_path / "mine.pth", tmp_path / "other.pth"
    mine.write_bytes((tiny_models / TINY_CLASSIFIER).read_bytes())
    _other_classifier(mine, other)
    unpickled = classifier_module._model_from_unpickled

    def loaded_then_written(obj, path):
        model = unpickled(obj, path)
        mine.write_bytes(other.read_bytes())
        return model
    monkeypatch.setattr(classifier_module, "_model_from_unpickled", loaded_then_written)
    code, message = run_cli("predict", "--prepared", golden_prepared, "--embeddings", *golden_embeddings,
                            "--outdir", tmp_path / "out", "--classifier", mine)
    assert code == 4 and "changed while virnucpro read it" in " ".join(message.split()), message


def test_predicts_run_info_names_the_checksum_of_the_classifier_file_loaded(tmp_path, golden_prepared,
                                                                              golden_embeddings, tiny_models, run_cli):
    mine = tmp_path / "mine.pth"
    _other_classifier(tiny_models / TINY_CLASSIFIER, mine)
    code, message = run_cli("predict", "--prepared", golden_prepared, "--embeddings", *golden_embeddings,
                            "--outdir", tmp_path / "out", "--classifier", mine)
    assert code == 0, message
    info = json.loads((tmp_path / "out" / "run_info.json").read_text())
    assert info["classifier"]["sha256"] == store.sha256_file(mine)


def test_a_file_verified_then_replaced_is_refused_by_its_loader(models):
    path = models / TINY_ESM
    assert store.HashCache(models, use=False).sha256(models, TINY_ESM) == store.verified_digest(path)
    with store.verified_name(path):
        pass  # unchanged: read as it is
    _other_esm2(path)
    with pytest.raises(ModelsError, match="changed after virnucpro verified it"):
        with store.verified_name(path):
            pass
    store.forget_verified()
    with store.verified_name(path):  # a new command verifies it again before reading it
        pass


def test_a_prepare_shard_given_as_an_embedding_is_named_so(tmp_path, golden_prepared, golden_embeddings, run_cli):
    shard = golden_prepared / fmt.load_manifest(golden_prepared)["shards"][0]["file"]
    code, message = run_cli("predict", "--prepared", golden_prepared, "--embeddings", shard, *golden_embeddings[1:],
                            "--outdir", tmp_path / "out", "--classifier", "unused.pth")
    said = " ".join(message.split())
    assert code == 5 and "written by `virnucpro prepare`, not its embedding" in said, message
    assert "delete" not in said and shard.is_file()


def _reads_fail_after(monkeypatch, name: str, successes: int) -> None:
    """Every open of a file called `name` fails with an I/O error once `successes` opens of it worked (a
    disk or network file system failing while the models are read)."""
    import builtins
    import errno

    real, opened = builtins.open, []

    def failing(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file).endswith(name):
            opened.append(file)
            if len(opened) > successes:
                raise OSError(errno.EIO, os.strerror(errno.EIO), os.fspath(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", failing)


def test_an_encoder_checkpoint_the_storage_fails_to_read_is_no_damaged_file_to_replace(models, monkeypatch):
    """Scanning its pickles, a read error was "not a readable torch checkpoint ... replace it" (11 GB of
    ESM-2 downloaded again for a flaky disk), or, hidden by zipfile.is_zipfile, "it holds no pickle"."""
    _reads_fail_after(monkeypatch, "esm2_tiny.pt", 0)
    with pytest.raises(store.ModelsReadError) as refused:
        store.code_in_weights(models / "esm2_tiny.pt")
    assert "Input/output error" in str(refused.value) and refused.value.hint == store.READ_FAILED_HINT


@pytest.mark.parametrize("successes", [1, 2, 3])
def test_a_classifier_the_storage_fails_to_read_is_said_so_at_each_step_of_loading(models, monkeypatch, successes):
    """Past its checksum, a read error was exit 10 "choose another output location", or "not an original
    .pth" refused by the loader, with `virnucpro models tiny` (writing over the folder) as the fix."""
    _reads_fail_after(monkeypatch, "500_model_tiny.pth", successes)
    with pytest.raises(store.ModelsReadError) as refused:
        classifier_module.load_classifier(models / "500_model_tiny.pth")
    assert refused.value.hint == store.READ_FAILED_HINT, refused.value


def test_an_encoder_checkpoint_whose_end_the_storage_fails_to_read_is_no_damaged_file(models, monkeypatch):
    """zipfile takes a failed read of a zip's end record for "File is not a zip file": the checkpoint was
    called damaged, to be replaced."""
    import builtins
    import io

    real = builtins.open

    def opened(file, mode="r", *args, **kwargs):
        handle = real(file, mode, *args, **kwargs)
        named = isinstance(file, (str, os.PathLike)) and os.fspath(file).endswith("esm2_tiny.pt")
        return ReadsFailPast(handle, os.fstat(handle.fileno()).st_size - 100) if named and "b" in mode else handle

    monkeypatch.setattr(builtins, "open", opened)
    monkeypatch.setattr(io, "open", opened)
    with pytest.raises(store.ModelsReadError) as refused:
        store.code_in_weights(models / "esm2_tiny.pt")
    assert refused.value.hint == store.READ_FAILED_HINT, refused.value
