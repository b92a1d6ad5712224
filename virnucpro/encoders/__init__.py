"""Native encoders for the two language models, and the checks shared by the embed stage.

`DnabertSEncoder` (virnucpro.encoders.dnabert_s) and `Esm2Encoder` (virnucpro.encoders.esm2) load
the official checkpoints into lean PyTorch modules; `plan_batches` (virnucpro.encoders.batching)
groups records into length-similar batches within a token budget; `check_finite` is the NaN/Inf
guard applied to pooled vectors before they are written.
"""

from __future__ import annotations

import re

from typing import Sequence

import numpy as np

from virnucpro.errors import ModelsError, NumericalError


def check_finite(vectors, ids: Sequence[str]) -> None:
    """Raise NumericalError naming the first record whose vector holds NaN or Inf.

    `vectors` is an (N, D) torch tensor or numpy array, `ids` the N record ids in the same order.
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
            hint="rerun with --precision fp32; if it persists, report it",
        )


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
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    for key, tensor in mapped.items():
        if tuple(tensor.shape) != expected[key]:
            raise ModelsError(f"{model}: {path}: tensor for {key} has shape {tuple(tensor.shape)}, "
                              f"{implied_by} {expected[key]}")
    module.load_state_dict(mapped, strict=True, assign=True)
    return module


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


__all__ = ["DnabertSEncoder", "Esm2Encoder", "check_finite", "describe_load_error", "plan_batches"]
