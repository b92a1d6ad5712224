"""GPU check (issue 10): ceilings, encoder paths, kernels, precision and `embed()`, all measured in one run.

Sections, each printed under a `== name` header, then a summary table:

* device    what torch sees and offers (flash/flex/varlen attention, triton, the peak used for MFU;
            MFU is n/a on the CPU, where no peak of the model's arithmetic is known);
* ceilings  fp16 GEMM TFLOP/s on ESM-2 3B's four GEMM shapes (qkv, attn_out, fc1, fc2) at one GPU
            token budget of rows, and device copy GB/s (bytes read + written per second);
* encoders  for DNABERT-S and ESM-2 x path (reference, fast, fast+compiled; and DNABERT-S's
            reference+compiled, its GPU default: cuDNN attention, fused elementwise, run before its
            fast+compiled, which then finds the shared graph compiled): load seconds (the
            compiled path's compile and self-check included, against an empty compile cache, and
            shown apart), first pass (autotune included), steady tokens/s, TFLOP/s, MFU against the
            peak and against the best GEMM, peak memory; real tokens only (special tokens counted,
            padding not);
* kernels   the profiler's top device kernels of one batch per encoder x path, and the time shares of
            attention, GEMM, cat/mul elementwise, inductor's fused kernels and the rest;
* embed     `virnucpro.embed.embed` on a shard of coding-like 500-bp reads: model lookup, the first
            load (it writes ESM-2's fp16 copy), records/s and the GPU-busy fraction (NVML
            utilisation sampled every 50 ms); then a later task's load: a new process loading both
            models as `embed` does, from the fp16 copy with the compile cache warm (`task_load`);
* precision fp16 and bf16 against fp32 (min cosine over the sequences, max |delta|), the fastest
            path (fast+compiled) against reference at the same dtype, and the fraction of per-frame
            calls of a random classifier (the original's MLP shape) that change;
* autotune  ESM-2's compiled fast path once more, its graphs compiled with inductor's max-autotune
            (Triton GEMM templates that may take bias, GELU and residual into their epilogues: what
            the 120K target needs, docs/encoders.md), as one more row ("fast+autotuned") of the
            path table, with its kernel shares; last, as its compile takes the longest.

Models have random weights of the real sizes (ESM-2 3B: 36 layers, 2560 wide, 40 heads; DNABERT-S:
768 wide, 12 layers, 12 heads, GeGLU 3072, vocabulary 4096), generated directly on the device; the
DNABERT-S folder and, for `embed()`, an fp16 ESM-2 checkpoint in fair-esm's layout are written to a
temporary folder. The fast path is asked for through the loaders' `path` keyword when they take one
(`inspect.signature`), else only the reference path runs; `path` on the loaded encoder says which
ran; it is read after the measurement, since a batch that fails moves an encoder down to a safer path
(fast+compiled -> fast -> reference, reference+compiled -> reference, `encoders.forward_on_path`): such a row names the path it ended
on, starred, with `fell_back_during_measurement` in the JSON, and is no figure of the path loaded;
embed()'s figure likewise (`paths`: read after it ran, `loaded_paths`: before).
Needs torch, numpy, h5py, tokenizers, safetensors, rich and this repository; never fair-esm or
biopython.

Time: a step (one encoder x path, embed, one precision load) that would start after --time-guard
seconds (330) is skipped and named; the step still running at --hard-limit seconds (450) is stopped
(SIGALRM), the rest not run, and the summary printed, so a run ends within about 7.5 minutes. SIGTERM
or SIGHUP (a job's `timeout`, a scheduler) stops the run the same way, from the script's first lines
(one landing while torch loads is held back until the handlers exist), the temporary folder removed,
with exit status 128 + the signal; the JSON names the step each stop interrupted (`failed[].step`) and
every step not run with its reason (`skipped[]`: step, reason). Every temporary file (torch
inductor's included) goes under the run's own temporary folder, removed at the end. A
section or encoder x path that fails (out of memory, a CUDA error, a bug) is recorded (its name,
exception, message; traceback on stderr) and the next one runs; the exit status is then 1. `--json FILE` is rewritten
atomically after every section and every encoder x path, as strict JSON (NaN as null), so a kill
keeps every figure measured before it.

    python benchmarks/gpu_check.py                   # one GPU; --json FILE keeps the figures
    python benchmarks/gpu_check.py --cpu-smoke       # every section on the CPU, tiny sizes, seconds

`--cpu-smoke` runs every section and every path (reference, fast, fast+compiled, inductor compiling
to C++) with tiny models, but these branches exist only on a GPU and run only there: the varlen
flash kernel (`torch.nn.attention.varlen.varlen_attn`, CUDA fp16/bf16: ESM-2's fast path), the
compiled FlexAttention kernel (`batching._flex(True)`; the CPU runs the eager one), the compiled
block-mask builder (`create_block_mask(..., _compile=True)`), and embed's GPU overlap (pinned host
copies, CUDA events) and out-of-memory halving. Its MFU and 'of GEMM' columns read n/a: a CPU's fp16
GEMM is no ceiling of anything the GPU run measures. Its embed() runs at fp16, as a GPU's default
does, so the first load writes ESM-2's fp16 copy and the later task's load reads it; a path that
loads or runs as another than asked, or a later load not from the copy, fails the smoke run (exit
1): on the CPU every path can run, on a GPU a fallback is a figure to read.
"""

from __future__ import annotations

import argparse
import functools
import gc
import inspect
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __name__ == "__main__":  # a stop during torch's import waits for the handlers (see stop_signals)
    signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGHUP))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import conditions  # noqa: E402  (standard library and numpy: the GPU machine has them)
from virnucpro import console  # noqa: E402
from virnucpro import embed as embed_mod  # noqa: E402
from virnucpro.classifier import MLPClassifier  # noqa: E402
from virnucpro import encoders as encoders_package  # noqa: E402
from virnucpro.encoders import compiled  # noqa: E402
from virnucpro.encoders.batching import plan_batches  # noqa: E402
from virnucpro.encoders.dnabert_s import DnabertSEncoder  # noqa: E402
from virnucpro.encoders.esm2 import TOKENS as ESM_TOKENS  # noqa: E402
from virnucpro.encoders.esm2 import Esm2Encoder  # noqa: E402
from virnucpro.models import store, tiny  # noqa: E402
from virnucpro.prepare import prepare  # noqa: E402

ROLES = ("dnabert_s", "esm2")
PATHS = ("reference", "reference+compiled", "fast", "fast+compiled")  # reference+compiled: DNABERT-S only
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
READ_LENGTH = 500
# NVIDIA's dense fp16/bf16 tensor-core peak (no sparsity), TFLOP/s; first name fragment that matches
SPEC_PEAKS = (("H200", 989.4), ("H100 PCIe", 756.5), ("H100", 989.4), ("A100", 312.0))
# the standard genetic code, codons in TCAG order
CODONS = [a + b + c for a in "TCAG" for b in "TCAG" for c in "TCAG"]
AMINO = dict(zip(CODONS, "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"))
SENSE = [c for c in CODONS if AMINO[c] != "*"]


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the real models on a GPU, or tiny ones on the CPU (`--cpu-smoke`)."""

    device: str
    esm: dict
    dnabert: dict
    gemm_repeats: int
    copy_mib: int
    esm_sequences: int
    dnabert_sequences: int
    precision_sequences: int
    records: int
    # embed()'s --precision: the default on a GPU (fp16: the first load writes ESM-2's fp16 copy, a
    # later task's load reads it); on the CPU fp16 too, so that the smoke run takes those paths
    embed_precision: str = "auto"
    smoke: bool = False  # a path that does not run as requested fails the run (on a GPU it is a figure)


REAL = Plan("cuda", dict(layers=36, dim=2560, heads=40),
            dict(hidden=768, layers=12, heads=12, intermediate=3072, vocab=4096),
            gemm_repeats=20, copy_mib=2048, esm_sequences=2400, dnabert_sequences=20000,
            precision_sequences=256, records=10000)
SMOKE = Plan("cpu", dict(layers=2, dim=64, heads=4), dict(hidden=48, layers=2, heads=4, intermediate=96, vocab=512),
             gemm_repeats=2, copy_mib=8, esm_sequences=6, dnabert_sequences=8, precision_sequences=4, records=12,
             embed_precision="fp16", smoke=True)


class PathNotRun(RuntimeError):
    """In the smoke run, a path that loaded or ran as another (its compile or its kernel broke)."""


@dataclass
class PathResult:
    """One encoder x path, measured."""

    role: str
    requested: str
    loaded: str = ""  # the path the load settled on
    ran: str = ""  # the path at the end of the measurement and the profile (a failing batch moves it down)
    fell_back_during_measurement: bool = False  # the figures then mix `loaded` and `ran`: credit neither
    load_s: float = math.nan
    compile_s: float = 0.0
    first_pass_s: float = math.nan
    steady_s: float = math.nan
    tokens: int = 0
    tflop: float = 0.0
    peak_gib: float = math.nan
    kernels: list = field(default_factory=list)
    shares: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.steady_s

    @property
    def tflops(self) -> float:
        return self.tflop / self.steady_s

    @property
    def ran_label(self) -> str:
        return ran_label(self.ran, self.fell_back_during_measurement)


PATH_WIDTH = 19  # the longest path name, 'reference+compiled', and a fall-back star


def ran_label(ran: str, fell_back: bool) -> str:
    """The path that ran, starred when the encoder fell back to it in the middle of a measurement."""
    return ran + "*" if fell_back else ran


# --- timing and the clock guard -----------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, work) -> float:
    """Seconds of `work()`, the device drained before and after."""
    sync(device)
    start = time.perf_counter()
    work()
    sync(device)
    return time.perf_counter() - start


class Guard:
    """Skips steps that would start after `seconds`, and every step once `stopped` (--hard-limit hit, or
    a stop signal); `skipped` names each step not run and why."""

    def __init__(self, seconds: float):
        self.start, self.seconds, self.skipped = time.perf_counter(), seconds, []
        self.stopped = ""  # why the run was stopped ("--hard-limit reached", "SIGTERM received"); "" while running
        self.signum = 0  # the stop signal received, 0 if none
        self.interruptible = False  # a stop signal unwinds the run only while its sections run

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, step: str) -> bool:
        if self.elapsed() < self.seconds and not self.stopped:
            return True
        why = self.skip(step)
        print(f"  SKIPPED {step}: {self.elapsed():.0f} s elapsed, {why}")
        return False

    def skip(self, step: str) -> str:
        """Records `step` as not run, for the stop if there was one, else for the time guard; the reason."""
        why = self.stopped or f"past --time-guard {self.seconds:.0f} s"
        self.skipped.append({"step": step, "reason": why})
        return why

    def stop(self, why: str) -> None:
        self.stopped = self.stopped or why


class Interrupted(BaseException):
    """The run stopped in the middle of a step; a BaseException, so no `except Exception` (a path
    fallback) swallows it. `step` is the innermost step it interrupted (`running`)."""

    step = ""


class OutOfTime(Interrupted):
    """Raised at --hard-limit."""


class Stopped(Interrupted):
    """Raised on SIGTERM or SIGHUP (a job's `timeout`, a scheduler's kill)."""


@contextmanager
def running(step: str):
    """Names `step` on an Interrupted that stops it (the innermost step names it)."""
    try:
        yield
    except Interrupted as exc:
        exc.step = exc.step or step
        raise


@contextmanager
def hard_limit(seconds: float, guard: Guard):
    """Raises OutOfTime in the main thread once the run is `seconds` old (SIGALRM; unarmed elsewhere)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(_signum, _frame):
        guard.stop("--hard-limit reached")
        raise OutOfTime(f"--hard-limit {seconds:.0f} s reached")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, max(seconds - guard.elapsed(), 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextmanager
def stop_signals(guard: Guard):
    """SIGTERM and SIGHUP stop the run as an interrupt would: the step running is interrupted (while
    the sections run) and the rest not run, the temporary folder removed, the JSON and the summary kept;
    the exit status is then 128 + the signal. A second signal, or one after the sections, only records."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame):
        first = not guard.signum
        guard.signum = signum
        guard.stop(f"{signal.Signals(signum).name} received")
        if first and guard.interruptible:
            raise Stopped(guard.stopped)

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS
                if signal.getsignal(signum) is not signal.SIG_IGN}  # ignored (nohup): stays so
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # one held back since start-up lands now
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def private_temp(folder: Path):
    """Every temporary file of the run, torch inductor's included (its precompiled headers go to
    tempfile.gettempdir()/torchinductor_USER whatever TORCHINDUCTOR_CACHE_DIR says), goes under
    `folder` and leaves with it: tempfile's folder and TMPDIR (for the compiler it runs) point there.
    Works for what imports torch._inductor after it (this script does so only when it compiles)."""
    previous = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = os.environ["TMPDIR"] = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = previous[0]
        if previous[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous[1]


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def header(name: str, guard: Guard) -> None:
    print(f"\n== {name} (at {guard.elapsed():.0f} s)", flush=True)


# --- workload: coding-like reads and ORFs, without biopython -------------------------------------------

def coding_read(rng: random.Random, length: int = READ_LENGTH) -> str:
    """Sense codons only, so the forward frame 1 has no stop."""
    return "".join(rng.choices(SENSE, k=length // 3 + 1))[:length]


def orfs(count: int, seed: int) -> list[tuple[str, str]]:
    """(nucleotides, protein) pairs: 80 % full 166-codon ORFs, the rest 20-165 codons."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        codons = rng.choices(SENSE, k=166 if rng.random() < 0.8 else rng.randint(20, 165))
        pairs.append(("".join(codons), "".join(AMINO[c] for c in codons)))
    return pairs


def write_reads(path: Path, count: int, seed: int) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as out:
        for i in range(count):
            out.write(f">read_{i} coding-like\n{coding_read(rng)}\n")
    return path


# --- random models, built on the device -------------------------------------------------------------------

def _random(shape: tuple, generator: torch.Generator, device: torch.device, std: float) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=device) * std


def _weight(key: str, shape: tuple, generator, device) -> torch.Tensor:
    """Unit-gain matrices, N(0,1) embeddings, LayerNorm weights near 1, small biases."""
    if key.endswith(("embeddings.weight", "embed_tokens.weight")):
        return _random(shape, generator, device, 1.0)
    if len(shape) == 2:
        return _random(shape, generator, device, shape[1] ** -0.5)
    if key.endswith("weight"):  # a LayerNorm's scale
        return 1.0 + _random(shape, generator, device, 0.02)
    return _random(shape, generator, device, 0.02)


def esm_key_shapes(layers: int, dim: int) -> dict[str, tuple]:
    """fair-esm ESM-2 state_dict names (as its `ESM2` module names them) and shapes."""
    shapes = {"embed_tokens.weight": (len(ESM_TOKENS), dim), "emb_layer_norm_after.weight": (dim,),
              "emb_layer_norm_after.bias": (dim,)}
    for i in range(layers):
        p = f"layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes.update({f"{p}self_attn.{proj}.weight": (dim, dim), f"{p}self_attn.{proj}.bias": (dim,)})
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            shapes.update({f"{p}{norm}.weight": (dim,), f"{p}{norm}.bias": (dim,)})
        shapes.update({f"{p}fc1.weight": (4 * dim, dim), f"{p}fc1.bias": (4 * dim,),
                       f"{p}fc2.weight": (dim, 4 * dim), f"{p}fc2.bias": (dim,)})
    return shapes


def esm_checkpoint(spec: dict, device: torch.device, seed: int) -> dict:
    """A fair-esm checkpoint dict with random fp32 weights living on `device`."""
    generator = torch.Generator(device=device).manual_seed(seed)
    state = {key: _weight(key, shape, generator, device)
             for key, shape in esm_key_shapes(spec["layers"], spec["dim"]).items()}
    cfg = argparse.Namespace(encoder_layers=spec["layers"], encoder_embed_dim=spec["dim"],
                             encoder_attention_heads=spec["heads"], token_dropout=True)
    return {"model": state, "cfg": {"model": cfg}}


def save_esm_checkpoint(data: dict, path: Path) -> None:
    """The checkpoint as fair-esm publishes it: fp16 tensors, `encoder.sentence_encoder.` names."""
    state = {"encoder.sentence_encoder." + k: v.to("cpu", torch.float16) for k, v in data["model"].items()}
    torch.save({"model": state, "cfg": data["cfg"]}, str(path))


def dnabert_folder(folder: Path, spec: dict, device: torch.device, seed: int) -> Path:
    """A DNABERT-S Hugging Face folder: config.json, random model.safetensors, a BPE tokenizer."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {"hidden_size": spec["hidden"], "num_hidden_layers": spec["layers"],
              "num_attention_heads": spec["heads"], "intermediate_size": spec["intermediate"],
              "vocab_size": spec["vocab"], "type_vocab_size": 2, "layer_norm_eps": 1e-12, "model_type": "bert"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    generator = torch.Generator(device=device).manual_seed(seed)
    state = {"bert." + key: _weight(key, shape, generator, device).cpu()
             for key, shape in tiny.dnabert_key_shapes(config).items()}
    save_file(state, str(folder / "model.safetensors"))
    tiny._tiny_tokenizer(spec["vocab"], seed).save(str(folder / "tokenizer.json"))
    return folder


def path_keyword(loader, name: str = "path") -> bool:
    """Whether this loader takes `path=` (the fast path exists in this checkout), or `compile=`."""
    return name in inspect.signature(loader).parameters


def keywords(loader, path: str) -> dict:
    """The loader's keywords for one of PATHS ('fast+compiled' = path 'fast', compile=True)."""
    found = {"path": path.split("+")[0]} if path_keyword(loader) else {}
    if path_keyword(loader, "compile"):
        found["compile"] = path.endswith("+compiled")
    return found


def loaders(dnabert: Path, esm_data: dict) -> dict:
    """role -> (loader, its callable checked for `path`) building one encoder on (device, dtype, path)."""
    def esm(device, dtype, path):
        return Esm2Encoder.from_checkpoint_data(esm_data, device, dtype, label="random ESM-2",
                                                **keywords(Esm2Encoder.from_checkpoint_data, path))

    def dna(device, dtype, path):
        return DnabertSEncoder(dnabert, device, dtype, **keywords(DnabertSEncoder, path))

    return {"dnabert_s": (dna, LOADER_CHECKS["dnabert_s"]), "esm2": (esm, LOADER_CHECKS["esm2"])}


#: role -> the callable whose signature says which paths its loader offers (`paths_of`)
LOADER_CHECKS = {"dnabert_s": DnabertSEncoder, "esm2": Esm2Encoder.from_checkpoint_data}


#: the model name of each loader's encoder (virnucpro.encoders.COMPILED_REFERENCE names models)
MODEL_OF = {DnabertSEncoder: "DNABERT-S", Esm2Encoder.from_checkpoint_data: "ESM-2"}


def paths_of(loader) -> tuple[str, ...]:
    """The PATHS this checkout's loader can be asked for (the compiled reference path only for a
    model this checkout compiles it for)."""
    if not path_keyword(loader):
        return ("reference",)
    if not path_keyword(loader, "compile"):
        return ("reference", "fast")
    compiled_reference = MODEL_OF.get(loader) in getattr(encoders_package, "COMPILED_REFERENCE", ())
    return tuple(path for path in PATHS if path != "reference+compiled" or compiled_reference)


def ran_path(encoder) -> str:
    return getattr(encoder, "path", "reference")


# --- FLOPs (matrix products and attention; useful work, padding not counted) ---------------------------

def esm_flops(length: int, spec: dict) -> float:
    """Per sequence: 12 d^2 weights per layer (qkv 3, out 1, fc1 4, fc2 4) x 2, plus QK^T and AV."""
    d = spec["dim"]
    return spec["layers"] * (24 * d * d * length + 4 * length * length * d)


def dnabert_flops(length: int, spec: dict) -> float:
    """Per sequence: (4 h^2 + 3 h I) weights per layer (qkv, out, GeGLU in 2I, out I) x 2, plus attention."""
    h, i = spec["hidden"], spec["intermediate"]
    return spec["layers"] * (2 * (4 * h * h + 3 * h * i) * length + 4 * length * length * h)


def flops_of(role: str, plan: Plan):
    return (lambda n: esm_flops(n, plan.esm)) if role == "esm2" else (lambda n: dnabert_flops(n, plan.dnabert))


# --- device and ceilings ---------------------------------------------------------------------------------

def describe_device(device: torch.device) -> str:
    """One line per fact torch gives about the device and its attention kernels."""
    import importlib.util

    lines = [f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
             f"triton {'yes' if importlib.util.find_spec('triton') else 'no'}"]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(f"{props.name}: {props.multi_processor_count} SMs, {props.total_memory / 2**30:.1f} GiB, "
                     f"compute capability {props.major}.{props.minor}")
    else:
        lines.append(f"CPU, {torch.get_num_threads()} torch threads")
    offered = {"torch.nn.attention.varlen": importlib.util.find_spec("torch.nn.attention.varlen") is not None,
               "torch.nn.attention.flex_attention": importlib.util.find_spec("torch.nn.attention.flex_attention")
               is not None, "flash SDPA enabled": torch.backends.cuda.flash_sdp_enabled()}
    lines.append(", ".join(f"{name}: {'yes' if ok else 'no'}" for name, ok in offered.items()))
    return "\n".join("  " + line for line in lines)


def gemm_seconds(rows: int, k: int, n: int, repeats: int, device: torch.device) -> float:
    """Seconds of `repeats` fp16 x @ W^T with x (rows, k), W (n, k), after 3 warm-up products."""
    x = torch.randn(rows, k, device=device, dtype=torch.float16)
    w = torch.randn(n, k, device=device, dtype=torch.float16)
    for _ in range(3):
        F.linear(x, w)
    return timed(device, lambda: [F.linear(x, w) for _ in range(repeats)])


def gemm_ceilings(plan: Plan, device: torch.device, rows: int) -> dict[str, float]:
    """fp16 TFLOP/s of x @ W^T for ESM-2's qkv, attn_out, fc1 and fc2 shapes, `rows` token rows."""
    d = plan.esm["dim"]
    shapes = {"qkv": (d, 3 * d), "attn_out": (d, d), "fc1": (d, 4 * d), "fc2": (4 * d, d)}
    results = {name: 2 * rows * k * n * plan.gemm_repeats / gemm_seconds(rows, k, n, plan.gemm_repeats, device) / 1e12
               for name, (k, n) in shapes.items()}
    free(device)
    return results


def copy_seconds(n_bytes: int, repeats: int, device: torch.device) -> float:
    """Seconds of `repeats` device-to-device copies of `n_bytes`, after one warm-up copy."""
    src = torch.empty(n_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    return timed(device, lambda: [dst.copy_(src) for _ in range(repeats)])


def copy_ceiling(plan: Plan, device: torch.device) -> float:
    """Device-to-device copy, GB/s counting bytes read plus bytes written."""
    n_bytes, repeats = plan.copy_mib * 2**20, 10
    seconds = copy_seconds(n_bytes, repeats, device)
    free(device)
    return 2 * n_bytes * repeats / seconds / 1e9


def peak_tflops(device: torch.device, override: float | None, best_gemm: float) -> tuple[float | None, str]:
    """The peak MFU is taken against, and where it comes from; None on the CPU (MFU is n/a there)."""
    if device.type != "cuda":
        return None, "n/a on the CPU"
    if override:
        return override, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment, peak in SPEC_PEAKS:
            if fragment in name:
                return peak, f"NVIDIA dense fp16 spec for {fragment}"
    return best_gemm, "best GEMM measured above (no spec peak known for this device)"


# --- encoders: throughput per path -----------------------------------------------------------------------

def measure_path(result: PathResult, encoder, tokens: list, budget: int, device: torch.device, flops) -> list:
    """First pass (compile and autotune included) and a steady pass over the same batches."""
    batches = plan_batches([len(t) for t in tokens], budget)
    collated = [encoder.collate([tokens[i] for i in batch]) for batch in batches]

    def one_pass():
        for c in collated:
            encoder.forward(c)

    result.first_pass_s = timed(device, one_pass)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result.steady_s = timed(device, one_pass)
    if device.type == "cuda":
        result.peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
    result.tokens = sum(len(t) for t in tokens)
    result.tflop = sum(flops(len(t)) for t in tokens) / 1e12
    return collated


def workload(role: str, encoder, count: int, seed: int) -> list:
    """Token arrays of ORF-like sequences for this encoder (nucleotides or proteins)."""
    pairs = orfs(count, seed)
    return encoder.tokenize([nuc if role == "dnabert_s" else prot for nuc, prot in pairs])


def bench_path(role: str, load, path: str, plan: Plan, device: torch.device, budget: int) -> PathResult:
    """One path of one encoder in fp16: load, throughput, then the profile of its biggest batch."""
    result = PathResult(role, path)
    free(device)
    start = time.perf_counter()
    encoder = load(device, torch.float16, path)
    sync(device)
    result.load_s, result.loaded = time.perf_counter() - start, ran_path(encoder)
    result.compile_s = getattr(encoder, "compile_seconds", 0.0)
    count = plan.esm_sequences if role == "esm2" else plan.dnabert_sequences
    tokens = workload(role, encoder, count, seed=1)
    collated = measure_path(result, encoder, tokens, budget, device, flops_of(role, plan))
    result.kernels, result.shares = top_kernels(encoder, collated[0], device)
    result.ran = ran_path(encoder)  # read last: a batch that fails moves the encoder to a safer path
    result.fell_back_during_measurement = result.ran != result.loaded
    return result


def print_path(result: PathResult) -> None:
    fell = f" (fell back from {result.loaded} during the measurement)" if result.fell_back_during_measurement else ""
    print(f"  {result.role:9s} {result.requested:{PATH_WIDTH}s} ran {result.ran:{PATH_WIDTH}s} load {result.load_s:6.2f} s (compile "
          f"{result.compile_s:.2f} s)  first pass "
          f"{result.first_pass_s:7.2f} s  steady {result.steady_s:7.2f} s  {result.tokens_per_s:12,.0f} tok/s  "
          f"{result.tflops:8.3g} TFLOP/s  peak mem {result.peak_gib:6.2f} GiB{fell}", flush=True)


def bench_encoder(role: str, load, paths: tuple, plan: Plan, device: torch.device, guard: Guard,
                  budget: int, keep, failed) -> list[PathResult]:
    """Each path of one encoder (`bench_path`), each result handed to `keep` as soon as it is measured;
    a path that fails (out of memory, a CUDA error) goes to `failed` and the next path runs."""
    results = []
    for path in paths:
        if not guard.allows(f"{role} {path}"):
            continue
        try:
            with running(f"{role} {path}"):
                results.append(bench_path(role, load, path, plan, device, budget))
        except Exception as exc:
            failed(f"encoders {role} {path}", exc)
            free(device)
            continue
        print_path(results[-1])
        keep(results[-1])
        if plan.smoke and (results[-1].loaded, results[-1].ran) != (path, path):
            failed(f"encoders {role} {path}", PathNotRun(f"requested {path}, loaded {results[-1].loaded}, ran "
                                                         f"{results[-1].ran}: on the CPU every path runs as asked"))
    return results


# --- kernels ---------------------------------------------------------------------------------------------

KINDS = (("attention", ("flash", "fmha", "attention", "attn", "flex", "softmax")),
         ("fused", ("triton_", "cpp_fused")),  # inductor's kernels (the compiled path's elementwise work)
         ("gemm", ("gemm", "gemv", "cutlass", "nvjet", "xmma", "matmul", "aten::mm", "aten::bmm", "aten::addmm")),
         ("cat/mul", ("catarray", "aten::cat", "mulfunctor", "aten::mul")))


def kind_of(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KINDS if any(key in low for key in keys)), "other")


def top_kernels(encoder, collated, device: torch.device, n: int = 8) -> tuple[list, dict]:
    """(name, share) of the `n` longest device kernels (CPU ops on the CPU) of one forward, and the
    time shares by kind."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        encoder.forward(collated)
        sync(device)
    if device.type == "cuda":
        times = {e.key: e.self_device_time_total for e in prof.key_averages() if e.device_type == DeviceType.CUDA}
    else:
        times = {e.key: e.self_cpu_time_total for e in prof.key_averages() if e.key.startswith("aten::")}
    times = {k: v for k, v in times.items() if v > 0}
    total = sum(times.values()) or 1
    ranked = sorted(times.items(), key=lambda kv: -kv[1])
    shares = {}
    for name, t in ranked:
        shares[kind_of(name)] = shares.get(kind_of(name), 0.0) + t / total
    return [(name, t / total) for name, t in ranked[:n]], shares


def print_kernels(results: list[PathResult]) -> None:
    for r in results:
        shares = ", ".join(f"{kind} {share:.0%}" for kind, share in sorted(r.shares.items(), key=lambda kv: -kv[1]))
        print(f"  {r.role} {r.requested} (ran {r.ran_label}): {shares}")
        for name, share in r.kernels:
            print(f"    {share:6.1%}  {name[:110]}")


# --- precision -----------------------------------------------------------------------------------------

def vectors_of(encoder, tokens: list, budget: int) -> torch.Tensor:
    """Pooled float32 vectors on the CPU, batch by batch."""
    batches = plan_batches([len(t) for t in tokens], budget)
    out = torch.empty((len(tokens), encoder.width), dtype=torch.float32)
    for batch in batches:
        out[batch] = encoder.embed([tokens[i] for i in batch]).float().cpu()
    return out


def role_vectors(role: str, load, paths: tuple, pairs: list, device: torch.device, budget: int,
                 guard: Guard) -> tuple[dict, dict]:
    """{(path asked, dtype): vectors} of one encoder (fp32 reference, then fp16/bf16 per path), and
    {(path asked, dtype): (path loaded, path that ran at the end)}."""
    found, ran = {}, {}
    for path, dtype in precision_pairs(paths):
        if not guard.allows(f"precision {role} {path} {dtype}"):
            continue
        free(device)
        with running(f"precision {role} {path} {dtype}"):
            encoder = load(device, DTYPES[dtype], path)
            loaded = ran_path(encoder)
            tokens = encoder.tokenize([nuc if role == "dnabert_s" else prot for nuc, prot in pairs])
            found[(path, dtype)] = vectors_of(encoder, tokens, budget)
        final = ran[(path, dtype)] = (loaded, ran_path(encoder))  # read after: a failing batch moves it down
        if final[1] != path:
            print(f"  {role} {dtype}: {path} path asked, {ran_label(final[1], loaded != final[1])} ran")
        del encoder
    return found, ran


def precision_pairs(paths: tuple) -> list[tuple[str, str]]:
    """(path, dtype) of one encoder's precision loads, in order: fp32 reference, then fp16/bf16 per path."""
    return [("reference", "fp32")] + [(p, d) for p in paths for d in ("fp16", "bf16")]


def cosine_min(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.double(), b.double(), dim=1).min())


def classifier_flips(vectors: dict, key: tuple, seed: int) -> float:
    """Fraction of argmax calls of a random `MLPClassifier` (eval mode) that `key` changes vs fp32."""
    torch.manual_seed(seed)
    model = MLPClassifier(sum(vectors[r][("reference", "fp32")].shape[1] for r in ROLES)).eval()
    with torch.inference_mode():
        base = model(torch.cat([vectors[r][("reference", "fp32")] for r in ROLES], dim=1)).argmax(1)
        calls = model(torch.cat([vectors[r][key] for r in ROLES], dim=1)).argmax(1)
    return float((calls != base).float().mean())


def precision_rows(vectors: dict, ran: dict) -> list[dict]:
    """Per role, path asked and low precision: the path that ran, min cosine and max |delta| to fp32,
    max |delta| to reference."""
    rows = []
    for role, found in vectors.items():
        base = found.get(("reference", "fp32"))
        for (path, dtype), v in found.items():
            if dtype == "fp32" or base is None:
                continue
            reference, (loaded, final) = found.get(("reference", dtype)), ran[role][(path, dtype)]
            rows.append({"role": role, "path": path, "dtype": dtype, "ran": final,
                         "fell_back_during_measurement": final != loaded, "cos_min": cosine_min(v, base),
                         "max_abs": float((v - base).abs().max()),
                         "vs_reference": float((v - reference).abs().max()) if reference is not None else math.nan})
    return rows


def precision_paths(loader) -> tuple[str, ...]:
    """The reference path, DNABERT-S's compiled reference path (its GPU default) where offered, and
    the fastest path this checkout offers (each at fp16 and bf16). The classifier needs both models'
    vectors of one path: a path only one model has gets no 'calls changed' figure."""
    offered = paths_of(loader)
    compiled_reference = [path for path in offered if path == "reference+compiled"]
    return tuple(dict.fromkeys((offered[0], *compiled_reference, offered[-1])))


def precision_section(load: dict, plan: Plan, device: torch.device, budget: int, guard: Guard) -> dict:
    """fp16/bf16 against fp32 and against reference, per encoder, and the classifier calls that change."""
    pairs = orfs(plan.precision_sequences, seed=2)
    measured = {role: role_vectors(role, fn, precision_paths(checked), pairs, device, budget, guard)
                for role, (fn, checked) in load.items()}
    vectors = {role: found for role, (found, _) in measured.items()}
    rows = precision_rows(vectors, {role: ran for role, (_, ran) in measured.items()})
    for row in rows:
        key = (row["path"], row["dtype"])
        ready = all(key in vectors.get(r, {}) and ("reference", "fp32") in vectors[r] for r in ROLES)
        row["flips"] = classifier_flips(vectors, key, seed=3) if ready else math.nan
        print(f"  {row['role']:9s} {row['path']:9s} {row['dtype']} (ran {precision_ran(row)})  "
              f"cosine to fp32 min {row['cos_min']:.6f}  "
              f"max |d| to fp32 {row['max_abs']:.2e}  max |d| to reference {row['vs_reference']:.2e}  "
              f"classifier calls changed {_calls_changed(row)}")
    return {"sequences": len(pairs), "rows": rows}


def _calls_changed(row: dict) -> str:
    """The share of classifier calls a precision row changes; n/a where only one model has its path."""
    return "n/a" if math.isnan(row["flips"]) else f"{row['flips']:.2%}"


def precision_ran(row: dict) -> str:
    return ran_label(row["ran"], row["fell_back_during_measurement"])


# --- embed() end to end ----------------------------------------------------------------------------------

class BusySampler:
    """Mean NVML GPU utilisation (share of time a kernel ran) sampled every 50 ms; None without NVML."""

    def __init__(self, device: torch.device):
        self.device, self.samples, self.stop = device, [], threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop.wait(0.05):
            self.samples.append(torch.cuda.utilization(self.device))

    def __enter__(self):
        try:
            if self.device.type == "cuda":
                torch.cuda.utilization(self.device)
                self.thread.start()
        except Exception as exc:  # no pynvml / NVML: the fraction is reported as unavailable
            print(f"  GPU-busy sampling unavailable: {type(exc).__name__}: {exc}")
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()

    def fraction(self) -> float | None:
        return sum(self.samples) / len(self.samples) / 100 if self.samples else None


#: The random models, recorded as test models: random weights never match the published models' pins.
RANDOM_MODEL_FILES = {"esm2": ["esm2_t36_3B_UR50D.pt"],
                      "dnabert_s": ["DNABERT-S/config.json", "DNABERT-S/model.safetensors", "DNABERT-S/tokenizer.json"]}


def write_esm_file(models: Path, esm_data: dict) -> tuple[Path, float]:
    """The ESM-2 checkpoint under its standard name beside DNABERT-S/; seconds spent writing it."""
    start = time.perf_counter()
    save_esm_checkpoint(esm_data, models / "esm2_t36_3B_UR50D.pt")
    return models / "esm2_t36_3B_UR50D.pt", time.perf_counter() - start


def prepared_shard(work: Path, records: int) -> Path:
    """A prepare shard of exactly `records` ORF records from coding-like reads (each gives >= 1)."""
    console.err.quiet = True
    try:
        manifest = prepare([write_reads(work / "reads.fa", records, seed=4)], work / "prepared",
                           chunk_size=READ_LENGTH, shard_size=records)
    finally:
        console.err.quiet = False
    first = manifest["shards"][0]
    if first["records"] != records:
        raise SystemExit(f"prepare gave {first['records']} records in shard 0, expected {records}")
    return work / "prepared" / first["file"]


def embed_section(plan: Plan, work: Path, dnabert: Path, esm_data: dict, device: torch.device) -> dict:
    """Lookup (hashing included), load and `embed()` of one shard with the embed defaults."""
    shard = prepared_shard(work, plan.records)
    models = dnabert.parent
    checkpoint, write_s = write_esm_file(models, esm_data)
    tiny.record_as_tiny(models, RANDOM_MODEL_FILES, "benchmarks/gpu_check.py random weights")
    size_gb = checkpoint.stat().st_size / 1e9
    print(f"  shard of {plan.records:,} records; ESM-2 checkpoint written ({size_gb:.2f} GB fp16) in {write_s:.1f} s")
    start = time.perf_counter()
    model_set = store.locate(models, roles=embed_mod.ROLES)
    lookup_s = time.perf_counter() - start
    precision = embed_mod.resolve_precision(plan.embed_precision, device)
    load_s = timed(device, lambda: embed_mod.embedding_widths(model_set, device, precision))
    encoders = embed_mod._load_encoders(model_set, device, precision)  # the ones embed() then uses
    loaded = {role: ran_path(e) for role, e in encoders.items()}
    try:
        with console.err.capture() as captured, BusySampler(device) as busy:
            embed_s = timed(device, lambda: embed_mod.embed(shard, work / "shard.h5", model_set=model_set,
                                                            device=plan.device, precision=precision))
    finally:  # the cached encoders leave the device even when embed() fails
        embed_mod._load_encoders_cached.cache_clear()
    summary = next((line.strip() for line in captured.get().splitlines() if "computed" in line), "")
    ran = {role: ran_path(e) for role, e in encoders.items()}  # a failing batch moves an encoder down
    result = {"records": plan.records, "precision": precision, "paths": ran, "loaded_paths": loaded,
              "fell_back_during_measurement": ran != loaded, "lookup_s": lookup_s,
              "load_s": load_s, "embed_s": embed_s, "records_per_s": plan.records / embed_s,
              "records_per_s_with_load": plan.records / (embed_s + load_s), "gpu_busy": busy.fraction(),
              "log": summary}
    writes = "; it writes ESM-2's fp16 copy" if precision == "fp16" else ""
    print(f"  lookup + sha256 {lookup_s:.1f} s; first load {load_s:.1f} s ({precision}, paths {embed_paths(result)}{writes}); embed {embed_s:.1f} s = {result['records_per_s']:,.0f} records/s "
          f"({result['records_per_s_with_load']:,.0f} with the load); GPU busy {_share(result['gpu_busy'])}\n  {summary}")
    _refuse_embed_fallback_in_smoke(plan, result)
    try:
        result["task_load"] = task_load(models, device, precision)
    except (RuntimeError, OSError, ValueError) as exc:  # the figures above stay; a stop still propagates
        result["task_load"] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"  a later task's load: FAILED ({result['task_load']['error']})")
        if plan.smoke:
            raise
    return result


def embed_paths(result: dict) -> dict:
    """The paths embed() ran on, each starred when its encoder fell back to it during the run."""
    loaded = result.get("loaded_paths", result["paths"])
    return {role: ran_label(path, path != loaded.get(role, path)) for role, path in result["paths"].items()}


def _refuse_embed_fallback_in_smoke(plan: Plan, result: dict) -> None:
    """An encoder that fell back during embed() mixes two paths in its figure: starred on a GPU, a
    failure of the smoke run (on the CPU every path runs as asked)."""
    if result["fell_back_during_measurement"]:
        print("  * fell back during embed() (a batch failed on the path loaded): the figure mixes both paths")
        if plan.smoke:
            raise PathNotRun(f"embed() loaded {result['loaded_paths']}, ran {result['paths']}")


# What a later embed task pays to start: a new process that imports virnucpro and loads both models
# the way `embed` does, with ESM-2's fp16 copy written and the compile cache warm (both by the first load).
TASK_LOAD = """
import json, sys, time
started = time.perf_counter()
from pathlib import Path
import torch
from virnucpro import embed
from virnucpro.models import store
imported = time.perf_counter()
device = torch.device(sys.argv[2])
model_set = store.locate(Path(sys.argv[1]), roles=embed.ROLES)
precision = sys.argv[3]
start = time.perf_counter()
encoders = embed._load_encoders(model_set, device, precision)  # the compile cache: the inherited variable
if device.type == "cuda":
    torch.cuda.synchronize(device)
print(json.dumps({"import_s": imported - started, "load_s": time.perf_counter() - start,
                  "paths": {role: encoder.path for role, encoder in encoders.items()},
                  "esm2_from": Path(encoders["esm2"].loaded_from).name}))
"""


def task_load(models: Path, device: torch.device, precision: str) -> dict:
    """`TASK_LOAD` in a child process (killed with this one's step when it is stopped): seconds to
    import, seconds to load (the per-task figure the 10 s target is about) and the paths settled."""
    child = subprocess.run([sys.executable, "-c", TASK_LOAD, str(models), str(device), precision],
                           capture_output=True, text=True, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                                         os.environ.get("PYTHONPATH")]))})
    if child.returncode != 0:
        raise RuntimeError(f"the task-load child exited {child.returncode}: {child.stderr.strip()[-2000:]}")
    found = json.loads((child.stdout.strip().splitlines() or ["no output"])[-1])
    if precision == "fp16" and not found["esm2_from"].endswith(".fp16.safetensors"):
        raise RuntimeError(f"the later task loaded ESM-2 from {found['esm2_from']}, not from the fp16 copy the "
                           "first load wrote")
    print(f"  a later task's load (new process, compile cache warm): {found['load_s']:.1f} s, ESM-2 from "
          f"{found['esm2_from']} (imports {found['import_s']:.1f} s before it; paths {found['paths']})")
    return found


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _fraction(value: float, of: float | None) -> str:
    """`value` as a percentage of `of` (n/a without one)."""
    return "n/a" if of is None else f"{value / of:.1%}"


# --- the figures: kept after every step, strict JSON -------------------------------------------------------

def jsonable(value):
    """`value` as strict JSON holds it: results as dicts, tuples as lists, NaN and infinities as null."""
    if isinstance(value, PathResult):
        return jsonable({**asdict(value), "tokens_per_s": value.tokens_per_s, "tflops": value.tflops})
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Report:
    """The figures found so far and the sections that failed, rewritten to --json after every step."""

    def __init__(self, path: Path | None, guard: Guard):
        self.path, self.guard, self.figures, self.failed = path, guard, {}, []

    def save(self) -> None:
        """Atomically (a temporary file in the same folder, then os.replace): a kill keeps the last save."""
        if self.path is None:
            return
        found = {**self.figures, "failed": self.failed, "skipped": self.guard.skipped, "seconds": self.guard.elapsed()}
        partial = self.path.with_name(f".{self.path.name}.partial")
        try:
            partial.write_text(json.dumps(jsonable(found), indent=2, allow_nan=False))
            os.replace(partial, self.path)
        except BaseException:  # --json names a folder, the disk is full, a kill: no partial left behind
            partial.unlink(missing_ok=True)
            raise

    def fail(self, section: str, exc: BaseException) -> None:
        """Records a failed section (or encoder x path) and saves; its traceback goes to stderr (a
        stop, --hard-limit or a signal, is no bug: none for it)."""
        stopped = isinstance(exc, Interrupted)
        if not stopped:
            traceback.print_exception(exc, file=sys.stderr)
        self.failed.append({"section": section, "step": getattr(exc, "step", ""), "error": type(exc).__name__,
                            "message": str(exc)})
        where = "" if stopped else " (traceback on stderr)"
        print(f"  FAILED {failed_label(self.failed[-1])}: {type(exc).__name__}: {exc}{where}", flush=True)
        self.save()


def failed_label(failed: dict) -> str:
    """The section that failed, and the step it was in when a stop interrupted one."""
    return f"{failed['section']} ({failed['step']})" if failed.get("step") else failed["section"]


# --- summary -------------------------------------------------------------------------------------------------

def mfu_basis(figures: dict) -> tuple[float | None, float | None]:
    """(peak, best GEMM) MFU and 'of GEMM' are taken against; None where n/a (the CPU, no ceilings)."""
    peak = figures.get("peak", (None, ""))
    if peak[0] is None or not figures.get("gemm_tflops"):
        print("  MFU and 'of GEMM' n/a " + ("on the CPU" if "peak" in figures else "(no ceilings measured)")
              + "; '1st-steady' = compile, autotune and warm-up of the first pass")
        return None, None
    best_gemm = max(figures["gemm_tflops"].values())
    print(f"  MFU against {peak[0]:.4g} TFLOP/s ({peak[1]}); 'of GEMM' against the best fp16 GEMM measured, "
          f"{best_gemm:.4g} TFLOP/s; '1st-steady' = compile, autotune and warm-up of the first pass")
    return peak[0], best_gemm


def print_path_table(results: list[PathResult], peak: float | None, best_gemm: float | None) -> None:
    print(f"  {'encoder':9s} {'path':{PATH_WIDTH}s} {'ran':{PATH_WIDTH}s} {'tokens/s':>12s} {'TFLOP/s':>9s} {'MFU':>6s} {'of GEMM':>8s} "
          f"{'peak GiB':>9s} {'load s':>7s} {'compile s':>9s} {'1st pass s':>10s} {'steady s':>9s} {'1st-steady s':>12s}")
    for r in results:
        print(f"  {r.role:9s} {r.requested:{PATH_WIDTH}s} {r.ran_label:{PATH_WIDTH}s} {r.tokens_per_s:12,.0f} {r.tflops:9.3g} "
              f"{_fraction(r.tflops, peak):>6s} {_fraction(r.tflops, best_gemm):>8s} {r.peak_gib:9.2f} {r.load_s:7.2f} "
              f"{r.compile_s:9.2f} {r.first_pass_s:10.2f} {r.steady_s:9.2f} {r.first_pass_s - r.steady_s:12.2f}")
    if any(r.fell_back_during_measurement for r in results):
        print("  * fell back during the measurement (a batch failed on the path loaded): the row mixes both paths")


def print_summary(report: Report) -> None:
    """What exists: the path table, precision, embed(), the failed sections and the skipped steps."""
    figures, guard = report.figures, report.guard
    header("summary", guard)
    print_path_table(figures.get("results", []), *mfu_basis(figures))
    precision = figures.get("precision") or {}
    for row in precision.get("rows", []):
        print(f"  precision {row['role']:9s} {row['path']:{PATH_WIDTH}s} {row['dtype']} (ran {precision_ran(row)}): min cosine "
              f"{row['cos_min']:.6f}, calls changed {_calls_changed(row)} ({precision['sequences']} sequences)")
    embedded = figures.get("embed")
    if embedded:
        task = embedded.get("task_load") or {}
        later = f"{task['load_s']:.1f} s" if "load_s" in task else "n/a"
        print(f"  embed(): {embedded['records']:,} records, {embedded['records_per_s']:,.0f} records/s, first load "
              f"{embedded['load_s']:.1f} s, a later task's load {later}, GPU busy {_share(embedded['gpu_busy'])}, "
              f"paths {embed_paths(embedded)}")
    for failed in report.failed:
        print(f"  FAILED {failed_label(failed)}: {failed['error']}: {failed['message']}")
    print_skipped(guard.skipped)
    print(f"  total {guard.elapsed():.0f} s")


def print_skipped(skipped: list[dict]) -> None:
    """The steps not run, one line per reason (the time guard, --hard-limit, a stop signal)."""
    reasons = dict.fromkeys(s["reason"] for s in skipped)
    if not reasons:
        print("  not run: nothing")
    for reason in reasons:
        steps = ", ".join(s["step"] for s in skipped if s["reason"] == reason)
        print(f"  not run ({reason}): {steps}")


# --- sections and main ---------------------------------------------------------------------------------------

def options(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="every section and path on the CPU with tiny models (GPU-only kernels excepted: see the docstring)")
    ap.add_argument("--peak-tflops", type=float, help="peak for MFU (default: NVIDIA spec by device name)")
    ap.add_argument("--records", type=conditions.positive_int, help="records of the embed() shard (default 10,000)")
    ap.add_argument("--time-guard", type=float, default=330.0,
                    help="skip steps that would start after this many seconds (default 330)")
    ap.add_argument("--hard-limit", type=float, default=450.0,
                    help="stop the step still running at this many seconds, skip the rest, print the summary "
                         "(default 450)")
    ap.add_argument("--json", type=Path, help="also write every figure to this file, again after every step")
    return ap.parse_args(argv)


@dataclass
class Run:
    """What the sections share: the sizes, the device, a work folder, the clock and the report."""

    plan: Plan
    args: argparse.Namespace
    device: torch.device
    work: Path
    guard: Guard
    report: Report
    budget: int
    models: dict | None = None
    begun: list[str] = field(default_factory=list)  # the sections started, in order


def models_of(run: Run) -> dict:
    """The random DNABERT-S folder, ESM-2 checkpoint and their loaders, built once on first use."""
    if run.models is None:
        dnabert = dnabert_folder(run.work / "models" / "DNABERT-S", run.plan.dnabert, run.device, seed=5)
        esm_data = esm_checkpoint(run.plan.esm, run.device, seed=6)
        run.models = {"dnabert": dnabert, "esm_data": esm_data, "load": loaders(dnabert, esm_data)}
    return run.models


def device_section(run: Run) -> dict:
    text = describe_device(run.device)
    print(text)
    return {"device": text.strip()}


def ceilings_section(run: Run) -> dict:
    gemm = gemm_ceilings(run.plan, run.device, rows=run.budget)
    print("  fp16 GEMM TFLOP/s at", run.budget, "rows:", ", ".join(f"{k} {v:.3g}" for k, v in gemm.items()))
    copy = copy_ceiling(run.plan, run.device)
    print(f"  device copy {copy:.1f} GB/s (read + written)")
    return {"gemm_tflops": gemm, "copy_gb_s": copy,
            "peak": peak_tflops(run.device, run.args.peak_tflops, max(gemm.values()))}


def encoders_section(run: Run) -> dict:
    """Every encoder x path; each row (or failure) joins the report, and the JSON, as soon as it is known."""
    load = models_of(run)["load"]
    print("  fast path offered by the loaders: " + ", ".join(
        f"{role} {'yes' if path_keyword(checked) else 'no'}" for role, (_, checked) in load.items()))
    results = run.report.figures.setdefault("results", [])

    def keep(result: PathResult) -> None:
        results.append(result)
        run.report.save()

    for role, (fn, checked) in load.items():
        bench_encoder(role, fn, paths_of(checked), run.plan, run.device, run.guard, run.budget, keep,
                      run.report.fail)
    return {}


def kernels_section(run: Run) -> dict:
    print_kernels(run.report.figures.get("results", []))
    return {}


def embed_step(run: Run) -> dict:
    if not run.guard.allows("embed"):
        return {"embed": None}
    with running("embed"):
        models = models_of(run)
        return {"embed": embed_section(run.plan, run.work, models["dnabert"], models["esm_data"], run.device)}


def precision_step(run: Run) -> dict:
    return {"precision": precision_section(models_of(run)["load"], run.plan, run.device, run.budget, run.guard)}


AUTOTUNED = "fast+autotuned"  # ESM-2's compiled fast path, its graphs compiled with inductor's max-autotune
AUTOTUNE_STEP = f"esm2 {AUTOTUNED}"


@contextmanager
def autotuning():
    """Inside: the encoders' fused graphs (`compiled.fused`) compile with max-autotune, so inductor
    may pick Triton GEMM templates with the bias, GELU and residual fused into their epilogues (the
    ~124K tokens/s ceiling of cuBLAS plus separate elementwise kernels is the question). Dynamo's
    compiled code is dropped before and after, so neither setting reuses the other's graphs."""
    plain = compiled.fused

    @functools.lru_cache(maxsize=None)
    def autotuned(function):
        compiled.quiet_unreadable_cache()
        return torch.compile(function, dynamic=True, options={"max_autotune": True})

    torch._dynamo.reset()
    compiled.fused = autotuned
    try:
        yield
    finally:
        compiled.fused = plain
        torch._dynamo.reset()


def autotune_section(run: Run) -> dict:
    """ESM-2's compiled fast path again, compiled with max-autotune: one more row of the path table,
    run last (its compile takes the longest, and only this row waits for it)."""
    if AUTOTUNE_STEP not in steps_of("autotune") or not run.guard.allows(AUTOTUNE_STEP):
        return {}
    esm, _ = models_of(run)["load"]["esm2"]
    with running(AUTOTUNE_STEP), autotuning():
        result = bench_path("esm2", esm, "fast+compiled", run.plan, run.device, run.budget)
    result.requested = AUTOTUNED
    result.loaded, result.ran = (path.replace("compiled", "autotuned") for path in (result.loaded, result.ran))
    print_path(result)
    print_kernels([result])
    run.report.figures.setdefault("results", []).append(result)
    return {}


def sections() -> list[tuple[str, object]]:
    """(name, function of the Run returning its figures), in the order they run."""
    return [("device", device_section), ("ceilings", ceilings_section), ("encoders", encoders_section),
            ("kernels", kernels_section), ("embed", embed_step), ("precision", precision_step),
            ("autotune", autotune_section)]


def steps_of(section: str) -> list[str]:
    """The steps `section` runs, in order and named as the guard names them; the section itself when
    it has none of its own."""
    if section == "encoders":
        return [f"{role} {path}" for role, checked in LOADER_CHECKS.items() for path in paths_of(checked)]
    if section == "precision":
        return [f"precision {role} {path} {dtype}" for role, checked in LOADER_CHECKS.items()
                for path, dtype in precision_pairs(precision_paths(checked))]
    if section == "autotune":
        return [AUTOTUNE_STEP] if "fast+compiled" in paths_of(LOADER_CHECKS["esm2"]) else []
    return [section]


def steps_after(section: str, step: str) -> list[str]:
    """The steps of `section` after `step` (all of them when `step` is none of its own)."""
    steps = steps_of(section)
    return steps[steps.index(step) + 1:] if step in steps else [s for s in steps if s != section]


def run_section(name: str, work, run: Run) -> None:
    """One section; a failure is recorded and the next section runs; an interruption (--hard-limit, a
    stop signal) is recorded with the step it stopped, and the section's later steps as not run."""
    try:
        run.begun.append(name)
        header(name, run.guard)
        run.report.figures.update(work(run))
    except (Exception, Interrupted) as exc:  # an OOM, a CUDA error, a bug: the figures so far are kept
        run.report.fail(name, exc)
        if isinstance(exc, Interrupted):
            for step in steps_after(name, exc.step):
                run.guard.skip(step)
    free(run.device)
    run.report.save()


def run_sections(run: Run) -> None:
    """Every section, none started once --hard-limit or a stop signal has stopped the run (their steps
    are recorded as not run, also when the stop came between two sections)."""
    run.guard.interruptible = True
    try:
        for name, work in sections():
            if run.guard.stopped:
                for step in steps_of(name):
                    run.guard.skip(step)
            else:
                run_section(name, work, run)
    except Interrupted as exc:  # fired between two sections: the later ones were never started
        run.report.fail("between sections", exc)
        names = [name for name, _work in sections()]
        for name in names[names.index(run.begun[-1]) + 1 if run.begun else 0:]:
            for step in steps_of(name):
                run.guard.skip(step)
        run.report.save()
    finally:
        run.guard.interruptible = False


def main(argv=None) -> int:
    """Runs every section, prints the summary; 1 when a section failed or --hard-limit stopped one,
    128 + N when signal N (SIGTERM, SIGHUP) stopped the run."""
    args = options(argv)
    plan = SMOKE if args.cpu_smoke else REAL
    if args.records is not None:
        plan = Plan(**{**asdict(plan), "records": args.records})
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no GPU visible: run on a GPU machine, or use --cpu-smoke")
    device = torch.device(plan.device)
    guard = Guard(args.time_guard)
    report = Report(args.json, guard)
    try:
        report.save()  # an unwritable --json is found now, not after the run
    except OSError as exc:
        raise SystemExit(f"cannot write --json {args.json}: {exc}") from None
    with stop_signals(guard):
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp, private_temp(Path(tmp)), \
                hard_limit(args.hard_limit, guard):
            compiled.use_cache(Path(tmp) / "compile-cache")  # cold: the first compile of each model is timed whole
            run_sections(Run(plan, args, device, Path(tmp), guard, report,
                             embed_mod.DEFAULT_TOKEN_BUDGET[device.type]))
        summarise(report)
    if guard.signum:
        return 128 + guard.signum
    return 1 if report.failed else 0


def summarise(report: Report) -> None:
    """The summary and the last save; the summary is dropped when its terminal is gone (SIGHUP)."""
    try:
        print_summary(report)
    except OSError:
        pass
    report.save()


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:  # a stop held back by an exit before the handlers (a usage error) ends the run as it would have
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
