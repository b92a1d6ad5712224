"""Native DNABERT-S against the known answers of the model's own code (reference/dnabert_s_tiny)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from encoder_fixtures import read_fasta
from virnucpro.encoders.dnabert_s import DnabertSEncoder, alibi_slopes
from virnucpro.errors import ExitCode, ModelsError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_dir(reference_dir) -> Path:
    return reference_dir / "dnabert_s_tiny"


@pytest.fixture(scope="module")
def encoder(tiny_dir) -> DnabertSEncoder:
    return DnabertSEncoder(tiny_dir, CPU, torch.float32)


@pytest.fixture(scope="module")
def case(tiny_dir, encoder):
    _, seqs = read_fasta(tiny_dir / "inputs.fa")
    expected = np.load(tiny_dir / "expected_mean_embeddings.npy")
    assert len(seqs) == expected.shape[0] == 40
    return seqs, encoder.tokenize(seqs), expected


def test_width_and_no_unused_heads(encoder):
    assert encoder.name == "dnabert_s" and encoder.width == 48
    keys = encoder.module.state_dict().keys()
    assert not any(k.startswith(("cls", "pooler")) for k in keys)


def test_alibi_slopes_twelve_heads():
    expected = [2.0 ** -k for k in range(1, 9)] + [2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5]
    assert np.allclose(alibi_slopes(12), expected)
    assert np.allclose(alibi_slopes(8), [2.0 ** -k for k in range(1, 9)])


def test_tokenize_matches_hf_fast_tokenizer(tiny_dir, case):
    from transformers import PreTrainedTokenizerFast

    seqs, tokens, _ = case
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tiny_dir / "tokenizer.json"))
    for seq, ids in zip(seqs, tokens):
        assert ids.dtype == np.int64
        assert ids.tolist() == hf(seq)["input_ids"]
        assert ids[0] == 1 and ids[-1] == 2  # [CLS] ... [SEP]


def test_one_by_one_matches_reference(encoder, case):
    _, tokens, expected = case
    got = torch.cat([encoder.embed([t]) for t in tokens]).numpy()
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_batch_matches_reference(encoder, case, packed):
    _, tokens, expected = case
    got = encoder.embed(tokens, packed=packed).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_batch_composition_independence(encoder, case):
    _, tokens, expected = case
    rng = np.random.default_rng(7)
    order = rng.permutation(len(tokens))
    got = np.zeros_like(expected)
    for group in np.array_split(order, 5):
        got[group] = encoder.embed([tokens[i] for i in group]).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # duplicates in one batch get identical answers
    dup = encoder.embed([tokens[3], tokens[3], tokens[0]]).numpy()
    np.testing.assert_allclose(dup[0], dup[1], atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_close_to_fp32(tiny_dir, case, dtype):
    _, tokens, expected = case
    enc = DnabertSEncoder(tiny_dir, CPU, dtype)
    got = enc.embed(tokens)
    assert got.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(got, torch.from_numpy(expected))
    assert cos.min() > 0.999


def _copy(tiny_dir: Path, dest: Path, state: dict | None = None, binfile: bool = False) -> Path:
    dest.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(tiny_dir / name, dest / name)
    state = load_file(str(tiny_dir / "model.safetensors")) if state is None else state
    if binfile:
        torch.save(state, dest / "pytorch_model.bin")
    else:
        save_file(state, str(dest / "model.safetensors"))
    return dest


def test_bert_prefix_mlm_head_and_bin_accepted(tiny_dir, case, tmp_path):
    _, tokens, expected = case
    state = {"bert." + k: v for k, v in load_file(str(tiny_dir / "model.safetensors")).items()}
    state["cls.predictions.bias"] = torch.zeros(64)
    state["cls.predictions.transform.dense.weight"] = torch.zeros(48, 48)
    for binfile in (False, True):
        folder = _copy(tiny_dir, tmp_path / f"m{int(binfile)}", state, binfile=binfile)
        got = DnabertSEncoder(folder, CPU, torch.float32).embed(tokens[:5]).numpy()
        np.testing.assert_allclose(got, expected[:5], atol=1e-5, rtol=0)


def _expect_models_error(folder: Path, *fragments: str) -> None:
    with pytest.raises(ModelsError) as info:
        DnabertSEncoder(folder, CPU, torch.float32)
    assert info.value.code == ExitCode.MODELS == 4
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_missing_key(tiny_dir, tmp_path):
    state = load_file(str(tiny_dir / "model.safetensors"))
    del state["encoder.layer.1.mlp.wo.bias"]
    _expect_models_error(_copy(tiny_dir, tmp_path / "m", state), "model.safetensors", "missing",
                         "encoder.layer.1.mlp.wo.bias")


def test_unexpected_key(tiny_dir, tmp_path):
    state = load_file(str(tiny_dir / "model.safetensors"))
    state["encoder.layer.2.mlp.wo.bias"] = torch.zeros(48)
    _expect_models_error(_copy(tiny_dir, tmp_path / "m", state), "unexpected",
                         "encoder.layer.2.mlp.wo.bias")


def test_shape_mismatch_with_config(tiny_dir, tmp_path):
    folder = _copy(tiny_dir, tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] = 64
    (folder / "config.json").write_text(json.dumps(cfg))
    _expect_models_error(folder, "shape")


def test_corrupt_and_missing_files(tiny_dir, tmp_path):
    folder = _copy(tiny_dir, tmp_path / "m")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    _expect_models_error(folder, "model.safetensors")
    (folder / "model.safetensors").unlink()
    _expect_models_error(folder, "model.safetensors", "pytorch_model.bin")
    _expect_models_error(tmp_path / "absent", "absent")
    folder2 = _copy(tiny_dir, tmp_path / "m2")
    (folder2 / "tokenizer.json").write_text("{not json")
    _expect_models_error(folder2, "tokenizer.json")
    (folder2 / "tokenizer.json").unlink()
    _expect_models_error(folder2, "tokenizer.json")


def test_bad_token_ids_refused(encoder):
    with pytest.raises(ValueError):
        encoder.embed([np.array([1, 999, 2])])
    assert encoder.embed([]).shape == (0, 48)


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_code_in_weights_is_refused(tiny_dir, tmp_path, capsys):
    folder = _copy(tiny_dir, tmp_path / "m", binfile=True)
    torch.save({"embeddings.word_embeddings.weight": _Payload()}, folder / "pytorch_model.bin")
    _expect_models_error(folder, "pytorch_model.bin", "print")
    assert "code ran" not in capsys.readouterr().out


# --- found by a hostile review: nonsense in config.json is exit 4, never a crash ------------------

_ABSENT = object()


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory) -> Path:
    """A prepared shard of one short sequence: what `embed` reads."""
    from virnucpro.prepare import prepare

    folder = tmp_path_factory.mktemp("one")
    fasta = folder / "a.fa"
    fasta.write_text(">s0\nATGAAACCCGGGTTTATGAAACCCGGGTTTATGAAACCC\n")
    prepare([fasta], folder / "prep", chunk_size=500)
    return folder / "prep" / "shards" / "shard_00000.tsv"


def _models_with_config(tiny_models: Path, dest: Path, key: str, value) -> Path:
    """A copy of the tiny models whose DNABERT-S config.json has `key` set to `value` (or removed),
    with the manifest vouching for the edited file: only the reading of the config can catch it."""
    shutil.copytree(tiny_models, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    entry = manifest["models"]["dnabert_s"]
    rel = next(f for f in entry["files"] if Path(f).name == "config.json")
    config = json.loads((dest / rel).read_text())
    if value is _ABSENT:
        del config[key]
    else:
        config[key] = value
    (dest / rel).write_text(json.dumps(config))
    entry["sha256"][rel] = hashlib.sha256((dest / rel).read_bytes()).hexdigest()
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


@pytest.mark.parametrize("key, value, shown", [
    ("num_attention_heads", 0, "num_attention_heads is 0"),
    ("num_attention_heads", -1, "num_attention_heads is -1"),
    ("hidden_size", -48, "hidden_size is -48"),
    ("intermediate_size", -4, "intermediate_size is -4"),
    ("num_hidden_layers", 2.5, "num_hidden_layers is 2.5"),
    ("num_hidden_layers", True, "num_hidden_layers is true"),
    ("num_hidden_layers", 10 ** 9, "num_hidden_layers is 1000000000"),
    ("vocab_size", "64", 'vocab_size is "64"'),
    ("layer_norm_eps", "x", 'layer_norm_eps is "x"'),
    ("layer_norm_eps", float("nan"), "layer_norm_eps is NaN"),
    ("type_vocab_size", [1], "type_vocab_size is [1]"),
    ("type_vocab_size", 0, "type_vocab_size is 0"),
    ("hidden_size", 50, "hidden_size 50 is not a multiple of num_attention_heads 12"),
    ("vocab_size", _ABSENT, "lacks the key vocab_size"),
])
def test_nonsense_in_config_json_is_exit_4_naming_key_and_value(tiny_models, one_shard, tmp_path, run_cli,
                                                                 key, value, shown):
    models = _models_with_config(tiny_models, tmp_path / "models", key, value)
    code, message = run_cli("embed", one_shard, "--models", models, "--out", tmp_path / "s.h5", "--device", "cpu")
    assert code == ExitCode.MODELS, message
    assert "config.json" in message and shown in message, message
    assert f"virnucpro models tiny {models}" in message and "Traceback" not in message, message
    assert not (tmp_path / "s.h5").exists()


def test_config_json_that_is_not_an_object_is_exit_4(tiny_dir, tmp_path):
    folder = _copy(tiny_dir, tmp_path / "m")
    (folder / "config.json").write_text("[48, 12]")
    _expect_models_error(folder, "config.json", "not an object")
