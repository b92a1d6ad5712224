"""Native encoders for the two language models, and the checks shared by the embed stage.

`DnabertSEncoder` (virnucpro.encoders.dnabert_s) and `Esm2Encoder` (virnucpro.encoders.esm2) load
the official checkpoints into lean PyTorch modules; `plan_batches` (virnucpro.encoders.batching)
groups records into length-similar batches within a token budget; `check_finite` is the NaN/Inf
guard applied to pooled vectors before they are written.

Attention path: `choose_path` is the one place that decides between "reference" (today's masked
SDPA, exact on the CPU) and "fast" (packed token stream, no explicit mask: varlen flash /
FlexAttention), the fast one by default only on CUDA and only for the models it was measured
faster for there (GPU_DEFAULT: ESM-2, not DNABERT-S); `settle_path` then runs the load-time
self-check (`fast_path_problem`) and falls back to the reference path with one warning. On CUDA
the fast path is also compiled ("fast+compiled": fused elementwise work, encoders.compiled)
unless the caller says no; a compiled path that fails its check falls back to "fast". DNABERT-S's
reference path is compiled the same way there ("reference+compiled", falling back to "reference").
A path that fails on a later batch falls back the same way, down to the reference path
(`forward_on_path`).
"""

from __future__ import annotations

import re

from typing import Callable, Sequence

import numpy as np

from virnucpro.errors import ModelsError, NumericalError, check_stop, stop_inside


def check_finite(vectors, ids: Sequence[str], precision=None) -> None:
    """Raise NumericalError naming the first record whose vector holds NaN or Inf.

    `vectors` is an (N, D) torch tensor or numpy array, `ids` the N record ids in the same order,
    `precision` what the encoder computed in ("fp32"/"fp16"/"bf16" or a torch dtype; the pooled
    vectors are float32 at every precision, so it cannot be read from them), for the hint.
    """
    try:
        import torch

        if isinstance(vectors, torch.Tensor):
            bad_rows = (~torch.isfinite(vectors)).reshape(len(vectors), -1).any(dim=1)
            bad = bad_rows.nonzero().flatten().cpu().numpy()
        else:
            raise TypeError
    except (ImportError, TypeError):
        arr = np.asarray(vectors)
        bad = np.flatnonzero(~np.isfinite(arr).reshape(len(arr), -1).all(axis=1))
    if len(bad):
        first = int(bad[0])
        name = ids[first] if first < len(ids) else f"#{first}"
        raise NumericalError(
            f"non-finite embedding (NaN/Inf) for record {name} "
            f"({len(bad)} of {len(vectors)} vectors affected)",
            hint=non_finite_hint(precision),
        )


_MODEL_FILES_HINT = ("check the models folder (`virnucpro models check`) or download it again "
                     "(`virnucpro models download`): a custom or tiny folder may hold non-finite weights")


def non_finite_hint(precision=None) -> str:
    """What to do about a NaN/Inf embedding: at fp16/bf16, rerun at fp32 (half precision can
    overflow); at fp32 nothing overflows that easily, so the model files are the suspect; when the
    precision is unknown (None), both in turn."""
    name = str(precision).removeprefix("torch.") if precision is not None else None
    if name in ("fp32", "float32"):
        return f"the encoders already computed in fp32, so {_MODEL_FILES_HINT}"
    if name is None:
        return f"if it ran in fp16/bf16, rerun with --precision fp32; in fp32, {_MODEL_FILES_HINT}"
    return f"rerun with --precision fp32; if it persists, {_MODEL_FILES_HINT}"


def describe_load_error(exc: BaseException) -> str:
    """One readable line for a failed torch.load / safetensors read (names a refused global)."""
    text = str(exc)
    if "WeightsUnpickler error" in text or "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)  # never torch's advice to load it unrestricted
        return f"refused: it holds objects other than tensors ({found.group(1) if found else 'unknown objects'})"
    first = text.strip().splitlines()[0] if text.strip() else ""
    cause = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return f"corrupt, truncated or not a weights file ({cause})"


def key_mismatch(missing: Sequence[str], unexpected: Sequence[str]) -> str:
    """One phrase naming what a checkpoint lacks and what it has in excess ('' when it fits)."""
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s), e.g. {', '.join(sorted(missing)[:3])}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s), e.g. {', '.join(sorted(unexpected)[:3])}")
    return "; ".join(problems)


def load_checked(module, mapped: dict, model: str, path, implied_by: str):
    """Load `mapped` into a module built on the meta device, after checking every tensor's shape
    against the architecture (a mismatch is a ModelsError naming the tensor); returns the module."""
    import torch

    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    for key, tensor in mapped.items():
        if not isinstance(tensor, torch.Tensor):
            raise ModelsError(f"{model}: {path}: {key} holds a {type(tensor).__name__}, not a tensor")
        if tuple(tensor.shape) != expected[key]:
            raise ModelsError(f"{model}: {path}: tensor for {key} has shape {tuple(tensor.shape)}, "
                              f"{implied_by} {expected[key]}")
    module.load_state_dict(mapped, strict=True, assign=True)
    return module


PATHS = ("auto", "reference", "fast")

# Largest disagreement between the fast and the reference path accepted by the load-time check,
# per compute dtype: (max |delta| of a pooled vector element, min cosine between the two vectors).
# fp32: both paths are exact up to summation order (measured <= 7.2e-7). fp16: each path is off
# fp32 by up to 6.7e-3 (cosine 0.99998) on real DNABERT-S, so two fp16 paths may differ by ~1.3e-2;
# the tiny test models measure 3.4e-3 (ESM-2) and 5.5e-4 (DNABERT-S) fast vs reference, models of
# the real sizes on an H200 7.4e-3 (DNABERT-S) and 2.8e-3 (ESM-2). bf16 rounds 8x coarser: 3.1e-2
# and 4.4e-3 on the tiny models, but 0.141 (DNABERT-S, cosine 0.99941) and 0.109 (ESM-2, compiled,
# cosine 0.99983) at the real sizes, where a limit of 0.1 refused both; DNABERT-S's compiled
# reference path against its reference path, real size on the CPU (review): 0.0195 at fp16, cosine
# 0.99902 at bf16. What the check is for is a kernel or driver that computes wrongly on this machine;
# the layout itself is dtype-independent and checked exactly in fp32 by the tests. A total layout bug
# (every sequence of the stream seeing the others) moves vectors by 0.16-2.2 with cosine 0.83-0.9973
# (the weakest: the tiny DNABERT-S, 0.158 at bf16): refused at every dtype. Partial ones measured on
# the tiny DNABERT-S (a shared mask block, a one-token boundary shift: 0.069-0.080, cosine
# 0.9993-0.9995) are refused at fp32 and fp16 (by |delta|) but not at bf16, whose rounding at the
# real sizes reaches the same cosines: bf16's limits catch gross errors only.
SELF_CHECK_TOLERANCE = {
    "torch.float32": (1e-4, 0.99999),
    "torch.float16": (5e-2, 0.9995),
    "torch.bfloat16": (3e-1, 0.998),
}


PROBE_LENGTHS = (1, 7, 40, 3, 120, 15, 60, 2)


def random_probe(draw: Callable, device="cpu") -> list[str]:
    """The self-check's mixed batch (several sequences per row): one sequence per PROBE_LENGTHS
    entry, `draw(rng, n)` making it, from a fixed seed. On a GPU 16 times as many (about 4,000
    tokens): the compile happens on this batch, and inductor sizes its kernels by the first one."""
    import torch

    copies = 16 if torch.device(device).type == "cuda" else 1
    rng = np.random.default_rng(0)
    return [draw(rng, n) for _ in range(copies) for n in PROBE_LENGTHS]


# What 'auto' runs on CUDA, per model, chosen from `benchmarks/gpu_check.py` on an H200 (2026-12-04,
# torch 2.11, fp16, docs/encoders.md "Measured on an H200"): DNABERT-S's reference path (cuDNN's
# attention over packed rows with the ALiBi bias) ran 1.33 M tokens/s against 0.93 M for its fast
# path and 1.01 M compiled (FlexAttention and its per-batch block mask cost more than the whole
# cuDNN kernel on ~115-token sequences), and FlexAttention's first compile took 90 s of start-up;
# ESM-2's compiled fast path (varlen flash) ran 88 K tokens/s against 72 K for its reference path.
GPU_DEFAULT = {"DNABERT-S": "reference", "ESM-2": "fast"}


def choose_path(requested: str, device, model: str = "") -> str:
    """The attention path to use: 'reference' or 'fast'. 'auto' picks `model`'s GPU_DEFAULT ('fast'
    for a model not listed) only on CUDA, when this torch has FlexAttention, else 'reference';
    'reference' and 'fast' force one (benchmarks, tests)."""
    if requested not in PATHS:
        raise ValueError(f"attention path must be one of {', '.join(PATHS)}, got {requested!r}")
    if requested != "auto":
        return requested
    import torch

    on_gpu = torch.device(device).type == "cuda"
    return GPU_DEFAULT.get(model, "fast") if on_gpu and _has_flex_attention() else "reference"


def _has_flex_attention() -> bool:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


FAST_COMPILED = "fast+compiled"  # the fast path with its elementwise work fused (encoders.compiled)
REFERENCE_COMPILED = "reference+compiled"  # the reference attention layout, its elementwise work fused
COMPILED_PATHS = (FAST_COMPILED, REFERENCE_COMPILED)
# Models whose reference path has a compiled form: DNABERT-S, which runs that path on a GPU
# (GPU_DEFAULT), keeps cuDNN's attention over rows and has its GeGLU, residual and LayerNorm fused
# as on its fast path. Not yet measured on a GPU (its compiled fast path gained 9% over the uncompiled one).
COMPILED_REFERENCE = frozenset({"DNABERT-S"})


def fast_path_problem(run: Callable[[str], "object"], dtype, path: str = "fast", reference=None) -> str:
    """'' when `run(path)` matches `run('reference')` (pooled vectors of one probe batch; pass
    `reference` when already computed) within SELF_CHECK_TOLERANCE for `dtype`, else what went
    wrong (an exception or the disagreement)."""
    return compare_with_reference(run, dtype, path, reference)[0]


def compare_with_reference(run: Callable[[str], "object"], dtype, path: str, reference=None) -> tuple[str, str]:
    """(problem, agreement): `fast_path_problem`'s answer, and how close the two paths came
    ('max |delta| .. (limit ..), min cosine .. (limit ..)'; '' when `path` did not run)."""
    import torch

    reference = (run("reference") if reference is None else reference).double()
    try:
        fast = run(path).double()
    except Exception as exc:  # a missing kernel, an old driver, no compiler: anything means "do not use it"
        if stop_inside(exc) is not None:  # a stop signal (exit 6), even wrapped by torch.compile
            raise stop_inside(exc) from None
        return f"it raised {describe_exception(exc)}", ""
    if fast.shape != reference.shape:
        return f"it gave vectors of shape {tuple(fast.shape)}, not {tuple(reference.shape)}", ""
    max_abs, min_cos = SELF_CHECK_TOLERANCE.get(str(dtype), SELF_CHECK_TOLERANCE["torch.float16"])
    delta = float((fast - reference).abs().max())
    cosine = float(torch.nn.functional.cosine_similarity(fast, reference, dim=1).min())
    agreement = f"max |delta| {delta:.3g}, limit {max_abs:g}; min cosine {cosine:.6f}, limit {min_cos}"
    if not (delta <= max_abs and cosine >= min_cos):  # also catches NaN
        return f"it disagrees with the reference path ({agreement})", agreement
    return "", agreement


def settle_path(model: str, requested: str, device, dtype, run: Callable[[str], "object"],
                compile: bool | None = None) -> tuple[str, float, str]:
    """(path, seconds the compiled path's self-check took, its compile time, 0 when not compiled;
    how close the path came to the reference path at that check, '' for the reference path).

    `choose_path`, then the load-time self-check of each path above 'reference' it leads to
    (`_candidates`: 'fast', then 'fast+compiled' when compiling is wanted, encoders.compiled.wanted;
    or 'reference+compiled' for a model in COMPILED_REFERENCE). The first problem is one warning
    naming the model and why, and the last path that passed is used ('reference' at worst)."""
    import time

    from virnucpro.encoders import compiled

    path = choose_path(requested, device, model)
    candidates = _candidates(model, path, compiled.wanted(compile, device))
    if not candidates:
        return path, 0.0, ""
    reference = run("reference")
    settled, seconds, agreed = "reference", 0.0, ""
    for candidate in candidates:
        start = time.perf_counter()
        problem, agreement = compare_with_reference(run, dtype, candidate, reference)
        check_stop()  # a stop a compiler swallowed whole
        if problem:
            from virnucpro.console import warn

            note = "" if candidate == REFERENCE_COMPILED else _older_torch_note()  # the note is FlexAttention's
            warn(f"{model}: {_PATH_NAMES[candidate]} not used, falling back to the {_PATH_NAMES[settled]}: "
                 f"{problem}{note}")
            break
        settled, seconds, agreed = candidate, time.perf_counter() - start, agreement
    return settled, seconds if settled in COMPILED_PATHS else 0.0, agreed


def _candidates(model: str, path: str, compiling: bool) -> list[str]:
    """The paths above 'reference' that `path` leads to, self-checked in turn (each one failing
    falls back to the one before it)."""
    if path == "fast":
        return ["fast", FAST_COMPILED] if compiling else ["fast"]
    return [REFERENCE_COMPILED] if compiling and model in COMPILED_REFERENCE else []


FAST_PATH_TESTED_TORCH = (2, 8)  # the oldest torch the fast paths are tested with (README)


def _older_torch_note() -> str:
    """A self-check failure's note when torch is older than the fast paths are tested with: on
    torch 2.6 and 2.7 FlexAttention's eager path fails it, and a newer torch is the fix."""
    import torch

    found = tuple(int(part) for part in re.findall(r"\d+", torch.__version__)[:2])
    if found >= FAST_PATH_TESTED_TORCH:
        return ""
    tested = ".".join(map(str, FAST_PATH_TESTED_TORCH))
    return f" (torch {torch.__version__} is older than {tested}, the first torch the fast path is tested with: " \
           f"install torch>={tested} to use it; the reference path used meanwhile is exact, only slower)"


# where a path that fails on a batch falls back to
SAFER_PATH = {FAST_COMPILED: "fast", "fast": "reference", REFERENCE_COMPILED: "reference"}


def forward_on_path(model: str, encoder, collated):
    """`encoder._run(collated, encoder.path)`. When a fast path (compiled or not) fails on a later
    batch (a recompile for a new shape, a kernel that refuses it), the next safer path computes
    this batch and every later one (compiled -> fast -> reference), with one warning naming what
    failed: never a failed task. What must propagate does (see `must_propagate`): embed halves a
    batch on out-of-memory, names a CUDA failure (exit 8) and ends on a stop signal (exit 6)."""
    failed: list[str] = []
    try:
        return _first_path_that_runs(encoder, collated, failed)
    finally:
        if failed:
            from virnucpro.console import warn

            warn(f"{model}: {'; '.join(failed)}; using the {_PATH_NAMES[encoder.path]} from now on "
                 f"(this batch included)")


def _first_path_that_runs(encoder, collated, failed: list[str]):
    """The vectors of the first path, from `encoder.path` down SAFER_PATH, that computes this batch;
    each failure is described in `failed` and `encoder.path` left at the path that ran."""
    while True:
        try:
            return encoder._run(collated, encoder.path)
        except Exception as exc:
            propagated = must_propagate(exc)
            if propagated is not None and propagated is not exc:
                raise propagated from None  # what torch.compile wrapped
            if propagated is exc or encoder.path not in SAFER_PATH:
                raise
            how = "failed on a batch" if not failed else "failed on it too"
            failed.append(f"the {_PATH_NAMES[encoder.path]} {how} ({describe_exception(exc)})")
            encoder.path = SAFER_PATH[encoder.path]


def must_propagate(exc: Exception) -> BaseException | None:
    """What a failure on a fast path must end as, instead of a fallback: the stop signal it wraps
    (exit 6), the GPU out-of-memory it wraps (embed halves the batch), a CUDA failure as it is (the
    device is unusable on any path: exit 8), virnucpro's own errors; None when a safer path may take
    over (a compile error, a kernel refusing a shape, a fast-path bug)."""
    import torch

    stop = stop_inside(exc)
    if stop is not None:
        return stop
    for error in _wrapped(exc):
        if isinstance(error, torch.cuda.OutOfMemoryError):
            return error
    device_failure = isinstance(exc, getattr(torch, "AcceleratorError", ())) or "CUDA error" in str(exc)
    return exc if device_failure and not isinstance(exc, compile_errors()) else None


def _wrapped(exc: BaseException) -> list[BaseException]:
    """`exc` and the errors torch.compile's wrappers hold inside it (`inner_exception`)."""
    chain = [exc]
    while getattr(chain[-1], "inner_exception", None) is not None and len(chain) < 6:
        chain.append(chain[-1].inner_exception)
    return chain


def compile_errors() -> tuple[type, ...]:
    """The exceptions that mean "torch.compile failed" (dynamo and inductor wrap theirs in these)."""
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import CppCompileError

    return TorchDynamoException, CppCompileError


def describe_exception(exc: BaseException) -> str:
    """'Type: first line' of an error; for torch.compile's wrappers, of the error inside them."""
    wrappers = []
    while getattr(exc, "inner_exception", None) is not None and len(wrappers) < 5:
        wrappers.append(type(exc).__name__)
        exc = exc.inner_exception
    text = str(exc).strip()
    described = f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
    return described + (f" (in {', '.join(wrappers)})" if wrappers else "")


_PATH_NAMES = {FAST_COMPILED: "compiled fast path", "fast": "fast attention path", "reference": "reference path",
               REFERENCE_COMPILED: "compiled reference path"}


def describe_settled(model: str, path: str, seconds: float, agreement: str = "") -> str:
    """One line for the log: which path runs, what compiling cost (and where it is cached), and
    how close the path came to the reference path at its load-time check (its margin)."""
    checked = f"; against the reference path: {agreement}" if agreement else ""
    if path not in COMPILED_PATHS:
        return f"{model}: {_PATH_NAMES[path]} (not compiled{checked})"
    from virnucpro.encoders.compiled import cache_in_use

    layout = "fast attention path" if path == FAST_COMPILED else "reference attention path"
    return (f"{model}: {layout} with fused elementwise kernels, compiled and checked in "
            f"{seconds:.1f} s (compile cache {cache_in_use()}{checked})")


def __getattr__(name: str):
    # lazy, so `import virnucpro.encoders` does not pull torch in before it is needed
    if name == "DnabertSEncoder":
        from virnucpro.encoders.dnabert_s import DnabertSEncoder
        return DnabertSEncoder
    if name == "Esm2Encoder":
        from virnucpro.encoders.esm2 import Esm2Encoder
        return Esm2Encoder
    if name == "plan_batches":
        from virnucpro.encoders.batching import plan_batches
        return plan_batches
    raise AttributeError(name)


__all__ = ["DnabertSEncoder", "Esm2Encoder", "FAST_COMPILED", "REFERENCE_COMPILED", "check_finite", "choose_path",
           "describe_load_error", "describe_settled", "plan_batches", "settle_path"]
