"""Numbers that load but cannot score: a classifier whose weights are finite yet whose scores are
NaN/Inf is refused when it is loaded (exit 4, naming the file), never after hours of embedding;
and the hint of a non-finite embedding says what to do at the precision that was used."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from virnucpro.classifier import MLPClassifier, load_classifier, predict_proba, save_original_way
from virnucpro.encoders import check_finite
from virnucpro.errors import ExitCode, ModelsError, NumericalError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "example.fa"


def _tiny_state(tiny_models: Path) -> dict[str, torch.Tensor]:
    """A private copy of the tiny 500 classifier's state_dict, to damage."""
    return {k: v.clone() for k, v in load_classifier(tiny_models / "500_model_tiny.pth").state_dict().items()}


def _negative_variance(tiny_models: Path) -> dict[str, torch.Tensor]:
    state = _tiny_state(tiny_models)
    state["bn1.running_var"][0] = -1.0  # finite, but sqrt(var + eps) is NaN: every score NaN
    return state


def _huge_output(tiny_models: Path) -> dict[str, torch.Tensor]:
    state = _tiny_state(tiny_models)
    state["output_layer.weight"].fill_(3e38)  # finite, but the logits overflow float32
    return state


def _save(state: dict[str, torch.Tensor], path: Path, how: str) -> Path:
    """`state` written as a state_dict .pth, a whole model pickled the original way, or safetensors."""
    if how == "state_dict":
        torch.save(dict(state), path)
    elif how == "original":
        model = MLPClassifier(state["hidden_layer.weight"].shape[1], state["hidden_layer.weight"].shape[0])
        model.load_state_dict(state)
        save_original_way(model, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


# --- the loader ------------------------------------------------------------------------------

def _complex_variance(tiny_models: Path) -> dict[str, torch.Tensor]:
    state = _tiny_state(tiny_models)
    state["bn1.running_var"] = state["bn1.running_var"].to(torch.complex64)
    return state


def _no_hidden_units(tiny_models: Path) -> dict[str, torch.Tensor]:
    state = _tiny_state(tiny_models)
    width = state["hidden_layer.weight"].shape[1]
    empty = {"hidden_layer.weight": torch.zeros(0, width), "output_layer.weight": torch.zeros(2, 0)}
    return {key: empty.get(key, value[:0] if key.startswith(("hidden_layer.bias", "bn1.")) and value.dim() else value)
            for key, value in state.items()}


@pytest.mark.parametrize("damage, said", [(_complex_variance, "complex"), (_no_hidden_units, "width 0")])
def test_tensors_no_classifier_can_have_are_refused_at_load_not_a_crash(tmp_path, tiny_models, damage, said):
    """Complex numbers (no order: comparing them raised), a layer without units (the probe's
    BatchNorm raised): exit 4 naming the file, never an unexpected error (exit 1)."""
    path = tmp_path / "odd.pth"
    torch.save(damage(tiny_models), path)
    with pytest.raises(ModelsError) as info:
        load_classifier(path)
    assert str(path) in info.value.message and said in info.value.message, info.value.message


@pytest.mark.parametrize("how", ["state_dict", "original", "safetensors"])
@pytest.mark.parametrize("damage, said", [(_negative_variance, ["bn1.running_var"]),
                                          (_huge_output, ["NaN/Inf", "output_layer"])])  # where overflow shows first
def test_a_classifier_no_training_gives_is_refused_at_load_naming_the_file_and_the_tensor(tmp_path, tiny_models,
                                                                                          how, damage, said):
    """A negative running variance, or finite weights whose output overflows, in each saved format."""
    path = _save(damage(tiny_models), tmp_path / ("bad.safetensors" if how == "safetensors" else "bad.pth"), how)
    with pytest.raises(ModelsError) as info:
        load_classifier(path)
    assert info.value.code == ExitCode.MODELS == 4
    assert str(path) in info.value.message, info.value.message
    for word in said:
        assert word in info.value.message, info.value.message


def test_a_huge_hidden_layer_is_named_as_where_the_overflow_starts(tmp_path, tiny_models):
    state = _tiny_state(tiny_models)
    state["hidden_layer.weight"].fill_(3e37)  # x80 inputs: Inf out of the first layer for ones
    path = _save(state, tmp_path / "hidden.pth", "state_dict")
    with pytest.raises(ModelsError, match="hidden_layer") as info:
        load_classifier(path)
    assert str(path) in info.value.message


def test_sound_classifiers_still_load_and_score_as_before(tmp_path, tiny_models):
    """The probe refuses nothing sound: the tiny classifiers, a fresh real-width one, a zero variance
    (a dead unit: var + eps > 0), and loading leaves the weights and the scores unchanged."""
    for name in ("300_model_tiny.pth", "500_model_tiny.pth"):
        load_classifier(tiny_models / name)
    torch.manual_seed(3)
    real = MLPClassifier(3328).eval()
    save_original_way(real, tmp_path / "real.pth")
    loaded = load_classifier(tmp_path / "real.pth")
    for key, value in real.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = np.random.default_rng(0).normal(size=(5, 3328)).astype(np.float32)
    np.testing.assert_array_equal(predict_proba(loaded, x), predict_proba(real, x))
    state = _tiny_state(tiny_models)
    state["bn1.running_var"][:3] = 0.0
    load_classifier(_save(state, tmp_path / "zero_var.pth", "state_dict"))


def test_predict_proba_still_refuses_nan_scores_of_a_model_built_in_memory():
    """The load-time probe does not replace the guard on real features (exit 9 stays)."""
    model = MLPClassifier(6, 16, 2).eval()
    with pytest.raises(NumericalError):
        predict_proba(model, np.full((2, 6), np.nan, dtype=np.float32))


# --- the commands ----------------------------------------------------------------------------

def test_predict_refuses_the_classifier_at_load_exit_4(tmp_path, tiny_models, small_sample, run_cli):
    prepared, shard = small_sample
    bad = _save(_negative_variance(tiny_models), tmp_path / "bad.pth", "state_dict")
    code, message = run_cli("predict", "--prepared", prepared, "--embeddings", shard, "--outdir", tmp_path / "out",
                            "--models", tiny_models, "--classifier", bad)
    assert code == ExitCode.MODELS, message
    assert str(bad) in message and "bn1.running_var" in message, message
    assert "Traceback" not in message


def test_run_refuses_the_classifier_before_any_embedding(tmp_path, tiny_models, run_cli):
    bad = _save(_huge_output(tiny_models), tmp_path / "huge.pth", "state_dict")
    out = tmp_path / "out"
    code, message = run_cli("run", EXAMPLE, "--models", tiny_models, "--classifier", bad, "--outdir", out,
                            "--device", "cpu")
    assert code == ExitCode.MODELS, message
    assert str(bad) in message and "NaN/Inf" in message, message
    assert "loading DNABERT-S" not in message and "embedded" not in message, message
    assert not out.exists() or not list(out.rglob("*.h5")), "embedded before the classifier was checked"


def test_models_check_refuses_the_classifier_naming_it(tmp_path, tiny_models, run_cli):
    """A tiny folder whose manifest records the damaged classifier's own checksum: the file is what
    the manifest says, and only the loader's probe can tell it scores nothing."""
    models = Path(shutil.copytree(tiny_models, tmp_path / "models"))
    target = models / "500_model_tiny.pth"
    _save(_negative_variance(tiny_models), target, "original")
    manifest = json.loads((models / "manifest.json").read_text())
    manifest["models"]["classifier_500"]["sha256"][target.name] = hashlib.sha256(target.read_bytes()).hexdigest()
    (models / "manifest.json").write_text(json.dumps(manifest))
    code, message = run_cli("models", "check", models)
    assert code == ExitCode.MODELS, message
    assert str(target) in message and "bn1.running_var" in message, message


# --- the hint of a non-finite embedding ------------------------------------------------------

def _hint(precision) -> str:
    vectors = torch.zeros(2, 4)
    vectors[1, 2] = float("nan")
    with pytest.raises(NumericalError, match="record b") as info:
        check_finite(vectors, ["a", "b"], precision)
    assert info.value.code == ExitCode.NUMERICAL
    return info.value.hint


@pytest.mark.parametrize("precision", ["fp32", torch.float32])
def test_at_fp32_the_hint_points_at_the_model_files(precision):
    hint = _hint(precision)
    assert "--precision fp32" not in hint, hint
    assert "models folder" in hint and "models download" in hint and "tiny" in hint, hint


@pytest.mark.parametrize("precision", ["fp16", "bf16", torch.float16, torch.bfloat16])
def test_at_half_precision_the_hint_is_to_rerun_at_fp32(precision):
    hint = _hint(precision)
    assert hint.startswith("rerun with --precision fp32"), hint
    assert "models folder" in hint, hint  # what to do when fp32 fails too


def test_when_the_precision_is_not_given_the_hint_covers_both():
    hint = _hint(None)
    assert "--precision fp32" in hint and "models folder" in hint, hint


@pytest.mark.parametrize("precision, advice", [("fp32", "already computed in fp32"),
                                               ("bf16", "rerun with --precision fp32")])
def test_embed_names_the_precision_it_computed_in_when_vectors_are_not_finite(
        tmp_path, run_cli, small_sample, tiny_models, monkeypatch, precision, advice):
    """The encoders' dtype reaches the hint: at fp32 the model files are the suspect, at half
    precision the first thing to try is fp32."""
    from virnucpro import embed

    computed = embed.Embedder.run

    def not_finite(self, *args, **kwargs):
        vectors = computed(self, *args, **kwargs)
        vectors[0, 0] = float("nan")
        return vectors

    monkeypatch.setattr(embed.Embedder, "run", not_finite)
    prepared_folder, _ = small_sample
    code, message = run_cli("embed", next((prepared_folder / "shards").iterdir()), "--models",
                            tiny_models, "--out", tmp_path / "x.h5", "--device", "cpu",
                            "--precision", precision)
    assert code == 9 and advice in message, message


def _shard_of(tmp_path: Path, run_cli, reads: dict[str, str]) -> Path:
    """The one prepare shard of `reads` (name -> sequence)."""
    (tmp_path / "r.fa").write_text("".join(f">{name}\n{seq}\n" for name, seq in reads.items()))
    assert run_cli("prepare", tmp_path / "r.fa", "--outdir", tmp_path / "p")[0] == 0
    return tmp_path / "p" / "shards" / "shard_00000.tsv"


def _nan_word_embedding(models: Path, token: int) -> None:
    """DNABERT-S's word embedding of `token` made NaN in the models folder, its manifest recording it."""
    from safetensors.torch import load_file, save_file

    weights = models / "DNABERT-S-tiny" / "model.safetensors"
    state = load_file(weights)
    (word,) = [key for key in state if "word_embeddings" in key]
    state[word][token] = float("nan")
    save_file(state, str(weights), metadata={"format": "pt"})
    manifest = json.loads((models / "manifest.json").read_text())
    manifest["models"]["dnabert_s"]["sha256"]["DNABERT-S-tiny/model.safetensors"] = \
        hashlib.sha256(weights.read_bytes()).hexdigest()
    (models / "manifest.json").write_text(json.dumps(manifest))


def test_a_nan_of_one_sequence_is_blamed_on_it_not_on_those_packed_beside_it(tmp_path, run_cli, models):
    """A review's case: a NaN in one sequence's DNABERT-S states reached every sequence packed in its
    row (a masked attention weight of 0 times NaN is NaN), and the error named an innocent record
    with '7 of 18 vectors affected'. Each affected sequence is embedded alone before one is named."""
    from virnucpro.encoders.dnabert_s import DnabertSEncoder

    shard = _shard_of(tmp_path, run_cli, {"c0": "GCTGCAAAA" * 60, "c1": "GCTGCAAAC" * 60, "c2": "GCAGCTAAA" * 50})
    rows = [line.split("\t") for line in shard.read_text().splitlines()[2:]]
    encoder = DnabertSEncoder(models / "DNABERT-S-tiny", torch.device("cpu"), path="reference")
    tokens = {row[0]: set(encoder.tokenize([row[1]])[0].tolist()) for row in rows}
    rare = min({t for found in tokens.values() for t in found}, key=lambda t: sum(t in f for f in tokens.values()))
    guilty = sorted(name for name, found in tokens.items() if rare in found)
    assert 0 < len(guilty) < len(rows) / 4, guilty  # a few records, packed with many innocent ones
    _nan_word_embedding(models, rare)
    code, message = run_cli("embed", shard, "--models", models, "--out", tmp_path / "x.h5", "--device", "cpu")
    assert code == ExitCode.NUMERICAL, message
    more = f" and {len(guilty) - 1} more" if len(guilty) > 1 else ""
    assert any(f"for record {name}{more} (each embedded alone;" in message for name in guilty), (guilty, message)


def test_a_nan_only_packed_sequences_give_blames_the_batch_not_a_record(tmp_path, run_cli, models):
    """A review's case: with the padding token's embedding NaN, every sequence packed beside padding
    was non-finite, each one finite alone, and the error still named the first record."""
    from virnucpro.encoders.dnabert_s import DnabertSEncoder

    shard = _shard_of(tmp_path, run_cli, {"c0": "GCTGCAAAA" * 60, "c1": "GCTGCAAAC" * 40, "c2": "GCAGCTAAA" * 50})
    _nan_word_embedding(models, DnabertSEncoder(models / "DNABERT-S-tiny", torch.device("cpu"), path="reference").pad_id)
    code, message = run_cli("embed", shard, "--models", models, "--out", tmp_path / "x.h5", "--device", "cpu")
    assert code == ExitCode.NUMERICAL, message
    assert "yet each is finite embedded alone" in message and "for record" not in message, message
