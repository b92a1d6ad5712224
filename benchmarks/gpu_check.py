"""GPU check (issue 10): ceilings, encoder paths, kernels, precision and `embed()`, all measured in one run.

Sections, each printed under a `== name` header, then a summary table:

* device    what torch sees and offers (flash/flex/varlen attention, triton, the peak used for MFU;
            MFU is n/a on the CPU, where no peak of the model's arithmetic is known);
* ceilings  fp16 GEMM TFLOP/s on ESM-2 3B's four GEMM shapes (qkv, attn_out, fc1, fc2) at one GPU
            token budget of rows, and device copy GB/s (bytes read + written per second);
* encoders  for DNABERT-S and ESM-2 x path (reference, fast, fast+compiled): load seconds (the
            compiled path's compile and self-check included, against an empty compile cache, and
            shown apart), first pass (autotune included), steady tokens/s, TFLOP/s, MFU against the
            peak and against the best GEMM, peak memory; real tokens only (special tokens counted,
            padding not);
* kernels   the profiler's top device kernels of one batch per encoder x path, and the time shares of
            attention, GEMM, cat/mul elementwise, inductor's fused kernels and the rest;
* embed     `virnucpro.embed.embed` on a shard of coding-like 500-bp reads: model lookup, load,
            records/s and the GPU-busy fraction (NVML utilisation sampled every 50 ms);
* precision fp16 and bf16 against fp32 (min cosine over the sequences, max |delta|), the fastest
            path (fast+compiled) against reference at the same dtype, and the fraction of per-frame
            calls of a random classifier (the original's MLP shape) that change.

Models have random weights of the real sizes (ESM-2 3B: 36 layers, 2560 wide, 40 heads; DNABERT-S:
768 wide, 12 layers, 12 heads, GeGLU 3072, vocabulary 4096), generated directly on the device; the
DNABERT-S folder and, for `embed()`, an fp16 ESM-2 checkpoint in fair-esm's layout are written to a
temporary folder. The fast path is asked for through the loaders' `path` keyword when they take one
(`inspect.signature`), else only the reference path runs; `path` on the loaded encoder says which
ran. Needs torch, numpy, h5py, tokenizers, safetensors, rich and this repository; never fair-esm or
biopython. A step that would start after --time-guard seconds is skipped and says so.

    python benchmarks/gpu_check.py                   # one GPU; --json FILE keeps the figures
    python benchmarks/gpu_check.py --cpu-smoke       # every section on the CPU, tiny sizes, seconds

`--cpu-smoke` runs every section and every path (reference, fast, fast+compiled, inductor compiling
to C++) with tiny models, but these branches exist only on a GPU and run only there: the varlen
flash kernel (`torch.nn.attention.varlen.varlen_attn`, CUDA fp16/bf16: ESM-2's fast path), the
compiled FlexAttention kernel (`batching._flex(True)`; the CPU runs the eager one), the compiled
block-mask builder (`create_block_mask(..., _compile=True)`), and embed's GPU overlap (pinned host
copies, CUDA events) and out-of-memory halving. Its MFU and 'of GEMM' columns read n/a: a CPU's fp16
GEMM is no ceiling of anything the GPU run measures.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import math
import random
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from virnucpro import console  # noqa: E402
from virnucpro import embed as embed_mod  # noqa: E402
from virnucpro.classifier import MLPClassifier  # noqa: E402
from virnucpro.encoders import compiled  # noqa: E402
from virnucpro.encoders.batching import plan_batches  # noqa: E402
from virnucpro.encoders.dnabert_s import DnabertSEncoder  # noqa: E402
from virnucpro.encoders.esm2 import TOKENS as ESM_TOKENS  # noqa: E402
from virnucpro.encoders.esm2 import Esm2Encoder  # noqa: E402
from virnucpro.models import store, tiny  # noqa: E402
from virnucpro.prepare import prepare  # noqa: E402

ROLES = ("dnabert_s", "esm2")
PATHS = ("reference", "fast", "fast+compiled")
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


REAL = Plan("cuda", dict(layers=36, dim=2560, heads=40),
            dict(hidden=768, layers=12, heads=12, intermediate=3072, vocab=4096),
            gemm_repeats=20, copy_mib=2048, esm_sequences=2400, dnabert_sequences=20000,
            precision_sequences=256, records=10000)
SMOKE = Plan("cpu", dict(layers=2, dim=64, heads=4), dict(hidden=48, layers=2, heads=4, intermediate=96, vocab=512),
             gemm_repeats=2, copy_mib=8, esm_sequences=6, dnabert_sequences=8, precision_sequences=4, records=12)


@dataclass
class PathResult:
    """One encoder x path, measured."""

    role: str
    requested: str
    ran: str = ""
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
    """Skips steps that would start after `seconds`, so one run stays inside its time."""

    def __init__(self, seconds: float):
        self.start, self.seconds, self.skipped = time.perf_counter(), seconds, []

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, step: str) -> bool:
        if self.elapsed() < self.seconds:
            return True
        self.skipped.append(step)
        print(f"  SKIPPED {step}: {self.elapsed():.0f} s elapsed, past --time-guard {self.seconds:.0f} s")
        return False


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
        found["compile"] = path == "fast+compiled"
    return found


def loaders(dnabert: Path, esm_data: dict) -> dict:
    """role -> (loader, its callable checked for `path`) building one encoder on (device, dtype, path)."""
    def esm(device, dtype, path):
        return Esm2Encoder.from_checkpoint_data(esm_data, device, dtype, label="random ESM-2",
                                                **keywords(Esm2Encoder.from_checkpoint_data, path))

    def dna(device, dtype, path):
        return DnabertSEncoder(dnabert, device, dtype, **keywords(DnabertSEncoder, path))

    return {"dnabert_s": (dna, DnabertSEncoder), "esm2": (esm, Esm2Encoder.from_checkpoint_data)}


def paths_of(loader) -> tuple[str, ...]:
    """The PATHS this checkout's loader can be asked for."""
    if not path_keyword(loader):
        return PATHS[:1]
    return PATHS if path_keyword(loader, "compile") else PATHS[:2]


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


def gemm_ceilings(plan: Plan, device: torch.device, rows: int) -> dict[str, float]:
    """fp16 TFLOP/s of x @ W^T for ESM-2's qkv, attn_out, fc1 and fc2 shapes, `rows` token rows."""
    d = plan.esm["dim"]
    shapes = {"qkv": (d, 3 * d), "attn_out": (d, d), "fc1": (d, 4 * d), "fc2": (4 * d, d)}
    results = {}
    for name, (k, n) in shapes.items():
        x = torch.randn(rows, k, device=device, dtype=torch.float16)
        w = torch.randn(n, k, device=device, dtype=torch.float16)
        for _ in range(3):
            F.linear(x, w)
        seconds = timed(device, lambda: [F.linear(x, w) for _ in range(plan.gemm_repeats)])
        results[name] = 2 * rows * k * n * plan.gemm_repeats / seconds / 1e12
        del x, w
    free(device)
    return results


def copy_ceiling(plan: Plan, device: torch.device) -> float:
    """Device-to-device copy, GB/s counting bytes read plus bytes written."""
    n_bytes = plan.copy_mib * 2**20
    src = torch.empty(n_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    repeats = 10
    seconds = timed(device, lambda: [dst.copy_(src) for _ in range(repeats)])
    del src, dst
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


def bench_encoder(role: str, load, paths: tuple, plan: Plan, device: torch.device, guard: Guard,
                  budget: int) -> list[PathResult]:
    """Each path of one encoder in fp16: load, throughput, then the profile of its biggest batch."""
    results = []
    for path in paths:
        if not guard.allows(f"{role} {path}"):
            continue
        result = PathResult(role, path)
        free(device)
        start = time.perf_counter()
        encoder = load(device, torch.float16, path)
        sync(device)
        result.load_s, result.ran = time.perf_counter() - start, ran_path(encoder)
        result.compile_s = getattr(encoder, "compile_seconds", 0.0)
        count = plan.esm_sequences if role == "esm2" else plan.dnabert_sequences
        tokens = workload(role, encoder, count, seed=1)
        collated = measure_path(result, encoder, tokens, budget, device, flops_of(role, plan))
        result.kernels, result.shares = top_kernels(encoder, collated[0], device)
        results.append(result)
        print(f"  {role:9s} {path:13s} ran {result.ran:13s} load {result.load_s:6.2f} s (compile "
              f"{result.compile_s:.2f} s)  first pass "
              f"{result.first_pass_s:7.2f} s  steady {result.steady_s:7.2f} s  {result.tokens_per_s:12,.0f} tok/s  "
              f"{result.tflops:8.3g} TFLOP/s  peak mem {result.peak_gib:6.2f} GiB", flush=True)
        del encoder, collated
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
        print(f"  {r.role} {r.requested} (ran {r.ran}): {shares}")
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
                 guard: Guard) -> dict:
    """{(path ran or asked, dtype): vectors} of one encoder: fp32 reference, then fp16/bf16 per path."""
    found = {}
    for path, dtype in [("reference", "fp32")] + [(p, d) for p in paths for d in ("fp16", "bf16")]:
        if not guard.allows(f"precision {role} {path} {dtype}"):
            continue
        free(device)
        encoder = load(device, DTYPES[dtype], path)
        tokens = encoder.tokenize([nuc if role == "dnabert_s" else prot for nuc, prot in pairs])
        found[(path, dtype)] = vectors_of(encoder, tokens, budget)
        if ran_path(encoder) != path:
            print(f"  {role} {dtype}: {path} path asked, {ran_path(encoder)} ran")
        del encoder
    return found


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


def precision_rows(vectors: dict) -> list[dict]:
    """Per role, path and low precision: min cosine and max |delta| to fp32, max |delta| to reference."""
    rows = []
    for role in ROLES:
        base = vectors[role].get(("reference", "fp32"))
        for (path, dtype), v in vectors[role].items():
            if dtype == "fp32" or base is None:
                continue
            reference = vectors[role].get(("reference", dtype))
            rows.append({"role": role, "path": path, "dtype": dtype, "cos_min": cosine_min(v, base),
                         "max_abs": float((v - base).abs().max()),
                         "vs_reference": float((v - reference).abs().max()) if reference is not None else math.nan})
    return rows


def precision_paths(loader) -> tuple[str, ...]:
    """The reference path and the fastest one this checkout offers (each at fp16 and bf16)."""
    offered = paths_of(loader)
    return tuple(dict.fromkeys((offered[0], offered[-1])))


def precision_section(load: dict, plan: Plan, device: torch.device, budget: int, guard: Guard) -> dict:
    pairs = orfs(plan.precision_sequences, seed=2)
    vectors = {role: role_vectors(role, fn, precision_paths(checked), pairs, device, budget, guard)
               for role, (fn, checked) in load.items()}
    rows = precision_rows(vectors)
    for row in rows:
        key = (row["path"], row["dtype"])
        ready = all(key in vectors[r] and ("reference", "fp32") in vectors[r] for r in ROLES)
        row["flips"] = classifier_flips(vectors, key, seed=3) if ready else math.nan
        print(f"  {row['role']:9s} {row['path']:9s} {row['dtype']}  cosine to fp32 min {row['cos_min']:.6f}  "
              f"max |d| to fp32 {row['max_abs']:.2e}  max |d| to reference {row['vs_reference']:.2e}  "
              f"classifier calls changed {row['flips']:.2%}")
    return {"sequences": len(pairs), "rows": rows}


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
    precision = embed_mod.resolve_precision("auto", device)
    load_s = timed(device, lambda: embed_mod.embedding_widths(model_set, device, precision))
    ran = {role: ran_path(e) for role, e in embed_mod._load_encoders(model_set, device, precision).items()}
    with console.err.capture() as captured, BusySampler(device) as busy:
        embed_s = timed(device, lambda: embed_mod.embed(shard, work / "shard.h5", model_set=model_set,
                                                        device=plan.device, precision="auto"))
    embed_mod._load_encoders_cached.cache_clear()
    summary = next((line.strip() for line in captured.get().splitlines() if "computed" in line), "")
    result = {"records": plan.records, "precision": precision, "paths": ran, "lookup_s": lookup_s,
              "load_s": load_s, "embed_s": embed_s, "records_per_s": plan.records / embed_s,
              "records_per_s_with_load": plan.records / (embed_s + load_s), "gpu_busy": busy.fraction(),
              "log": summary}
    print(f"  lookup + sha256 {lookup_s:.1f} s; load {load_s:.1f} s ({precision}, paths {ran}); embed "
          f"{embed_s:.1f} s = {result['records_per_s']:,.0f} records/s ({result['records_per_s_with_load']:,.0f} "
          f"with the load); GPU busy {_share(result['gpu_busy'])}\n  {summary}")
    return result


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _fraction(value: float, of: float | None) -> str:
    """`value` as a percentage of `of` (n/a without one)."""
    return "n/a" if of is None else f"{value / of:.1%}"


# --- summary and main ------------------------------------------------------------------------------------

def print_summary(results: list[PathResult], peak: tuple[float, str], best_gemm: float, precision: dict,
                  embedded: dict | None, guard: Guard) -> None:
    header("summary", guard)
    if peak[0] is None:  # the CPU: neither its spec nor its fp16 GEMM bounds what is measured
        best_gemm = None
        print("  MFU and 'of GEMM' n/a on the CPU; '1st-steady' = compile, autotune and warm-up of the first pass")
    else:
        print(f"  MFU against {peak[0]:.4g} TFLOP/s ({peak[1]}); 'of GEMM' against the best fp16 GEMM measured, "
              f"{best_gemm:.4g} TFLOP/s; '1st-steady' = compile, autotune and warm-up of the first pass")
    print(f"  {'encoder':9s} {'path':13s} {'ran':13s} {'tokens/s':>12s} {'TFLOP/s':>9s} {'MFU':>6s} {'of GEMM':>8s} "
          f"{'peak GiB':>9s} {'load s':>7s} {'compile s':>9s} {'1st pass s':>10s} {'steady s':>9s} {'1st-steady s':>12s}")
    for r in results:
        print(f"  {r.role:9s} {r.requested:13s} {r.ran:13s} {r.tokens_per_s:12,.0f} {r.tflops:9.3g} "
              f"{_fraction(r.tflops, peak[0]):>6s} {_fraction(r.tflops, best_gemm):>8s} {r.peak_gib:9.2f} {r.load_s:7.2f} "
              f"{r.compile_s:9.2f} {r.first_pass_s:10.2f} {r.steady_s:9.2f} {r.first_pass_s - r.steady_s:12.2f}")
    for row in precision.get("rows", []):
        print(f"  precision {row['role']:9s} {row['path']:13s} {row['dtype']}: min cosine {row['cos_min']:.6f}, "
              f"calls changed {row['flips']:.2%} ({precision['sequences']} sequences)")
    if embedded:
        print(f"  embed(): {embedded['records']:,} records, {embedded['records_per_s']:,.0f} records/s, load "
              f"{embedded['load_s']:.1f} s, GPU busy {_share(embedded['gpu_busy'])}, paths {embedded['paths']}")
    print(f"  skipped by the time guard: {', '.join(guard.skipped) or 'nothing'}")
    print(f"  total {guard.elapsed():.0f} s")


def options(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="every section and path on the CPU with tiny models (GPU-only kernels excepted: see the docstring)")
    ap.add_argument("--peak-tflops", type=float, help="peak for MFU (default: NVIDIA spec by device name)")
    ap.add_argument("--records", type=int, help="records of the embed() shard (default 10,000)")
    ap.add_argument("--time-guard", type=float, default=330.0,
                    help="skip steps that would start after this many seconds (default 330)")
    ap.add_argument("--json", type=Path, help="also write every figure to this file")
    return ap.parse_args(argv)


def run_sections(plan: Plan, args, device: torch.device, work: Path, guard: Guard) -> dict:
    budget = embed_mod.DEFAULT_TOKEN_BUDGET[device.type]
    header("device", guard)
    print(describe_device(device))
    header("ceilings", guard)
    gemm = gemm_ceilings(plan, device, rows=budget)
    copy = copy_ceiling(plan, device)
    print("  fp16 GEMM TFLOP/s at", budget, "rows:", ", ".join(f"{k} {v:.3g}" for k, v in gemm.items()))
    print(f"  device copy {copy:.1f} GB/s (read + written)")
    peak = peak_tflops(device, args.peak_tflops, max(gemm.values()))
    header("encoders", guard)
    dnabert = dnabert_folder(work / "models" / "DNABERT-S", plan.dnabert, device, seed=5)
    esm_data = esm_checkpoint(plan.esm, device, seed=6)
    load = loaders(dnabert, esm_data)
    print("  fast path offered by the loaders: " + ", ".join(
        f"{role} {'yes' if path_keyword(checked) else 'no'}" for role, (_, checked) in load.items()))
    results = [r for role, (fn, checked) in load.items()
               for r in bench_encoder(role, fn, paths_of(checked), plan, device, guard, budget)]
    header("kernels", guard)
    print_kernels(results)
    header("embed", guard)
    free(device)
    embedded = embed_section(plan, work, dnabert, esm_data, device) if guard.allows("embed") else None
    header("precision", guard)
    precision = precision_section(load, plan, device, budget, guard)
    return {"gemm_tflops": gemm, "copy_gb_s": copy, "peak": peak, "results": results,
            "precision": precision, "embed": embedded}


def main(argv=None) -> int:
    args = options(argv)
    plan = SMOKE if args.cpu_smoke else REAL
    if args.records:
        plan = Plan(**{**asdict(plan), "records": args.records})
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no GPU visible: run on a GPU machine, or use --cpu-smoke")
    device = torch.device(plan.device)
    guard = Guard(args.time_guard)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        compiled.use_cache(Path(tmp) / "compile-cache")  # cold: the first compile of each model is timed whole
        found = run_sections(plan, args, device, Path(tmp), guard)
    print_summary(found["results"], found["peak"], max(found["gemm_tflops"].values()), found["precision"],
                  found["embed"], guard)
    if args.json:
        found["results"] = [{**asdict(r), "tokens_per_s": r.tokens_per_s, "tflops": r.tflops}
                            for r in found["results"]]
        args.json.write_text(json.dumps({**found, "skipped": guard.skipped, "seconds": guard.elapsed()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
