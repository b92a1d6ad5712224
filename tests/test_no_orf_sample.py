"""A sample with no ORF flows through embed and predict (CONTRACTS.md) without either encoder loaded:
its shard has no record to embed, and loading ESM-2 3B for it cost tens of seconds, gigabytes and, at
fp16, a 5.6 GB copy written into the models folder."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest

from virnucpro import embed as embed_module
from virnucpro.models import store

ALL_N = ">a\n" + "N" * 400 + "\n>b\nAC\n"  # no ORF: all N, and shorter than a codon


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any load of the encoders fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("an encoder was loaded for a shard without records")

    monkeypatch.setattr(embed_module, "_load_encoders_cached", refuse)


def configured_widths(models: Path) -> tuple[int, int]:
    """The widths the tiny models are built with, read as their writer recorded them."""
    import torch

    config = json.loads(next(models.glob("*/config.json")).read_text())
    weights = next(path for path in models.glob("*.pt") if "contact" not in path.name)
    state = torch.load(weights, map_location="cpu", weights_only=False, mmap=True)["model"]
    return config["hidden_size"], next(value.shape[1] for key, value in state.items() if key.endswith("embed_tokens.weight"))


def test_embed_writes_a_shard_without_records_with_the_models_widths_and_loads_neither(
        tmp_path, run_cli, tiny_models, no_model_loads):
    reads = tmp_path / "allN.fa"
    reads.write_text(ALL_N)
    assert run_cli("prepare", reads, "--outdir", tmp_path / "prep")[0] == 0
    code, message = run_cli("embed", tmp_path / "prep" / "shards" / "shard_00000.tsv", "--models", tiny_models,
                            "--out", tmp_path / "e.h5", "--device", "cpu")
    assert code == 0 and "no model loaded" in message, message
    with h5py.File(tmp_path / "e.h5") as handle:
        widths = (handle["dnabert_s"].shape[1], handle["esm2"].shape[1])
        assert handle["ids"].shape == (0,) and handle.attrs["attention"] == "" and handle.attrs["device"] == "cpu"
    assert widths == configured_widths(tiny_models)
    code, message = run_cli("predict", "--prepared", tmp_path / "prep", "--embeddings", tmp_path / "e.h5",
                            "--models", tiny_models, "--outdir", tmp_path / "out")
    assert code == 0, message
    rows = (tmp_path / "out" / "sequences.tsv").read_text().splitlines()[1:]
    assert [row.split("\t")[0] for row in rows] == ["a", "b"] and all("no_orf" in row for row in rows), rows


def test_run_of_a_sample_without_orfs_loads_neither_model_and_records_no_attention_path(
        tmp_path, run_cli, tiny_models, no_model_loads):
    reads = tmp_path / "allN.fa"
    reads.write_text(ALL_N)
    code, message = run_cli("run", reads, "--models", tiny_models, "--outdir", tmp_path / "out", "--device", "cpu")
    assert code == 0 and "no model loaded" in message, message
    info = json.loads((tmp_path / "out" / "run_info.json").read_text())
    assert info["attention_path"] == [] and info["device"] == ["cpu"] and info["counts"]["orfs"] == 0, info


def damage_dnabert_config(models: Path, change) -> None:
    """config.json changed by `change`, and recorded in the manifest as a new download would record it
    (so that the check under test, not the checksum, refuses it)."""
    config = next(models.glob("*/config.json"))
    settings = json.loads(config.read_text())
    change(settings)
    config.chmod(0o644)
    config.write_text(json.dumps(settings))
    manifest = store.read_manifest(models)
    manifest["models"]["dnabert_s"]["sha256"][f"{config.parent.name}/config.json"] = store.sha256_file(config)
    store.write_manifest(models, manifest)


def damage_esm2_settings(models: Path) -> None:
    """ESM-2's embed dim set to a width its weights do not have, recorded in the manifest."""
    import torch

    weights = next(path for path in models.glob("*.pt") if "contact" not in path.name)
    data = torch.load(weights, map_location="cpu", weights_only=False)
    data["cfg"]["model"].encoder_embed_dim += 8
    weights.chmod(0o644)
    torch.save(data, weights)
    manifest = store.read_manifest(models)
    manifest["models"]["esm2"]["sha256"][weights.name] = store.sha256_file(weights)
    store.write_manifest(models, manifest)


@pytest.mark.parametrize("damage, expected", [
    (lambda models: damage_dnabert_config(models, lambda settings: settings.pop("hidden_size")),
     "config.json lacks the key hidden_size"),
    (lambda models: damage_dnabert_config(models, lambda settings: settings.update(hidden_size=36)),
     "config.json implies (64, 36)"),
    (damage_esm2_settings, "embed_tokens.weight has shape"),
], ids=["dnabert-no-width", "dnabert-width-not-the-weights", "esm2-width-not-the-weights"])
def test_a_shard_without_records_is_still_refused_for_damaged_models(tmp_path, run_cli, models, no_model_loads,
                                                                      damage, expected):
    """Widths read from the settings are checked as loading checks them, and against the weights'
    shapes (read from their headers): exit 4 naming the file, not an HDF5 of a width the models do not
    have (predict then blamed the classifier)."""
    reads = tmp_path / "allN.fa"
    reads.write_text(ALL_N)
    assert run_cli("prepare", reads, "--outdir", tmp_path / "prep")[0] == 0
    damage(models)
    code, message = run_cli("embed", tmp_path / "prep" / "shards" / "shard_00000.tsv", "--models", models,
                            "--out", tmp_path / "e.h5", "--device", "cpu")
    assert code == 4 and expected in message and "checksum" not in message, message
    assert not (tmp_path / "e.h5").exists()

def as_bert_bin(models: Path, embeddings=None) -> None:
    """DNABERT-S's weights as the pinned real model has them: pytorch_model.bin with "bert."-prefixed
    keys (its token embeddings replaced by `embeddings` when given), recorded in the manifest."""
    import torch
    from safetensors.torch import load_file

    folder = next(models.glob("*/config.json")).parent
    state = {f"bert.{key}": value for key, value in load_file(folder / "model.safetensors").items()}
    if embeddings is not None:
        state["bert.embeddings.word_embeddings.weight"] = embeddings
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    manifest = store.read_manifest(models)
    entry, old, new = manifest["models"]["dnabert_s"], f"{folder.name}/model.safetensors", f"{folder.name}/pytorch_model.bin"
    entry["files"] = [new if name == old else name for name in entry["files"]]
    del entry["sha256"][old]
    entry["sha256"][new] = store.sha256_file(folder / "pytorch_model.bin")
    store.write_manifest(models, manifest)


def embed_all_n(tmp_path: Path, run_cli, models: Path, reads: str = ALL_N) -> tuple[int, str]:
    (tmp_path / "r.fa").write_text(reads)
    assert run_cli("prepare", tmp_path / "r.fa", "--outdir", tmp_path / "prep")[0] == 0
    return run_cli("embed", tmp_path / "prep" / "shards" / "shard_00000.tsv", "--models", models,
                   "--out", tmp_path / "e.h5", "--device", "cpu")


def test_the_width_of_a_bert_prefixed_pytorch_model_bin_is_read_from_its_weights(tmp_path, run_cli, models,
                                                                                  no_model_loads):
    width = configured_widths(models)[0]
    as_bert_bin(models)
    code, message = embed_all_n(tmp_path, run_cli, models)
    assert code == 0 and "no model loaded" in message, message
    with h5py.File(tmp_path / "e.h5") as handle:
        assert handle["dnabert_s"].shape == (0, width)


@pytest.mark.parametrize("records", [ALL_N, ">c\n" + "ATGAAACCCGGGTTTAAA" * 10 + "\n"], ids=["no-orf", "orfs"])
@pytest.mark.parametrize("embeddings, expected", [("wider", "config.json implies"), (5, "holds a int, not a tensor")])
def test_a_pytorch_model_bin_whose_token_embeddings_do_not_fit_is_exit_4(tmp_path, run_cli, models, records,
                                                                         embeddings, expected):
    """Read from the .bin (memory-mapped) for an empty shard, from the loaded weights otherwise: a
    width config.json does not give, or no tensor at all, is exit 4 naming the file, never a crash."""
    import torch

    vocab, width = 64, configured_widths(models)[0]
    as_bert_bin(models, torch.zeros(vocab, 2 * width) if embeddings == "wider" else embeddings)
    code, message = embed_all_n(tmp_path, run_cli, models, records)
    assert code == 4 and "pytorch_model.bin" in message and "word" in message and "Traceback" not in message, message
    assert expected in message or (records != ALL_N and embeddings == "wider" and "has shape (64, 96)" in message), message
    assert not (tmp_path / "e.h5").exists()
