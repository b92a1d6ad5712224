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
* checkpoint overhead: embed with checkpoints effectively off (checkpoint_every > shard,
  checkpoint_seconds 1e9) vs the default.

    python benchmarks/bench_embed.py                        # CPU, --size cpu, 20000 records (~25 min
                                                            # on 2 cores: each embed pass ~4 min)
    python benchmarks/bench_embed.py --records 4000 --repeats 3       # 8-13 min on 2 shared cores
    python benchmarks/bench_embed.py --device cuda --real-size --records 20000 --repeats 1  # GPU only

`--real-size` = DNABERT-S (768, 12 layers, 12 heads, FFN 3072) + ESM-2 3B (36 layers, 2560, 40 heads),
random weights, fp16 by default; it refuses to run on the CPU.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import bench_encoders as be  # noqa: E402
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
              keep: bool = False) -> tuple[float, str]:
    """Seconds of one `embed` call, and its summary log line ("computed ... padding ...")."""
    out.unlink(missing_ok=True)
    with console.err.capture() as captured:
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

def spread(times: list[float]) -> str:
    if len(times) < 2:
        return f"{times[0]:.2f} s (1 run)"
    return (f"best {min(times):.2f} s, worst {max(times):.2f} s "
            f"(spread {max(times) / min(times) - 1:.1%}, {len(times)} runs)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=20000, help="ORF records in the shard (default 20000)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each variant; best counts")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                    help="default: fp32 on CPU, fp16 on CUDA")
    ap.add_argument("--size", choices=sorted(SIZES), default="cpu", help="model sizes (see SIZES)")
    ap.add_argument("--real-size", action="store_true",
                    help="ESM-2 3B + DNABERT-S real shapes, random weights (same as --size real; GPU only)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--skip-original", action="store_true", help="only embed and checkpoint overhead")
    ap.add_argument("--skip-overhead", action="store_true", help="no checkpoints-off runs")
    ap.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    size_name = "real" if args.real_size else args.size
    size = SIZES[size_name]
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU visible")
    if size_name == "real" and device.type != "cuda":
        raise SystemExit("--real-size allocates ESM-2 3B (11 GB in fp32): run it with --device cuda")
    precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = embed_mod.DEFAULT_TOKEN_BUDGET[device.type]
    default_every, default_seconds = 2000, 600.0  # embed()'s defaults

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_embed_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        shard = make_shard(work, "shard", args.records, args.seed)
        warm_shard = make_shard(work, "warmup", 256, args.seed + 1)
        records = list(fmt.read_shard(shard))
        reads = len({r[0].rsplit("_chunk_", 1)[0] for r in records})
        print(f"workload: {len(records):,} ORF records from {reads:,} coding-like {READ_LENGTH} bp reads "
              f"(prepare + writing took {time.perf_counter() - t:.1f} s)", flush=True)

        t = time.perf_counter()
        models = work / "models"
        esm_model = build_models(models, size, device, precision, args.seed)
        tiny.record_as_tiny(models, RANDOM_MODEL_FILES, "benchmarks/bench_embed.py random weights")
        located = store.locate(models, roles=ROLES)
        dtype = embed_mod.torch_dtype(precision)
        dnabert = DnabertSEncoder(located.dnabert_s, device, dtype)  # the original-pattern side
        print(f"models ({time.perf_counter() - t:.1f} s to build): DNABERT-S {size['dnabert']} = "
              f"{n_params(dnabert.module, 'word') / 1e6:.1f}M params w/o embeddings; ESM-2 {size['esm']} = "
              f"{n_params(esm_model, 'embed_tokens') / 1e6:.1f}M params w/o embeddings; written to "
              f"{models} (no manifest, standard names)", flush=True)

        nucleotides = [r[1] for r in records]
        proteins = [r[2] for r in records]
        dna_tokens = sum(len(t) for t in dnabert.tokenize(nucleotides))
        esm_tokens = sum(len(p) + 2 for p in proteins)
        real_tokens = dna_tokens + esm_tokens
        distinct = (len(set(nucleotides)), len(set(proteins)))
        print(f"device={device} precision={precision} threads={torch.get_num_threads()} token budget={budget} "
              f"records={len(records):,} distinct nucleotide/protein={distinct[0]:,}/{distinct[1]:,} "
              f"real tokens: DNABERT-S {dna_tokens:,} ({dna_tokens / len(records):.1f}/record), "
              f"ESM-2 {esm_tokens:,} ({esm_tokens / len(records):.1f}/record)", flush=True)

        # warm-up: loads the encoders into embed's process-wide cache, and both original paths
        t_load, _ = run_embed(warm_shard, work / "warm.h5", models, args.device, precision,
                              default_every, default_seconds, args.threads)
        warm = list(fmt.read_shard(warm_shard))
        run_original([r[1] for r in warm[:32]], [r[2] for r in warm[:32]], dnabert, esm_model, device)
        print(f"warm-up: first embed call (model load + 256 records) {t_load:.1f} s", flush=True)

        times = {"embed": [], "off": [], "orig": [], "orig_dna": [], "orig_esm": []}
        summaries = {}
        checked = False
        for rep in range(args.repeats):
            variants = ["embed", "off"] if rep % 2 == 0 else ["off", "embed"]
            if args.skip_overhead:
                variants = ["embed"]
            for variant in variants:
                every, seconds = ((default_every, default_seconds) if variant == "embed"
                                  else (len(records) + 1, 1e9))
                out = work / f"{variant}.h5"
                elapsed, summary = run_embed(shard, out, models, args.device, precision, every, seconds,
                                             args.threads, keep=not checked and variant == "embed")
                times[variant].append(elapsed)
                summaries[variant] = summary
                label = "embed (checkpoints every 2000)" if variant == "embed" else "embed (checkpoints off)"
                print(f"  run {rep + 1} {label:32s} {elapsed:8.2f} s  {len(records) / elapsed:8.1f} records/s",
                      flush=True)
            if not args.skip_original:
                dna, prot, t_dna, t_esm = run_original(nucleotides, proteins, dnabert, esm_model, device)
                times["orig"].append(t_dna + t_esm)
                times["orig_dna"].append(t_dna)
                times["orig_esm"].append(t_esm)
                print(f"  run {rep + 1} {'original pattern':32s} {t_dna + t_esm:8.2f} s  "
                      f"{len(records) / (t_dna + t_esm):8.1f} records/s (DNABERT-S {t_dna:.2f} s, "
                      f"ESM-2 {t_esm:.2f} s)", flush=True)
                if not checked:
                    with h5shard.open_h5(work / "embed.h5") as handle:
                        ours = (handle["dnabert_s"][:], handle["esm2"][:])
                    d_dna = float(np.abs(ours[0] - dna.numpy()).max())
                    d_esm = float(np.abs(ours[1] - prot.numpy()).max())
                    print(f"  check: embed vs original pattern, max |diff| DNABERT-S {d_dna:.2e}, "
                          f"ESM-2 {d_esm:.2e}", flush=True)
                    checked = True
                    del dna, prot

        print()
        print(f"sizes: {size_name} (DNABERT-S {size['dnabert']}, ESM-2 {size['esm']}); "
              f"{len(records):,} records, best of {args.repeats}")
        t_embed = min(times["embed"])
        line = (f"embed: {len(records):,} records, {len(records) / t_embed:,.1f} records/s, "
                f"{real_tokens / t_embed:,.0f} real tokens/s ({spread(times['embed'])})")
        if times["orig"]:
            t_orig = min(times["orig"])
            line += (f"; original pattern: {len(records) / t_orig:,.1f} records/s, "
                     f"{real_tokens / t_orig:,.0f} real tokens/s ({spread(times['orig'])}; DNABERT-S "
                     f"best {min(times['orig_dna']):.2f} s, ESM-2 best {min(times['orig_esm']):.2f} s)"
                     f"; ratio {t_orig / t_embed:.2f}x (target on CPU >= 0.9x)")
        print(line)
        if summaries.get("embed"):
            print(f"  embed's own log (last default run): {summaries['embed']}")
        if times["off"]:
            t_off = min(times["off"])
            overhead = t_embed / t_off - 1
            print(f"checkpoint overhead: {overhead:+.1%} (default every 2000 records: best {t_embed:.2f} s; "
                  f"off: {spread(times['off'])}; target <= 3%)")
            per_part = checkpoint_write_cost(work / "ckpt_probe", default_every,
                                             (dnabert.width, esm_model.embed_dim))
            n_parts = -(-len(records) // default_every)
            print(f"  direct cost: {per_part * 1e3:.1f} ms per checkpoint part of {default_every} records "
                  f"x {n_parts} parts = {per_part * n_parts / t_embed:.2%} of the embed time")
            if len(times["off"]) > 1 and len(times["embed"]) > 1:
                med = statistics.median(times["embed"]) / statistics.median(times["off"]) - 1
                print(f"  (medians: {med:+.1%}; run-to-run spread above shows the noise floor)")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
