"""Fixtures and helpers for the encoder tests (imported by test_dnabert_s/test_esm2/test_batching).

A tiny ESM-2 is built with fair-esm's own `ESM2` (random weights, layer norms spread by noise so
that every parameter matters) and saved in the real fair-esm `.pt` layout: keys prefixed with
`encoder.sentence_encoder.` (trunk) and `encoder.` (LM head), configuration in
`cfg['model']` (ESM-2 release layout) or `args` (older layout).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

TINY_ESM = dict(num_layers=3, embed_dim=64, attention_heads=4)
AMINO = "ACDEFGHIKLMNPQRSTVWY"


def read_fasta(path: Path) -> tuple[list[str], list[str]]:
    ids, seqs = [], []
    for line in Path(path).read_text().splitlines():
        if line.startswith(">"):
            ids.append(line[1:].split()[0])
            seqs.append("")
        elif line.strip():
            seqs[-1] += line.strip()
    return ids, seqs


def random_proteins(lengths, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list(AMINO), size=n)) for n in lengths]


def fair_esm_state(model) -> dict:
    """A fair-esm ESM2's state dict under the key names of the released checkpoints."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("contact_head."):
            continue  # shipped in the separate -contact-regression.pt file
        out[("encoder." if key.startswith("lm_head.") else "encoder.sentence_encoder.") + key] = value
    return out


def save_esm_checkpoint(model, path: Path, layout: str = "cfg") -> Path:
    n = model.num_layers
    if layout == "cfg":
        cfg = argparse.Namespace(encoder_layers=n, encoder_embed_dim=model.embed_dim,
                                 encoder_ffn_embed_dim=4 * model.embed_dim,
                                 encoder_attention_heads=model.attention_heads,
                                 token_dropout=model.token_dropout, _name="ESM2")
        data = {"model": fair_esm_state(model), "cfg": {"model": cfg, "task": {"_name": "masked_lm"}}}
    else:
        args = argparse.Namespace(arch="ESM2", layers=n, embed_dim=model.embed_dim,
                                  ffn_embed_dim=4 * model.embed_dim,
                                  attention_heads=model.attention_heads,
                                  token_dropout=model.token_dropout)
        data = {"model": fair_esm_state(model), "args": args}
    torch.save(data, path)
    regression = {"model": {k: v for k, v in model.state_dict().items() if k.startswith("contact_head.")}}
    torch.save(regression, str(path.with_suffix("")) + "-contact-regression.pt")
    return path


@pytest.fixture(scope="session")
def fair_esm_model():
    """A tiny random fair-esm ESM2 (3 layers, 64 dims, 4 heads) in eval mode."""
    from esm.model.esm2 import ESM2

    torch.manual_seed(1234)
    model = ESM2(alphabet="ESM-1b", token_dropout=True, **TINY_ESM).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session")
def esm_checkpoints(fair_esm_model, tmp_path_factory) -> dict[str, Path]:
    """The tiny model saved in both fair-esm layouts: {'cfg': path, 'args': path}."""
    folder = tmp_path_factory.mktemp("esm2")
    return {layout: save_esm_checkpoint(fair_esm_model, folder / f"esm2_t3_tiny_{layout}.pt", layout)
            for layout in ("cfg", "args")}


def fair_esm_pooled(model, proteins: list[str], batched: bool = False) -> torch.Tensor:
    """What the original computes: repr of the last layer, mean over positions 1..min(1024, L)."""
    convert = model.alphabet.get_batch_converter()
    groups = [list(range(len(proteins)))] if batched else [[i] for i in range(len(proteins))]
    out = [None] * len(proteins)
    with torch.no_grad():
        for group in groups:
            _, _, toks = convert([(str(i), proteins[i]) for i in group])
            rep = model(toks, repr_layers=[model.num_layers])["representations"][model.num_layers]
            for row, i in enumerate(group):
                n = int((toks[row] != model.alphabet.padding_idx).sum()) - 2  # residues
                out[i] = rep[row, 1:min(1024, n) + 1].mean(0)
    return torch.stack(out)
