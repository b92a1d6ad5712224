"""Encoder throughput: virnucpro's native encoders vs the original VirNucPro calling pattern.

Both sides run the SAME random weights on the same ORF-like workload; throughput counts real
tokens only (special tokens included, padding not):

* DNABERT-S, original pattern: one sequence per forward, `model(input_ids)[0].mean(dim=1)`.
  The model's remote code cannot be loaded here (SPEC §3), so the per-sequence baseline runs our
  own module one sequence at a time - identical math, no batching.
* ESM-2, original pattern: fair-esm's own `ESM2`, batches from
  `FastaBatchedDataset.get_batch_indices(2048, extra_toks_per_seq=1)`, the alphabet's batch
  converter, `model(toks, repr_layers=[last])`, mean over residues 1..min(1024, L).
* virnucpro: `plan_batches(lengths, --budget)` then `encoder.embed(batch)` (row packing).

Default model sizes (CPU): DNABERT-S hidden 384, 6 layers, 12 heads, FFN 1536, vocab 4096;
ESM-2 with the shape of esm2_t6_8M (6 layers, 320 dims, 20 heads). `--real-size` uses DNABERT-S
(768, 12 layers, 12 heads, 3072) and ESM-2 3B (36 layers, 2560 dims, 40 heads) with random
weights - for a GPU (`--device cuda --dtype fp16`).

Workload: --n ORFs as from 500 bp chunks: 80 % full-length (165-166 aa), 20 % shorter (20-164 aa);
DNABERT-S gets random token ids with ~ (3L+1)/4.5 + 2 tokens each (BPE of the ORF nucleotides).

Every timed run's vectors are compared with that run's baseline (benchmarks/conditions.py: fp32
max |diff| <= 1e-4, fp16/bf16 min cosine >= 0.999): a disagreement prints FAILED and exits 1, as the
ratio would then time other work. The load average is printed at the start and the end.

    python benchmarks/bench_encoders.py                       # CPU, small models
    python benchmarks/bench_encoders.py --device cuda --dtype fp16 --real-size --n 4000 --peak-tflops 989
"""

from __future__ import annotations

import argparse
import json
import shutil
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

import conditions  # noqa: E402

from virnucpro.encoders.batching import plan_batches  # noqa: E402
from virnucpro.encoders.dnabert_s import _EMB_KEYS, _LAYER_KEYS, DnabertSEncoder  # noqa: E402
from virnucpro.encoders.esm2 import Esm2Encoder  # noqa: E402

TOKENIZER = ROOT / "tests" / "data" / "reference" / "dnabert_s_tiny" / "tokenizer.json"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SIZES = {
    "small": {"dnabert": dict(hidden=384, layers=6, heads=12, intermediate=1536, vocab=4096),
              "esm": dict(num_layers=6, embed_dim=320, attention_heads=20)},
    "real": {"dnabert": dict(hidden=768, layers=12, heads=12, intermediate=3072, vocab=4096),
             "esm": dict(num_layers=36, embed_dim=2560, attention_heads=40)},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


# ---------------------------------------------------------------- workload

def workload(n: int, seed: int) -> tuple[list[str], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    full = rng.random(n) < 0.8
    lengths = np.where(full, rng.integers(165, 167, n), rng.integers(20, 165, n))
    aa = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    proteins = ["".join(rng.choice(aa, size=int(L))) for L in lengths]
    dna_tokens = []
    for L in lengths:
        k = max(1, int(round((3 * L + 1) / 4.5 * rng.uniform(0.9, 1.1))))
        dna_tokens.append(np.concatenate([[1], rng.integers(5, 64, k), [2]]).astype(np.int64))
    return proteins, dna_tokens


# ---------------------------------------------------------------- DNABERT-S

def random_dnabert_folder(dest: Path, hidden, layers, heads, intermediate, vocab, seed=0) -> Path:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)

    def w(*shape, std=0.02):
        return torch.randn(*shape, generator=g) * std

    shapes = {
        "embeddings.word_embeddings.weight": (vocab, hidden),
        "embeddings.token_type_embeddings.weight": (2, hidden),
        "embeddings.LayerNorm.weight": (hidden,), "embeddings.LayerNorm.bias": (hidden,),
    }
    assert set(shapes) == set(_EMB_KEYS)
    per_layer = {
        "attention.self.Wqkv.weight": (3 * hidden, hidden), "attention.self.Wqkv.bias": (3 * hidden,),
        "attention.output.dense.weight": (hidden, hidden), "attention.output.dense.bias": (hidden,),
        "attention.output.LayerNorm.weight": (hidden,), "attention.output.LayerNorm.bias": (hidden,),
        "mlp.gated_layers.weight": (2 * intermediate, hidden),
        "mlp.wo.weight": (hidden, intermediate), "mlp.wo.bias": (hidden,),
        "mlp.layernorm.weight": (hidden,), "mlp.layernorm.bias": (hidden,),
    }
    assert set(per_layer) == set(_LAYER_KEYS)
    for i in range(layers):
        shapes.update({f"encoder.layer.{i}.{k}": s for k, s in per_layer.items()})
    state = {k: (1 + w(*s, std=0.1) if k.endswith("LayerNorm.weight") or k.endswith("layernorm.weight")
                 else w(*s)) for k, s in shapes.items()}
    dest.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dest / "model.safetensors"))
    cfg = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
               intermediate_size=intermediate, vocab_size=vocab, layer_norm_eps=1e-12,
               type_vocab_size=2, model_type="bert")
    (dest / "config.json").write_text(json.dumps(cfg, indent=2))
    shutil.copy(TOKENIZER, dest / "tokenizer.json")
    return dest


def dnabert_original(enc: DnabertSEncoder, tokens) -> torch.Tensor:
    """One sequence per forward, mean over all tokens (the original's loop)."""
    out = []
    with torch.inference_mode():
        for t in tokens:
            ids = torch.from_numpy(t).to(enc.device)[None]
            pos = torch.arange(len(t), device=enc.device)[None]
            out.append(enc.module(ids, pos, None).float().mean(dim=1).cpu())
    return torch.cat(out)


def run_batched(enc, tokens, budget: int) -> torch.Tensor:
    out = torch.empty((len(tokens), enc.width))
    for batch in plan_batches([len(t) for t in tokens], budget):
        out[torch.as_tensor(batch)] = enc.embed([tokens[i] for i in batch])
    return out


# ---------------------------------------------------------------- ESM-2

def fair_esm_model(num_layers, embed_dim, attention_heads, seed=0):
    from esm.model.esm2 import ESM2

    torch.manual_seed(seed)
    model = ESM2(num_layers=num_layers, embed_dim=embed_dim, attention_heads=attention_heads,
                 alphabet="ESM-1b", token_dropout=True).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def checkpoint_data(model) -> dict:
    state = {}
    for k, v in model.state_dict().items():
        if not k.startswith("contact_head."):
            state[("encoder." if k.startswith("lm_head.") else "encoder.sentence_encoder.") + k] = v
    cfg = argparse.Namespace(encoder_layers=model.num_layers, encoder_embed_dim=model.embed_dim,
                             encoder_attention_heads=model.attention_heads,
                             token_dropout=model.token_dropout)
    return {"model": state, "cfg": {"model": cfg}}


def esm_original(model, proteins, device, toks_per_batch=2048) -> torch.Tensor:
    from esm.data import FastaBatchedDataset

    dataset = FastaBatchedDataset([str(i) for i in range(len(proteins))], proteins)
    batches = dataset.get_batch_indices(toks_per_batch, extra_toks_per_seq=1)
    loader = torch.utils.data.DataLoader(dataset, collate_fn=model.alphabet.get_batch_converter(),
                                         batch_sampler=batches)
    out = torch.empty((len(proteins), model.embed_dim))
    last = model.num_layers
    with torch.no_grad():
        for labels, strs, toks in loader:
            rep = model(toks.to(device), repr_layers=[last])["representations"][last]
            for i, (label, s) in enumerate(zip(labels, strs)):
                out[int(label)] = rep[i, 1:min(1024, len(s)) + 1].float().mean(0).cpu()
    return out


# ---------------------------------------------------------------- main

PEAK_TFLOPS = None


def report(name, n_tokens, t_orig, t_ours, diff, params):
    tps_o, tps_n = n_tokens / t_orig, n_tokens / t_ours
    flop = 2 * params * n_tokens
    peak = f" = {flop / t_ours / 1e12 / PEAK_TFLOPS:6.1%} of peak" if PEAK_TFLOPS else ""
    print(f"{name:10s} original {tps_o:12,.0f} tok/s ({t_orig:7.2f} s)   virnucpro {tps_n:12,.0f} tok/s "
          f"({t_ours:7.2f} s)   ratio {tps_n / tps_o:5.2f}x   {flop / t_ours / 1e12:7.2f} TFLOP/s (2*params*tok){peak}"
          f"   max|diff| {diff:.2e} (worst run)")
    return tps_o, tps_n


def precision_check(name: str, got: torch.Tensor, fp32: torch.Tensor) -> None:
    cos = torch.nn.functional.cosine_similarity(got[: len(fp32)], fp32)
    print(f"{name:10s} pooled vectors vs fp32 ({len(fp32)} ORFs): min cosine {cos.min().item():.6f}, "
          f"mean {cos.mean().item():.6f}")


def best_of(name: str, repeats: int, original, ours, device, precision: str, failures: list[str]):
    """Best seconds of each side over `repeats` interleaved runs, the last fast-side vectors and the
    worst max |diff|; every run's fast-side vectors are checked against that run's baseline, and each
    disagreement beyond the tolerance (conditions.compare) is added to `failures`."""
    t_o = t_n = float("inf")
    worst = 0.0
    for run in range(1, repeats + 1):
        ref, t = timed(original, device)
        t_o = min(t_o, t)
        got, t = timed(ours, device)
        t_n = min(t_n, t)
        agree, measure = conditions.compare(got, ref, precision)
        diff = (got - ref).abs().max().item()
        worst = diff if diff != diff or diff > worst else worst  # a NaN stays
        if not agree:
            failures.append(f"{name} run {run}: virnucpro vs original pattern, {measure}; limit "
                            f"{conditions.limit_text(precision)}")
    return t_o, t_n, got, worst


def bench_dnabert(args, size, device, dtype, budget, dna_tokens, tmp, failures):
    """DNABERT-S, one sequence per forward vs packed batches: (tok/s original, tok/s ours)."""
    folder = random_dnabert_folder(Path(tmp) / "dnabert", **size["dnabert"])
    enc = DnabertSEncoder(folder, device, dtype)
    n_tok = sum(len(t) for t in dna_tokens)
    dnabert_original(enc, dna_tokens[:8]), run_batched(enc, dna_tokens[:64], budget)  # warm-up
    t_o, t_n, got, worst = best_of("DNABERT-S", args.repeats, lambda: dnabert_original(enc, dna_tokens),
                                   lambda: run_batched(enc, dna_tokens, budget), device, args.dtype, failures)
    params = sum(p.numel() for n, p in enc.module.named_parameters() if "word" not in n)
    result = report("DNABERT-S", n_tok, t_o, t_n, worst, params)
    if args.dtype != "fp32":
        del enc
        fp32 = DnabertSEncoder(folder, device, torch.float32)
        precision_check("DNABERT-S", got, run_batched(fp32, dna_tokens[:256], budget))
    return result


def bench_esm(args, size, device, dtype, budget, proteins, failures):
    """ESM-2, fair-esm with 2048-token batches vs ours: (tok/s original, tok/s ours)."""
    model = fair_esm_model(**size["esm"])
    data = checkpoint_data(model)
    enc = Esm2Encoder.from_checkpoint_data(data, device, dtype)
    model = model.to(device=device, dtype=dtype)
    n_tok = sum(len(p) + 2 for p in proteins)
    esm_original(model, proteins[:8], device), run_batched(enc, enc.tokenize(proteins[:64]), budget)
    t_o, t_n, got, worst = best_of("ESM-2", args.repeats, lambda: esm_original(model, proteins, device),
                                   lambda: run_batched(enc, enc.tokenize(proteins), budget), device,
                                   args.dtype, failures)
    params = sum(p.numel() for n, p in enc.module.named_parameters() if "embed" not in n)
    result = report("ESM-2", n_tok, t_o, t_n, worst, params)
    if args.dtype != "fp32":
        del model, enc
        if device.type == "cuda":
            torch.cuda.empty_cache()
        fp32 = Esm2Encoder.from_checkpoint_data(data, device, torch.float32)
        precision_check("ESM-2", got, run_batched(fp32, fp32.tokenize(proteins[:256]), budget))
    return result


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=DTYPES, default="fp32")
    ap.add_argument("--real-size", action="store_true", help="DNABERT-S and ESM-2 3B real shapes")
    ap.add_argument("--n", type=conditions.positive_int, default=200, help="ORFs in the workload")
    ap.add_argument("--budget", type=conditions.positive_int, default=None,
                    help="token budget per batch (default 2048 on CPU, 65536 on CUDA)")
    ap.add_argument("--threads", type=conditions.positive_int, default=None)
    ap.add_argument("--only", choices=["dnabert_s", "esm2"], default=None)
    ap.add_argument("--repeats", type=conditions.positive_int, default=3,
                    help="best of N timings; every run's vectors are checked")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="device peak for the dtype (H100 SXM dense fp16/bf16: 989) to print a fraction")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    """Run the comparison; 1 when any run's vectors differ from the baseline beyond the tolerance."""
    args = parse_args(argv)
    global PEAK_TFLOPS
    PEAK_TFLOPS = args.peak_tflops
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU visible")
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    budget = args.budget or (65536 if device.type == "cuda" else 2048)
    size = SIZES["real" if args.real_size else "small"]
    proteins, dna_tokens = workload(args.n, args.seed)
    conditions.print_load("start", f"torch {torch.get_num_threads()}")
    print(f"device={device} dtype={args.dtype} threads={torch.get_num_threads()} n={args.n} "
          f"budget={budget} sizes={size}; check per run: {conditions.limit_text(args.dtype)}")
    results, failures = {}, []
    if args.only in (None, "dnabert_s"):
        with tempfile.TemporaryDirectory() as tmp:
            results["dnabert_s"] = bench_dnabert(args, size, device, dtype, budget, dna_tokens, tmp, failures)
    if args.only in (None, "esm2"):
        results["esm2"] = bench_esm(args, size, device, dtype, budget, proteins, failures)
    worst = min(n / o for o, n in results.values())
    print(f"worst ratio {worst:.2f}x (target on CPU: >= 0.9x)")
    conditions.print_load("end", f"torch {torch.get_num_threads()}")
    return conditions.verdict(failures)


if __name__ == "__main__":
    sys.exit(main())
