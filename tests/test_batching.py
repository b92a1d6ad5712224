"""Batch planning, row packing, masks, pooling weights and the NaN/Inf guard."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from virnucpro.encoders import check_finite
from virnucpro.encoders.batching import pack, pack_rows, plan_batches
from virnucpro.errors import ExitCode, NumericalError


def _random_lengths(n, seed):
    rng = np.random.default_rng(seed)
    # mostly full-length ORFs with a tail of short ones and a few long outliers
    return np.concatenate([rng.integers(160, 170, n // 2), rng.integers(3, 160, n // 3),
                           rng.integers(300, 3000, n - n // 2 - n // 3)]).tolist()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("budget", [1, 100, 512, 2048, 10_000])
def test_plan_batches_budget_and_coverage(seed, budget):
    lengths = _random_lengths(200, seed)
    batches = plan_batches(lengths, budget)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for b in batches:
        longest = max(lengths[i] for i in b)
        if len(b) > 1:
            assert longest * len(b) <= budget
            assert sum(lengths[i] for i in b) <= budget
        else:
            assert len(b) == 1
    # grouped by length: batches do not interleave
    spans = [(min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches]
    for (lo1, _), (_, hi2) in zip(spans, spans[1:]):
        assert hi2 <= lo1


def test_plan_batches_edge_cases():
    assert plan_batches([], 100) == []
    assert plan_batches([500, 10, 10], 100) == [[0], [1, 2]]
    assert plan_batches([50, 50, 50], 100) == [[0, 1], [2]]
    with pytest.raises(ValueError):
        plan_batches([1], 0)


@pytest.mark.parametrize("seed", range(5))
def test_pack_rows_capacity_and_coverage(seed):
    lengths = np.random.default_rng(seed).integers(1, 200, 300).tolist()
    rows = pack_rows(lengths, 200)
    assert sorted(i for r in rows for i in r) == list(range(300))
    assert all(sum(lengths[i] for i in r) <= 200 for r in rows)
    assert len(rows) <= len(lengths)
    assert pack_rows([500, 3], 100) == [[0], [1]]


def test_pack_layout_positions_mask_and_pooling():
    tokens = [np.arange(5) + 10, np.arange(3) + 20, np.arange(2) + 30, np.arange(4) + 40]
    batch, scale = pack(tokens, pad_id=1, device=torch.device("cpu"),
                        pool_range=lambda n: (1, n), packed=True,
                        token_scale=lambda ids: np.full(len(ids), 0.5, dtype=np.float32))
    assert batch.ids.shape[1] == 5  # capacity = longest sequence
    for i, t in enumerate(tokens):
        r, s = batch.where[i].tolist()
        sel = batch.slot[r] == s
        assert batch.ids[r, sel].tolist() == t.tolist()
        assert batch.pos[r, sel].tolist() == list(range(len(t)))  # positions restart
        w = batch.pool[r, s]
        assert torch.isclose(w.sum(), torch.tensor(1.0))
        assert (w[~sel] == 0).all()
        assert torch.equal(scale[r, sel], torch.full((len(t),), 0.5))
    assert (scale[batch.slot < 0] == 0).all()
    mask = batch.attention_mask()[:, 0]
    same = batch.slot[:, :, None] == batch.slot[:, None, :]
    assert torch.equal(mask, same)
    assert mask.any(dim=-1).all()  # no all-masked row (padding attends padding)
    padded, _ = pack(tokens, 1, torch.device("cpu"), lambda n: (0, n), packed=False)
    assert padded.ids.shape == (4, 5)
    full, _ = pack([np.arange(4), np.arange(4)], 1, torch.device("cpu"), lambda n: (0, n))
    assert full.attention_mask() is None


def test_check_finite():
    ids = ["a", "b", "c"]
    check_finite(torch.zeros(3, 4), ids)
    check_finite(np.zeros((3, 4), dtype=np.float32), ids)
    bad = torch.zeros(3, 4)
    bad[2, 1] = float("inf")
    bad[1, 0] = float("nan")
    with pytest.raises(NumericalError, match="record b") as info:
        check_finite(bad, ids)
    assert info.value.code == ExitCode.NUMERICAL == 9
    with pytest.raises(NumericalError, match="record c"):
        check_finite(np.where(np.arange(12).reshape(3, 4) == 9, np.inf, 0.0), ids)
