"""The `embed` stage end to end: `virnucpro.embed.embed` vs the original VirNucPro calling pattern.

Workload: coding-like 500 bp reads (benchmarks/synthetic.py) run through `virnucpro.prepare.prepare`
into one shard of exactly --records ORF records (one stop-free frame per read, 166 aa / 499 nt).

Models: random weights in the real on-disk formats, written into a models directory under the
standard names (esm2_t36_3B_UR50D.pt, DNABERT-S/{config.json,model.safetensors,tokenizer.json}) and
recorded in its manifest.json as tiny test models (`virnucpro.models.tiny.record_as_tiny`): random
weights never match the published models' pins. They are built with the helpers of
benchmarks/bench_encoders.py; the DNABERT-S tokenizer is a 4096-token BPE trained on random DNA
(`virnucpro.models.tiny._tiny_tokenizer`), giving ~115 tokens per ORF, like the real DNABERT-S BPE.

Measured (same process, same models, same records; real tokens = special tokens included, padding
not counted; best of --repeats, runs interleaved):

* embed: `embed(shard, ...)` with the default checkpointing (checkpoint_every=2000, 600 s), whole
  call (shard read + sha256, model lookup, tokenization, both encoders, HDF5 write and verify);
  models are loaded once beforehand by a warm-up call (they stay loaded across calls, as in `run`).
* original pattern: DNABERT-S one sequence per forward (tokenize one, `DnabertSEncoder.embed` on one)
  then ESM-2 through fair-esm's own `ESM2` on `FastaBatchedDataset.get_batch_indices(2048,
  extra_toks_per_seq=1)` batches (bench_encoders.esm_original); no deduplication, compute only.
* checkpoint overhead: embed writing no checkpoint part at all (its parts are dropped, not queued)
  vs the default, which writes one every 2000 records and one at the end.

Every repeat's embed outputs are compared with that repeat's original-pattern vectors
(benchmarks/conditions.py: fp32 max |diff| <= 1e-4, fp16/bf16 min cosine >= 0.999); a disagreement
prints FAILED and exits 1, as the ratio would then time other work. The load average is printed at
the start and the end; --repeats 1 is warned about (no spread measured).

    python benchmarks/bench_embed.py                        # CPU, --size cpu, 20000 records (~25 min
                                                            # on 2 cores: each embed pass ~4 min)
    python benchmarks/bench_embed.py --records 4000 --repeats 3       # 8-13 min on 2 shared cores
    python benchmarks/bench_embed.py --device cuda --real-size --records 20000 --repeats 1  # GPU only

`--real-size` = DNABERT-S (768, 12 layers, 12 heads, FFN 3072) + ESM-2 3B (36 layers, 2560, 40 heads),
random weights, fp16 by default; it refuses to run on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import bench_encoders as be  # noqa: E402
import conditions  # noqa: E402
from synthetic import coding_like  # noqa: E402

from virnucpro import console  # noqa: E402
from virnucpro import embed as embed_mod  # noqa: E402
from virnucpro import h5shard  # noqa: E402
from virnucpro.models import store, tiny  # noqa: E402
from virnucpro import prepared as fmt  # noqa: E402
from virnucpro.encoders.dnabert_s import DnabertSEncoder  # noqa: E402
from virnucpro.prepare import prepare  # noqa: E402

SIZES = {
    # default on CPU: well above `virnucpro models tiny` (48/2 and 32/2) so matmuls dominate, small
    # enough for a 2-core run
    "cpu": {"dnabert": dict(hidden=256, layers=4, heads=8, intermediate=1024, vocab=4096),
            "esm": dict(num_layers=4, embed_dim=256, attention_heads=16)},
    "small": be.SIZES["small"],  # bench_encoders' CPU sizes (384/6 and esm2_t6_8M shape)
    "real": be.SIZES["real"],    # DNABERT-S and ESM-2 3B
}
READ_LENGTH = 500
RANDOM_MODEL_FILES = {"esm2": ["esm2_t36_3B_UR50D.pt"],
                      "dnabert_s": ["DNABERT-S/config.json", "DNABERT-S/model.safetensors", "DNABERT-S/tokenizer.json"]}
TOKENIZER_VOCAB = 4096
ROLES = ("dnabert_s", "esm2")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- workload

def write_coding_reads(path: Path, n_reads: int, seed: int) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as out:
        for i in range(n_reads):
            seq = coding_like(rng, READ_LENGTH)
            out.write(f">read_{i} synthetic coding-like\n")
            for start in range(0, len(seq), 60):
                out.write(seq[start:start + 60] + "\n")
    return path


def make_shard(work: Path, name: str, n_records: int, seed: int) -> Path:
    """A prepare shard of exactly `n_records` ORF records (each coding-like read gives >= 1)."""
    fasta = write_coding_reads(work / f"{name}.fa", n_records, seed)
    outdir = work / f"{name}_prepared"
    console.err.quiet = True
    try:
        manifest = prepare([fasta], outdir, chunk_size=READ_LENGTH, shard_size=n_records)
    finally:
        console.err.quiet = False
    first = manifest["shards"][0]
    if first["records"] != n_records:
        raise SystemExit(f"prepare gave {first['records']} records in shard 0, expected {n_records}")
    return outdir / first["file"]


# ---------------------------------------------------------------- models

def build_models(models: Path, size: dict, device: torch.device, precision: str, seed: int):
    """Write random DNABERT-S and ESM-2 in the standard layout; return the fair-esm model (on
    `device`, in `precision`) for the original pattern, with the same weights."""
    dtype = embed_mod.torch_dtype(precision)
    models.mkdir(parents=True, exist_ok=True)
    folder = be.random_dnabert_folder(models / "DNABERT-S", seed=seed, **size["dnabert"])
    tiny._tiny_tokenizer(TOKENIZER_VOCAB, seed).save(str(folder / "tokenizer.json"))

    # fair-esm's ESM2, built directly on the target device (a 3B model initialises in seconds on a
    # GPU, minutes on a CPU), then cast; the checkpoint is saved in that precision (fp16: 5.6 GB
    # for 3B instead of 11 GB) with the published key names and cfg.
    with torch.device(device):
        model = be.fair_esm_model(seed=seed, **size["esm"])
    model = model.to(dtype=dtype).eval()
    data = be.checkpoint_data(model)
    data["model"] = {k: v.detach().to("cpu") for k, v in data["model"].items()}
    torch.save(data, str(models / "esm2_t36_3B_UR50D.pt"))
    del data
    return model


def n_params(module: torch.nn.Module, skip: str) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if skip not in n)


# ---------------------------------------------------------------- the two sides

def run_embed(shard: Path, out: Path, models: Path, device: str, precision: str,
              checkpoint_every: int, checkpoint_seconds: float, threads: int | None,
              keep: bool = False, parts: bool = True) -> tuple[float, str]:
    """Seconds of one `embed` call, and its summary log line ("computed ... padding ...");
    `parts=False`: no checkpoint part is written (each is dropped instead of queued)."""
    out.unlink(missing_ok=True)
    with console.err.capture() as captured, contextlib.ExitStack() as stack:
        if not parts:
            stack.enter_context(mock.patch.object(embed_mod.CheckpointStore, "save", lambda *args, **kwargs: None))
        t0 = time.perf_counter()
        embed_mod.embed(shard, out, models=models, checkpoint_dir=out.parent / (out.stem + ".ckpt"),
                        device=device, precision=precision, checkpoint_every=checkpoint_every,
                        checkpoint_seconds=checkpoint_seconds, threads=threads)
        elapsed = time.perf_counter() - t0
    log = captured.get()
    summary = next((line.strip() for line in log.splitlines() if "computed" in line), "")
    summary = re.sub(r"^virnucpro\s+", "", summary)
    if not keep:
        out.unlink(missing_ok=True)
    return elapsed, summary


def run_original(nucleotides, proteins, dnabert: DnabertSEncoder, esm_model, device):
    """The original's calling pattern; returns (dnabert vectors, esm vectors, t_dnabert, t_esm)."""
    sync(device)
    t0 = time.perf_counter()
    dna = torch.cat([dnabert.embed(dnabert.tokenize([seq])) for seq in nucleotides])
    sync(device)
    t1 = time.perf_counter()
    prot = be.esm_original(esm_model, proteins, device, toks_per_batch=2048)
    sync(device)
    t2 = time.perf_counter()
    return dna, prot, t1 - t0, t2 - t1


def checkpoint_write_cost(folder: Path, every: int, widths: tuple[int, int], repeats: int = 5) -> float:
    """Seconds per checkpoint part of `every` records (save + flush: concatenate, np.savez, sha256,
    rename), measured directly - a noise-free upper bound of what checkpoints add to a window."""
    rng = np.random.default_rng(0)
    vectors = {role: (list(range(every)), [rng.random((every, w), dtype=np.float32)])
               for role, w in zip(ROLES, widths)}
    checkpoints = embed_mod.CheckpointStore(folder / "probe")
    try:
        checkpoints.save(vectors)
        checkpoints.flush()
        t0 = time.perf_counter()
        for _ in range(repeats):
            checkpoints.save(vectors)
            checkpoints.flush()
        return (time.perf_counter() - t0) / repeats
    finally:
        checkpoints.remove()


# ---------------------------------------------------------------- main

DEFAULT_EVERY, DEFAULT_SECONDS = 2000, 600.0  # embed()'s checkpoint defaults
WARMUP_RECORDS = 256


@dataclass
class Bench:
    """One benchmark's fixed parts: workload, models and settings, shared by every timed run."""
    args: argparse.Namespace
    work: Path
    device: torch.device
    precision: str
    shard: Path = None
    records: list = None
    models: Path = None
    esm_model: torch.nn.Module = None
    dnabert: DnabertSEncoder = None
    real_tokens: int = 0
    failures: list = field(default_factory=list)


def spread(times: list[float]) -> str:
    if len(times) < 2:
        return f"{times[0]:.2f} s (1 run)"
    return (f"best {min(times):.2f} s, worst {max(times):.2f} s "
            f"(spread {max(times) / min(times) - 1:.1%}, {len(times)} runs)")


def parse_args(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=conditions.positive_int, default=20000,
                    help="ORF records in the shard (default 20000)")
    ap.add_argument("--repeats", type=conditions.positive_int, default=2,
                    help="timed runs of each variant; best counts, every run's vectors are checked")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                    help="default: fp32 on CPU, fp16 on CUDA")
    ap.add_argument("--size", choices=sorted(SIZES), default="cpu", help="model sizes (see SIZES)")
    ap.add_argument("--real-size", action="store_true",
                    help="ESM-2 3B + DNABERT-S real shapes, random weights (same as --size real; GPU only)")
    ap.add_argument("--threads", type=conditions.positive_int, default=None,
                    help="torch threads (default: torch's)")
    ap.add_argument("--skip-original", action="store_true", help="only embed and checkpoint overhead")
    ap.add_argument("--skip-overhead", action="store_true", help="no checkpoints-off runs")
    ap.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def make_workload(bench: Bench) -> Path:
    """The timed shard and a warm-up shard (at most WARMUP_RECORDS, never more than the timed one)."""
    args, t = bench.args, time.perf_counter()
    bench.shard = make_shard(bench.work, "shard", args.records, args.seed)
    warm_shard = make_shard(bench.work, "warmup", min(WARMUP_RECORDS, args.records), args.seed + 1)
    bench.records = list(fmt.read_shard(bench.shard))
    reads = len({r[0].rsplit("_chunk_", 1)[0] for r in bench.records})
    print(f"workload: {len(bench.records):,} ORF records from {reads:,} coding-like {READ_LENGTH} bp reads "
          f"(prepare + writing took {time.perf_counter() - t:.1f} s)", flush=True)
    return warm_shard


def make_models(bench: Bench, size_name: str) -> None:
    """Random models in the standard layout, recorded as tiny; the original pattern's two models."""
    size, t = SIZES[size_name], time.perf_counter()
    bench.models = bench.work / "models"
    bench.esm_model = build_models(bench.models, size, bench.device, bench.precision, bench.args.seed)
    tiny.record_as_tiny(bench.models, RANDOM_MODEL_FILES, "benchmarks/bench_embed.py random weights")
    located = store.locate(bench.models, roles=ROLES)
    dtype = embed_mod.torch_dtype(bench.precision)
    # the original-pattern side: the model code's own attention, never compiled (a GPU's default
    # would load virnucpro's compiled reference path, faster than the original's)
    bench.dnabert = DnabertSEncoder(located.dnabert_s, bench.device, dtype, path="reference", compile=False)
    print(f"models ({time.perf_counter() - t:.1f} s to build): DNABERT-S {size['dnabert']} = "
          f"{n_params(bench.dnabert.module, 'word') / 1e6:.1f}M params w/o embeddings; ESM-2 {size['esm']} = "
          f"{n_params(bench.esm_model, 'embed_tokens') / 1e6:.1f}M params w/o embeddings; written to "
          f"{bench.models} (no manifest, standard names)", flush=True)


def describe_tokens(bench: Bench) -> None:
    """Count the real tokens of both encoders and print the run's settings."""
    nucleotides, proteins = [r[1] for r in bench.records], [r[2] for r in bench.records]
    dna_tokens = sum(len(t) for t in bench.dnabert.tokenize(nucleotides))
    esm_tokens = sum(len(p) + 2 for p in proteins)
    bench.real_tokens = dna_tokens + esm_tokens
    n = len(bench.records)
    print(f"device={bench.device} precision={bench.precision} threads={torch.get_num_threads()} token budget="
          f"{embed_mod.DEFAULT_TOKEN_BUDGET[bench.device.type]} records={n:,} distinct nucleotide/protein="
          f"{len(set(nucleotides)):,}/{len(set(proteins)):,} real tokens: DNABERT-S {dna_tokens:,} "
          f"({dna_tokens / n:.1f}/record), ESM-2 {esm_tokens:,} ({esm_tokens / n:.1f}/record); check per run: "
          f"{conditions.limit_text(bench.precision)}", flush=True)


def warm_up(bench: Bench, warm_shard: Path) -> None:
    """Load the encoders into embed's process-wide cache, and run both original paths once."""
    t_load, _ = run_embed(warm_shard, bench.work / "warm.h5", bench.models, bench.args.device, bench.precision,
                          DEFAULT_EVERY, DEFAULT_SECONDS, bench.args.threads)
    warm = list(fmt.read_shard(warm_shard))
    run_original([r[1] for r in warm[:32]], [r[2] for r in warm[:32]], bench.dnabert, bench.esm_model,
                 bench.device)
    print(f"warm-up: first embed call (model load + {len(warm)} records) {t_load:.1f} s", flush=True)


def run_variants(bench: Bench, rep: int, times: dict, summaries: dict) -> list[str]:
    """This repeat's embed runs (order alternates between repeats); returns the variants run, whose
    outputs are kept for the check when the original pattern runs."""
    variants = ["embed", "off"] if rep % 2 == 0 else ["off", "embed"]
    if bench.args.skip_overhead:
        variants = ["embed"]
    for variant in variants:
        elapsed, summaries[variant] = run_embed(bench.shard, bench.work / f"{variant}.h5", bench.models,
                                                bench.args.device, bench.precision, DEFAULT_EVERY, DEFAULT_SECONDS,
                                                bench.args.threads, keep=not bench.args.skip_original,
                                                parts=variant == "embed")
        times[variant].append(elapsed)
        print(f"  run {rep + 1} {LABELS[variant]:32s} {elapsed:8.2f} s  "
              f"{len(bench.records) / elapsed:8.1f} records/s", flush=True)
    return variants


LABELS = {"embed": "embed (checkpoints every 2000)", "off": "embed (no checkpoint part)"}


def check_run(bench: Bench, rep: int, variants: list[str], original: tuple) -> None:
    """Compare each of this repeat's embed outputs with this repeat's original-pattern vectors;
    a disagreement beyond the tolerance goes to bench.failures."""
    measures = []
    for variant in variants:
        with h5shard.open_h5(bench.work / f"{variant}.h5") as handle:
            ours = (handle["dnabert_s"][:], handle["esm2"][:])
        for name, got, ref in zip(("DNABERT-S", "ESM-2"), ours, original):
            agree, measure = conditions.compare(got, ref.numpy(), bench.precision)
            measures.append(f"{variant} {name} {measure}")
            if not agree:
                bench.failures.append(f"embed run {rep + 1} ({LABELS[variant]}): {name} vs original pattern, "
                                      f"{measure}; limit {conditions.limit_text(bench.precision)}")
        (bench.work / f"{variant}.h5").unlink()
    print(f"  check run {rep + 1}: embed vs original pattern: {'; '.join(measures)}", flush=True)


def run_original_timed(bench: Bench, rep: int, times: dict) -> tuple:
    """One timed run of the original pattern; returns its (DNABERT-S, ESM-2) vectors."""
    nucleotides, proteins = [r[1] for r in bench.records], [r[2] for r in bench.records]
    dna, prot, t_dna, t_esm = run_original(nucleotides, proteins, bench.dnabert, bench.esm_model, bench.device)
    times["orig"].append(t_dna + t_esm)
    times["orig_dna"].append(t_dna)
    times["orig_esm"].append(t_esm)
    print(f"  run {rep + 1} {'original pattern':32s} {t_dna + t_esm:8.2f} s  "
          f"{len(bench.records) / (t_dna + t_esm):8.1f} records/s (DNABERT-S {t_dna:.2f} s, "
          f"ESM-2 {t_esm:.2f} s)", flush=True)
    return dna, prot


def timed_runs(bench: Bench) -> tuple[dict, dict]:
    """Every repeat: the embed variants, then the original pattern and the check of that repeat."""
    times = {"embed": [], "off": [], "orig": [], "orig_dna": [], "orig_esm": []}
    summaries = {}
    for rep in range(bench.args.repeats):
        variants = run_variants(bench, rep, times, summaries)
        if not bench.args.skip_original:
            check_run(bench, rep, variants, run_original_timed(bench, rep, times))
    if bench.args.skip_original:
        print("  check: none (--skip-original: no baseline vectors to compare with)", flush=True)
    return times, summaries


def print_ratio(bench: Bench, times: dict, summaries: dict) -> None:
    """embed's throughput, and the ratio to the original pattern when it ran."""
    n, t_embed = len(bench.records), min(times["embed"])
    line = (f"embed: {n:,} records, {n / t_embed:,.1f} records/s, "
            f"{bench.real_tokens / t_embed:,.0f} real tokens/s ({spread(times['embed'])})")
    if times["orig"]:
        t_orig = min(times["orig"])
        line += (f"; original pattern: {n / t_orig:,.1f} records/s, "
                 f"{bench.real_tokens / t_orig:,.0f} real tokens/s ({spread(times['orig'])}; DNABERT-S "
                 f"best {min(times['orig_dna']):.2f} s, ESM-2 best {min(times['orig_esm']):.2f} s)"
                 f"; ratio {t_orig / t_embed:.2f}x (target on CPU >= 0.9x)")
    print(line)
    if summaries.get("embed"):
        print(f"  embed's own log (last default run): {summaries['embed']}")


def print_overhead(bench: Bench, times: dict) -> None:
    """The checkpoint overhead (the default's parts vs none) and the direct cost of one part."""
    if bench.args.skip_overhead:
        return
    t_embed, t_off = min(times["embed"]), min(times["off"])
    print(f"checkpoint overhead: {t_embed / t_off - 1:+.1%} (default every {DEFAULT_EVERY} records: best "
          f"{t_embed:.2f} s; no part: {spread(times['off'])}; target <= 3%)")
    per_part = checkpoint_write_cost(bench.work / "ckpt_probe", DEFAULT_EVERY,
                                     (bench.dnabert.width, bench.esm_model.embed_dim))
    n_parts = -(-len(bench.records) // DEFAULT_EVERY)  # one per window, the last (partial) one included
    print(f"  direct cost: {per_part * 1e3:.1f} ms per checkpoint part of {DEFAULT_EVERY} records "
          f"x {n_parts} parts = {per_part * n_parts / t_embed:.2%} of the embed time")
    if len(times["off"]) > 1 and len(times["embed"]) > 1:
        med = statistics.median(times["embed"]) / statistics.median(times["off"]) - 1
        print(f"  (medians: {med:+.1%}; run-to-run spread above shows the noise floor)")


def start(args: argparse.Namespace) -> tuple[str, torch.device, str]:
    """Check the settings, set the threads, print the load; (size name, device, precision)."""
    size_name = "real" if args.real_size else args.size
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU visible")
    if size_name == "real" and device.type != "cuda":
        raise SystemExit("--real-size allocates ESM-2 3B (11 GB in fp32): run it with --device cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    conditions.print_load("start", f"torch {torch.get_num_threads()}")
    if args.repeats == 1:
        print("WARNING: --repeats 1: one run per variant, so no spread is measured and each ratio carries "
              "this machine's run-to-run noise unseen", flush=True)
    return size_name, device, args.precision or ("fp16" if device.type == "cuda" else "fp32")


def main(argv=None) -> int:
    """Run the benchmark; 1 when any run's embed vectors differ from the original pattern's."""
    args = parse_args(argv)
    size_name, device, precision = start(args)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_embed_"))
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, work, device, precision)
    try:
        warm_shard = make_workload(bench)
        make_models(bench, size_name)
        describe_tokens(bench)
        warm_up(bench, warm_shard)
        times, summaries = timed_runs(bench)
        print()
        print(f"sizes: {size_name} (DNABERT-S {SIZES[size_name]['dnabert']}, ESM-2 {SIZES[size_name]['esm']}); "
              f"{len(bench.records):,} records, best of {args.repeats}")
        print_ratio(bench, times, summaries)
        print_overhead(bench, times)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    conditions.print_load("end", f"torch {torch.get_num_threads()}")
    return conditions.verdict(bench.failures)


if __name__ == "__main__":
    sys.exit(main())
