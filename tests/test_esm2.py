"""Native ESM-2 against fair-esm's own ESM2 (random weights, real checkpoint layouts)."""

from __future__ import annotations

import argparse
import pickle

import numpy as np
import pytest
import torch

from encoder_fixtures import (  # noqa: F401  (fixtures)
    esm_checkpoints,
    fair_esm_model,
    fair_esm_pooled,
    random_proteins,
    save_esm_checkpoint,
)
from virnucpro.encoders.esm2 import Esm2Encoder, encode_protein
from virnucpro.errors import ExitCode, ModelsError

CPU = torch.device("cpu")
# lengths like ORFs of 300/500 bp chunks, plus edge cases; one past the 1024-residue pooling limit
LENGTHS = [1, 2, 7, 33, 99, 100, 165, 166, 166, 166, 120, 60, 1030]


@pytest.fixture(scope="module")
def proteins():
    return random_proteins(LENGTHS, seed=3)


@pytest.fixture(scope="module")
def reference(fair_esm_model, proteins):
    return fair_esm_pooled(fair_esm_model, proteins)


@pytest.fixture(scope="module", params=["cfg", "args"])
def encoder(request, esm_checkpoints):
    return Esm2Encoder(esm_checkpoints[request.param], CPU, torch.float32)


def test_checkpoint_is_the_real_layout(esm_checkpoints, fair_esm_model, proteins, reference):
    """fair-esm's own loader reads the test checkpoint (torch >= 2.6 needs Namespace allowed)."""
    import esm

    with torch.serialization.safe_globals([argparse.Namespace]):
        model, _ = esm.pretrained.load_model_and_alphabet_local(str(esm_checkpoints["cfg"]))
    model.eval()
    got = fair_esm_pooled(model, proteins[:4])
    torch.testing.assert_close(got, reference[:4], atol=1e-6, rtol=0)


def test_tokenize_matches_batch_converter(fair_esm_model, encoder, proteins):
    convert = fair_esm_model.alphabet.get_batch_converter()
    for seq in proteins[:6] + ["MK<mask>V", "XBUZO"]:
        _, _, toks = convert([("x", seq)])
        assert encode_protein(seq).tolist() == toks[0].tolist()
    assert all(t.dtype == np.int64 for t in encoder.tokenize(proteins))
    with pytest.raises(ValueError):
        encode_protein("MK*")


def test_width_and_no_unused_heads(encoder):
    assert encoder.name == "esm2" and encoder.width == 64 and encoder.num_layers == 3
    keys = encoder.module.state_dict().keys()
    assert not any("lm_head" in k or "contact" in k for k in keys)


def test_one_by_one(encoder, proteins, reference):
    got = torch.cat([encoder.embed([t]) for t in encoder.tokenize(proteins)])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_mixed_batch(encoder, proteins, reference, packed):
    got = encoder.embed(encoder.tokenize(proteins), packed=packed)
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=0)


def test_fair_esm_padded_batch_agrees(fair_esm_model, encoder, proteins, reference):
    short = proteins[:-1]
    batched = fair_esm_pooled(fair_esm_model, short, batched=True)
    got = encoder.embed(encoder.tokenize(short))
    torch.testing.assert_close(got, batched, atol=1e-5, rtol=0)


def test_batch_composition_independence(encoder, proteins, reference):
    tokens = encoder.tokenize(proteins)
    order = np.random.default_rng(11).permutation(len(tokens))
    got = torch.zeros_like(reference)
    for group in np.array_split(order, 4):
        got[torch.as_tensor(group)] = encoder.embed([tokens[i] for i in group])
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=0)


def test_token_dropout_with_mask_tokens(fair_esm_model, encoder):
    seqs = ["MKV<mask>LLA<mask>GG", "ACDEFGHIK"]
    convert = fair_esm_model.alphabet.get_batch_converter()
    expected = []
    with torch.no_grad():
        for seq in seqs:
            _, _, toks = convert([("x", seq)])
            rep = fair_esm_model(toks, repr_layers=[3])["representations"][3]
            expected.append(rep[0, 1:toks.shape[1] - 1].mean(0))
    got = encoder.embed(encoder.tokenize(seqs))
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_close_to_fp32(esm_checkpoints, proteins, reference, dtype):
    enc = Esm2Encoder(esm_checkpoints["cfg"], CPU, dtype)
    got = enc.embed(enc.tokenize(proteins))
    assert got.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(got, reference).min() > 0.999


def _broken(esm_checkpoints, tmp_path, edit) -> ModelsError:
    data = torch.load(esm_checkpoints["cfg"], weights_only=False)
    edit(data)
    path = tmp_path / "broken.pt"
    torch.save(data, path)
    with pytest.raises(ModelsError) as info:
        Esm2Encoder(path, CPU, torch.float32)
    assert info.value.code == ExitCode.MODELS == 4
    assert "broken.pt" in str(info.value)
    return info.value


def test_missing_key(esm_checkpoints, tmp_path):
    err = _broken(esm_checkpoints, tmp_path,
                  lambda d: d["model"].pop("encoder.sentence_encoder.layers.2.fc2.bias"))
    assert "missing" in str(err) and "layers.2.fc2.bias" in str(err)


def test_unexpected_key(esm_checkpoints, tmp_path):
    def edit(d):
        d["model"]["encoder.sentence_encoder.emb_layer_norm_before.weight"] = torch.ones(64)
    err = _broken(esm_checkpoints, tmp_path, edit)
    assert "unexpected" in str(err) and "emb_layer_norm_before" in str(err)


def test_config_mismatch(esm_checkpoints, tmp_path):
    def fewer_layers(d):
        d["cfg"]["model"].encoder_layers = 2
    assert "unexpected" in str(_broken(esm_checkpoints, tmp_path, fewer_layers))

    def bad_heads(d):
        d["cfg"]["model"].encoder_attention_heads = 5
    assert "heads" in str(_broken(esm_checkpoints, tmp_path, bad_heads))

    def no_cfg(d):
        del d["cfg"]
    _broken(esm_checkpoints, tmp_path, no_cfg)


def test_unreadable_files(esm_checkpoints, tmp_path):
    for name, content in (("truncated.pt", esm_checkpoints["cfg"].read_bytes()[:1000]),
                          ("text.pt", b"hello")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelsError, match=name):
            Esm2Encoder(tmp_path / name, CPU, torch.float32)
    with pytest.raises(ModelsError, match="absent.pt"):
        Esm2Encoder(tmp_path / "absent.pt", CPU, torch.float32)


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_code_in_checkpoint_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "cfg": _Payload()}, path, pickle_module=pickle)
    with pytest.raises(ModelsError, match="evil.pt") as info:
        Esm2Encoder(path, CPU, torch.float32)
    assert "print" in str(info.value)
    assert "code ran" not in capsys.readouterr().out


def test_the_tiny_esm2_of_models_tiny_stores_the_standard_rotary_frequencies(tiny_models):
    """Found by mutation: random rotary frequencies in `models tiny`'s ESM-2 went unnoticed (virnucpro
    computes them, fair-esm reads them), so the tiny checkpoint was no longer one both loaders agree on."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(tiny_models / "esm2_tiny.pt", weights_only=True)
    config = checkpoint["cfg"]["model"]
    head = config.encoder_embed_dim // config.encoder_attention_heads
    standard = 1.0 / 10000 ** (torch.arange(0, head, 2, dtype=torch.float32) / head)
    stored = {key: value for key, value in checkpoint["model"].items() if key.endswith("rot_emb.inv_freq")}
    assert len(stored) == config.encoder_layers
    for key, value in stored.items():
        torch.testing.assert_close(value, standard, rtol=0, atol=0, msg=key)
