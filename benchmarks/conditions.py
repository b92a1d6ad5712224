"""What every benchmark shares: the machine's load printed beside its ratios, refusals of sizes that
measure nothing, and the check that the fast side computed what its baseline computed.

A ratio is only worth printing when both sides did the same work under the same conditions. Load from
other jobs slows whichever side it lands on, so each script prints the load average and its thread
count at its start and end, and warns when the load exceeds the cores. A fast side that computes
something else (zeros, a dropped token, a wrong mask) would look like a large speed-up, so the
scripts compare every timed run's vectors with the baseline's and exit 1 when they differ beyond:

* fp32: 1e-4 absolute on the pooled vectors. Both sides run the same fp32 math in another order
  (batched and packed vs one sequence at a time); the unit tests hold that difference to 1e-5 on the
  tiny models and measure about 1e-6. 1e-4 leaves room for the larger benchmark models' longer sums,
  while any real defect moves vectors of magnitude ~1 by far more.
* fp16/bf16: a minimum cosine of 0.999 per vector, the bound the unit tests hold half-precision
  vectors to against fp32 (half-precision rounding differs between kernels; an absolute limit would
  be either loose or flaky).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

FP32_ATOL = 1e-4
HALF_MIN_COSINE = 0.999


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (0 rows, records or repeats measure nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1: nothing would be measured")
    return value


def print_load(when: str, threads: str) -> None:
    """Print the 1/5/15-minute load average, the cores and the benchmark's threads; warn when the
    1-minute load exceeds the cores (other work then shares the CPUs and distorts the ratios)."""
    one, five, fifteen = os.getloadavg()
    cores = os.cpu_count() or 1
    print(f"load at {when}: {one:.2f} {five:.2f} {fifteen:.2f} (1/5/15-min average) on {cores} cores; "
          f"threads: {threads}", flush=True)
    if one > cores:
        print(f"WARNING: load {one:.2f} exceeds the {cores} cores: other work shares this machine, so the "
              "timings and ratios here are distorted", flush=True)


def limit_text(precision: str) -> str:
    """The tolerance of a precision, in words."""
    if precision == "fp32":
        return f"max |diff| <= {FP32_ATOL:.0e} (fp32)"
    return f"min cosine >= {HALF_MIN_COSINE} ({precision})"


def compare(got, ref, precision: str) -> tuple[bool, str]:
    """Whether `got` agrees with `ref` (both (N, width)) within the precision's tolerance, and the
    measure; non-finite values and a shape mismatch never agree."""
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return False, f"shape {got.shape} vs {ref.shape}"
    diff = float(np.abs(got - ref).max()) if got.size else 0.0
    if precision == "fp32":
        return bool(diff <= FP32_ATOL), f"max |diff| {diff:.2e}"
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1)
    cosine = float(((got * ref).sum(axis=1) / np.maximum(norms, 1e-12)).min()) if got.size else 1.0
    return bool(cosine >= HALF_MIN_COSINE), f"min cosine {cosine:.6f}, max |diff| {diff:.2e}"


def verdict(failures: list[str]) -> int:
    """0 when every check agreed; else print each failure and return 1 (the ratios are void)."""
    for line in failures:
        print(f"FAILED: {line}", flush=True)
    if failures:
        print("FAILED: the fast side's vectors differ from the baseline's: its timings measure other work, "
              "the ratios above are void", flush=True)
    return 1 if failures else 0
