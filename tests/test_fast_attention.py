"""The fast attention path (packed token stream, no explicit mask) against the reference path.

On the CPU the fast path runs its real layout and FlexAttention logic with the eager
flex_attention (document block mask; ALiBi as a score_mod for DNABERT-S); only the varlen flash
kernel and the compiled FlexAttention need a GPU. Also: the one place that chooses the path, and
the load-time self-check that falls back to the reference path when the fast one raises or
disagrees.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from encoder_fixtures import esm_checkpoints, fair_esm_model  # noqa: F401  (fixtures)
from virnucpro.encoders import choose_path
from virnucpro.encoders import dnabert_s as dnabert_module
from virnucpro.encoders import esm2 as esm2_module
from virnucpro.encoders.batching import pack
from virnucpro.encoders.dnabert_s import DnabertSEncoder
from virnucpro.encoders.esm2 import Esm2Encoder

CPU = torch.device("cpu")
EXACT = 1e-5
# 1..1,200 tokens; the short ones share rows with the long ones (rows hold the longest, 1,200)
LONG_MIX = [1200, 700, 333, 129, 2, 1, 1, 5, 17]
MODULES = {"esm2": esm2_module, "dnabert_s": dnabert_module}
SHORT_MIX = [int(n) for n in np.random.default_rng(7).integers(1, 90, size=32)] + [250]


def random_tokens(lengths, low: int, high: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(low, high, size=n).astype(np.int64) for n in lengths]


def esm_tokens(lengths, seed: int = 0) -> list[np.ndarray]:
    """<cls> + residues + <eos> of `lengths` tokens in all (at least 3: one residue to pool)."""
    out = random_tokens([max(n, 3) for n in lengths], 4, 24, seed)
    for t in out:
        t[0], t[-1] = esm2_module.CLS, esm2_module.EOS
    return out


@pytest.fixture(scope="module")
def dnabert(reference_dir):
    return DnabertSEncoder(reference_dir / "dnabert_s_tiny", CPU, torch.float32, path="fast")


@pytest.fixture(scope="module")
def esm(esm_checkpoints):  # noqa: F811
    return Esm2Encoder(esm_checkpoints["cfg"], CPU, torch.float32, path="fast")


def both_paths(encoder, collated) -> float:
    """max |fast - reference| over the pooled vectors of one collated batch."""
    return float((encoder._run(collated, "fast") - encoder._run(collated, "reference")).abs().max())


def test_stream_is_the_real_tokens_of_the_rows_back_to_back():
    tokens = random_tokens(LONG_MIX, 1, 50)
    batch, _ = pack(tokens, 0, CPU, lambda n: (0, n))
    stream = batch.stream
    assert batch.ids.shape[0] < len(tokens)  # several sequences per row
    lengths = np.diff(stream.cu_seqlens.numpy())
    assert stream.cu_seqlens.dtype == torch.int32 and stream.max_seqlen == 1200
    assert sorted(lengths.tolist()) == sorted(LONG_MIX)
    assert (stream.flatten(batch.pos) == torch.cat([torch.arange(n) for n in lengths])).all()
    assert (stream.doc == torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))).all()
    assert sorted(stream.flatten(batch.ids).tolist()) == sorted(np.concatenate(tokens).tolist())
    rows, width = batch.ids.shape
    hidden = torch.randn(rows, width, 3)
    back = stream.unflatten(stream.flatten(hidden), rows, width)
    real = (batch.slot >= 0).unsqueeze(-1)
    assert torch.equal(back, torch.where(real, hidden, torch.zeros(())))


@pytest.mark.parametrize("lengths", [LONG_MIX, SHORT_MIX], ids=["long", "short"])
def test_esm2_fast_path_equals_reference(esm, lengths):
    assert esm.path == "fast"
    assert both_paths(esm, esm.collate(esm_tokens(lengths))) <= EXACT


@pytest.mark.parametrize("lengths", [LONG_MIX, SHORT_MIX], ids=["long", "short"])
def test_dnabert_s_fast_path_equals_reference(dnabert, lengths):
    assert dnabert.path == "fast"
    assert both_paths(dnabert, dnabert.collate(random_tokens(lengths, 0, dnabert.vocab_size))) <= EXACT


def test_fast_path_embed_equals_reference_encoder(reference_dir, dnabert):
    reference = DnabertSEncoder(reference_dir / "dnabert_s_tiny", CPU, torch.float32)
    tokens = dnabert.tokenize(["ACGT" * 40, "A", "GATTACA" * 9, "CCGGTTAA" * 30])
    assert torch.allclose(dnabert.embed(tokens), reference.embed(tokens), rtol=0, atol=EXACT)


def test_one_place_chooses_the_path():
    assert choose_path("auto", CPU) == "reference"
    assert choose_path("auto", torch.device("cuda")) == "fast"
    assert choose_path("auto", "cuda:1") == "fast"
    assert choose_path("fast", CPU) == "fast" and choose_path("reference", "cuda") == "reference"
    with pytest.raises(ValueError, match="auto, reference, fast"):
        choose_path("flash", CPU)


def test_on_a_gpu_auto_runs_each_model_on_the_path_measured_faster():
    """H200: DNABERT-S's reference path beat its fast path (1.33 M vs 1.01 M tokens/s), ESM-2's
    compiled fast path beat its reference path (88 K vs 72 K): 'auto' follows the measurement."""
    assert choose_path("auto", "cuda", "DNABERT-S") == "reference"
    assert choose_path("auto", "cuda", "ESM-2") == "fast"
    assert choose_path("auto", CPU, "ESM-2") == "reference"
    assert choose_path("fast", "cuda", "DNABERT-S") == "fast"  # still there when asked for


def _probe_pair(delta: float, mixed_rows: bool = False):
    """Reference vectors of RMS ~1 (as measured at the real sizes) and a 'fast' copy: one element
    moved by `delta`, or (`mixed_rows`) every vector blended with its neighbour, as sequences of a
    stream that saw each other would be."""
    reference = torch.randn(16, 768, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    fast = reference.clone()
    if mixed_rows:
        fast = 0.93 * fast + 0.37 * fast.roll(1, dims=0)
    else:
        fast[2, 5] += delta
    return reference, fast


@pytest.mark.parametrize("dtype, delta, accepted", [
    (torch.bfloat16, 0.141, True),   # DNABERT-S fast vs reference, real size, H200: refused by the old 0.1
    (torch.bfloat16, 0.109, True),   # ESM-2 compiled vs reference, real size, H200
    (torch.float16, 0.0074, True),
    (torch.float16, 0.0195, True),   # DNABERT-S compiled reference vs reference, real size (CPU): refused by the old 2e-2
    (torch.float16, 0.069, False),   # a partial layout bug of the tiny DNABERT-S (a shared mask block)
    (torch.float32, 1e-3, False),
    (torch.bfloat16, 1.0, False),    # one element off by 1: the cosine alone (0.9994) would take it
])
def test_the_self_check_accepts_rounding_measured_at_the_real_sizes(dtype, delta, accepted):
    from virnucpro.encoders import fast_path_problem

    reference, fast = _probe_pair(delta)
    problem = fast_path_problem(lambda path: fast, dtype, "fast", reference=reference)
    assert (problem == "") is accepted, problem


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_the_self_check_refuses_sequences_that_saw_each_other_at_every_dtype(dtype):
    from virnucpro.encoders import fast_path_problem

    reference, fast = _probe_pair(0.0, mixed_rows=True)
    assert "disagrees" in fast_path_problem(lambda path: fast, dtype, "fast", reference=reference)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_the_self_check_refuses_a_nan_at_every_dtype(dtype):
    """Found by mutation: limits written as `delta > max or cosine < min` pass a NaN (every comparison
    with NaN is false); the fast path would then be used and embed stop at its first NaN."""
    from virnucpro.encoders import fast_path_problem

    reference, fast = _probe_pair(0.0)
    fast[3, 7] = float("nan")
    assert "disagrees" in fast_path_problem(lambda path: fast, dtype, "fast", reference=reference)


def test_the_fp16_self_check_refuses_a_small_scale_disagreement_by_its_cosine():
    """Vectors of small scale, off by a 5% spread: within fp16's |delta| limit, refused by its cosine."""
    from virnucpro.encoders import fast_path_problem

    generator = torch.Generator().manual_seed(5)
    reference = 0.2 * torch.randn(16, 768, generator=generator, dtype=torch.float64)
    fast = reference + 0.01 * torch.randn(16, 768, generator=generator, dtype=torch.float64)
    assert float((fast - reference).abs().max()) < 5e-2
    assert "disagrees" in fast_path_problem(lambda path: fast, torch.float16, "fast", reference=reference)


@pytest.mark.parametrize("failure", ["disagrees", "raises"])
def test_after_a_failed_fast_path_its_compiled_form_is_never_tried(monkeypatch, capsys, failure):
    """Found by mutation: going on after the fast path failed its check could settle on its compiled
    form, after a warning saying the reference path is used; a later failure of the compiled form
    then fell back to the refused fast path."""
    from virnucpro import encoders
    from virnucpro.encoders import compiled

    reference, wrong = _probe_pair(0.0, mixed_rows=True)
    ran = []

    def run(path):
        ran.append(path)
        if path == "fast" and failure == "raises":
            raise RuntimeError("no kernel image is available")
        return wrong if path == "fast" else reference

    monkeypatch.setattr(compiled, "wanted", lambda compile, device: True)
    path, seconds, agreed = encoders.settle_path("ESM-2", "fast", "cpu", torch.float32, run)
    assert (path, seconds, agreed) == ("reference", 0.0, "")
    assert ran == ["reference", "fast"], ran
    assert capsys.readouterr().err.count("warning:") == 1


def test_a_passed_self_check_logs_how_close_the_path_came(load, capsys):
    """The margin of a load-time check shows in the log: the next GPU run reads how much room its
    limits leave (fp32 on the CPU: both paths equal up to summation order)."""
    import re

    for kind in MODULES:
        assert load(kind, path="fast").path == "fast"
    err = capsys.readouterr().err
    margins = re.findall(r"fast attention path \(not compiled; against the reference path: max \|delta\| (\S+), "
                         r"limit 0.0001; min cosine (\S+), limit 0.99999\)", err)
    assert len(margins) == 2, err
    assert all(float(delta) < 1e-5 and float(cosine) > 0.999999 for delta, cosine in margins), margins


def test_cpu_default_is_the_reference_path(load, capsys):
    assert [load(kind, path="auto").path for kind in MODULES] == ["reference", "reference"]
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_forced_fast_path_passes_the_self_check_silently(load, dtype, capsys):
    assert load("dnabert_s", dtype).path == "fast" and load("esm2", dtype).path == "fast"
    assert "warning" not in capsys.readouterr().err


@pytest.fixture
def load(reference_dir, esm_checkpoints):  # noqa: F811
    """load(kind, dtype, path) -> a fresh encoder of the tiny model of that kind."""

    def build(kind: str, dtype=torch.float32, path: str = "fast"):
        if kind == "esm2":
            return Esm2Encoder(esm_checkpoints["cfg"], CPU, dtype, path=path)
        return DnabertSEncoder(reference_dir / "dnabert_s_tiny", CPU, dtype, path=path)

    return build


@pytest.mark.parametrize("kind", MODULES)
def test_self_check_falls_back_when_the_kernel_raises(kind, load, monkeypatch, capsys):
    def missing_kernel(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(MODULES[kind], "packed_attention", missing_kernel)
    encoder = load(kind)
    warned = capsys.readouterr().err
    assert encoder.path == "reference" and warned.count("warning:") == 1
    assert "reference path: it raised RuntimeError: no kernel" in " ".join(warned.split())
    tokens = encoder.tokenize(["ACDEFGHIKLMNPQRSTVWY" * 3 if kind == "esm2" else "ACGTTGCA" * 8])
    assert torch.equal(encoder.embed(tokens), load(kind, path="reference").embed(tokens))


@pytest.mark.parametrize("version, named", [("2.7.1+cu126", True), ("2.6.0", True), ("2.8.0", False),
                                             ("2.13.0", False), ("3.0.0a0", False)])
def test_the_fallback_names_a_newer_torch_only_below_the_tested_one(version, named, load, monkeypatch, capsys):
    """On torch 2.6 and 2.7 FlexAttention's eager path fails the self-check: the warning says the fix."""
    def missing_kernel(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(MODULES["esm2"], "packed_attention", missing_kernel)
    monkeypatch.setattr(torch, "__version__", version)
    assert load("esm2").path == "reference"
    warned = " ".join(capsys.readouterr().err.split())
    assert ("install torch>=2.8 to use it" in warned) == named, warned
    assert (f"torch {version} is older than 2.8" in warned) == named, warned


@pytest.mark.parametrize("kind", MODULES)
def test_self_check_falls_back_when_the_fast_path_disagrees(kind, load, monkeypatch, capsys):
    real = MODULES[kind].packed_attention

    def slightly_off(q, k, v, stream, score_mod=None):
        return real(q, k, v, stream, score_mod) * 1.01

    monkeypatch.setattr(MODULES[kind], "packed_attention", slightly_off)
    assert load(kind).path == "reference"
    assert "reference path: it disagrees with the reference path" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("kind", MODULES)
def test_a_wrong_attention_layout_is_caught_in_half_precision(kind, load, monkeypatch, capsys):
    """Even bf16's limits catch a real bug: the sequences of a stream seeing each other."""
    real = MODULES[kind].packed_attention

    def leaking(q, k, v, stream, score_mod=None):
        return real(q, k, v, replace(stream, block_mask=None), score_mod)

    monkeypatch.setattr(MODULES[kind], "packed_attention", leaking)
    assert load(kind, torch.bfloat16).path == "reference"
    assert "disagrees" in capsys.readouterr().err
