"""The benchmark scripts refuse to print a ratio for work the two sides did not both do: a fast side
whose vectors differ from the baseline's exits non-zero, sizes that measure nothing are refused at
argument parsing, and the load of the machine is printed beside the figures. No speed is asserted."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    """A benchmark script imported as a module (benchmarks/ is no package)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _keep_threads(thread_settings_kept):
    """A benchmark's thread settings (torch and the pool variables embed sets) end with the test."""


def _zeros_from_call(monkeypatch, module, name: str, call: int, zero):
    """Wrap module.`name` so that its `call`-th call onwards returns `zero(result)`."""
    original = getattr(module, name)
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        result = original(*args, **kwargs)
        return zero(result) if len(calls) >= call else result
    monkeypatch.setattr(module, name, wrapped)


# ---------------------------------------------------------------- bench_encoders

ENCODERS_SMALLEST = ["--n", "3", "--repeats", "2"]


def test_encoders_agree_exit_0(capsys):
    be = _load("bench_encoders")
    assert be.main(ENCODERS_SMALLEST) == 0
    out = capsys.readouterr().out
    assert "FAILED" not in out and "load at start" in out and "load at end" in out


def test_encoders_zero_encoder_exits_1(monkeypatch, capsys):
    """An ESM-2 encoder that returns zeros is a failure, not a speed-up."""
    import torch

    from virnucpro.encoders.esm2 import Esm2Encoder

    original = Esm2Encoder._run
    monkeypatch.setattr(Esm2Encoder, "_run", lambda self, *a: torch.zeros_like(original(self, *a)))
    assert _load("bench_encoders").main(ENCODERS_SMALLEST + ["--only", "esm2"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: ESM-2 run 1" in out and "ratios above are void" in out


def test_encoders_check_every_repeat(monkeypatch, capsys):
    """Only the second timed run of the fast side goes wrong (call 1 is the warm-up): still caught."""
    be = _load("bench_encoders")
    _zeros_from_call(monkeypatch, be, "run_batched", 3, lambda out: out * 0)
    assert be.main(ENCODERS_SMALLEST + ["--only", "dnabert_s"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: DNABERT-S run 2" in out and "FAILED: DNABERT-S run 1" not in out


# ---------------------------------------------------------------- bench_embed

EMBED_SMALLEST = ["--records", "3", "--repeats", "2", "--skip-overhead"]


def test_embed_agree_exit_0(capsys):
    assert _load("bench_embed").main(EMBED_SMALLEST) == 0
    out = capsys.readouterr().out
    assert "FAILED" not in out and "check run 2" in out and "load at end" in out


def test_embed_zero_encoder_exits_1(monkeypatch, capsys):
    """embed's ESM-2 returning zeros (the original pattern runs fair-esm, untouched) exits 1."""
    import torch

    from virnucpro.encoders.esm2 import Esm2Encoder

    original = Esm2Encoder._run
    monkeypatch.setattr(Esm2Encoder, "_run", lambda self, *a: torch.zeros_like(original(self, *a)))
    assert _load("bench_embed").main(EMBED_SMALLEST) == 1
    out = capsys.readouterr().out
    assert "FAILED: embed run 1" in out and "ESM-2" in out


def test_embed_check_every_repeat(monkeypatch, capsys):
    """The original pattern's second timed run (call 1 is the warm-up) differs: caught at run 2."""
    bench = _load("bench_embed")
    _zeros_from_call(monkeypatch, bench, "run_original", 3,
                     lambda result: (result[0], result[1] * 0, *result[2:]))
    assert bench.main(EMBED_SMALLEST) == 1
    out = capsys.readouterr().out
    assert "FAILED: embed run 2" in out and "FAILED: embed run 1" not in out


def test_embed_overhead_compares_the_default_parts_with_none(monkeypatch, capsys):
    """A review's case: the 'checkpoints off' run still wrote a part at its end (the last window's),
    so the overhead compared two parts with one. The run without parts writes none; the default
    writes one even below the interval (its last window)."""
    from virnucpro.embed import CheckpointStore

    saved, original = [], CheckpointStore.save
    monkeypatch.setattr(CheckpointStore, "save", lambda self, *args, **kwargs: (saved.append(1),
                                                                                original(self, *args, **kwargs)))
    bench = _load("bench_embed")
    calls, real = [], bench.run_embed

    def counted(*args, **kwargs):
        before = len(saved)
        result = real(*args, **kwargs)
        calls.append((kwargs.get("parts", True), len(saved) - before))
        return result

    monkeypatch.setattr(bench, "run_embed", counted)
    assert bench.main(["--records", "3", "--repeats", "1", "--skip-original"]) == 0
    out = capsys.readouterr().out
    assert "checkpoint overhead: " in out and "skipped" not in out and "no part:" in out, out
    assert "WARNING: --repeats 1" in out
    assert {writes for parts, writes in calls if not parts} == {0}, calls
    assert all(writes >= 1 for parts, writes in calls if parts), calls


# ---------------------------------------------------------------- bench_h5, bench_prepare, helpers

@pytest.mark.parametrize("argv", [["--rows", "0"], ["--repeats", "0"], ["--rows", "-5"], ["--repeats", "x"]])
def test_h5_refuses_sizes_that_measure_nothing(argv, capsys):
    with pytest.raises(SystemExit) as refused:
        _load("bench_h5").main(argv)
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("below 1" in err or "whole number" in err)


def test_h5_prints_the_load(capsys):
    assert _load("bench_h5").main(["--rows", "5", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "load at start" in out and "load at end" in out and "plain read" in out


def test_h5_exits_1_when_the_checked_read_gives_other_rows(monkeypatch, capsys):
    """A review's case: the benchmark timed h5shard's reads without checking what they gave; an
    iter_rows that read nothing was '0.00x the plain read', exit 0."""
    from virnucpro import h5shard

    monkeypatch.setattr(h5shard, "iter_rows", lambda *args, **kwargs: iter(()))
    assert _load("bench_h5").main(["--rows", "5", "--repeats", "1"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_prepare_baseline_is_best_of_n_and_rss_is_the_largest_process(capsys):
    bench = _load("bench_prepare")
    bench.main(["--reads", "20", "--repeats", "2", "--writer-lines", "100"])
    out = capsys.readouterr().out
    assert "pure Python : " in out and out.count("(best of 2)") == 2 and "as FASTQ    : " in out
    assert "largest process" in out and "load at end" in out


def test_prepare_checks_the_10x_run_too(monkeypatch):
    """A review's case: the 10x run gave the amortised rate and the memory row, and nothing it
    wrote was checked (a command that did nothing gave '94.5x')."""
    bench = _load("bench_prepare")
    real = bench.shard_records
    monkeypatch.setattr(bench, "shard_records", lambda outdir: [] if outdir.name == "ours_big" else real(outdir))
    with pytest.raises(SystemExit) as void:
        bench.main(["--reads", "20", "--repeats", "1", "--writer-lines", "100"])
    assert "10x run: pure-Python and virnucpro ORF records differ" in str(void.value)


def test_load_warning_when_load_exceeds_the_cores(monkeypatch, capsys):
    conditions = _load("conditions")
    monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 50.0, 10.0))
    conditions.print_load("start", "torch 1")
    out = capsys.readouterr().out
    assert "99.00 50.00 10.00" in out and "WARNING: load 99.00 exceeds" in out
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    conditions.print_load("end", "torch 1")
    assert "WARNING" not in capsys.readouterr().out


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_compare_refuses_zeros_nan_and_shape(precision):
    conditions = _load("conditions")
    ref = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    assert conditions.compare(ref + 1e-6, ref, precision)[0]
    assert not conditions.compare(np.zeros_like(ref), ref, precision)[0]
    assert not conditions.compare(np.full_like(ref, np.nan), ref, precision)[0]
    assert not conditions.compare(ref[:3], ref, precision)[0]


def test_embed_original_pattern_runs_the_model_codes_attention_uncompiled(monkeypatch, capsys):
    """A review's case: on a GPU the original-pattern DNABERT-S loaded virnucpro's default there,
    the compiled reference path, so the baseline ran faster than the original does."""
    bench = _load("bench_embed")
    asked = []

    class Recorded(bench.DnabertSEncoder):
        def __init__(self, *args, **kwargs):
            asked.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(bench, "DnabertSEncoder", Recorded)
    assert bench.main(EMBED_SMALLEST) == 0, capsys.readouterr().out
    assert asked and all(kwargs.get("path") == "reference" and kwargs.get("compile") is False
                         for kwargs in asked), asked


# ---------------------------------------------------------------- the printed figures, on a scripted clock

class ScriptedClock:
    """A clock for a benchmark module that moves only when a side's work runs, by a fixed cost per
    real token of that call, doubled on every second call of that side (a disturbed run): the
    printed rates must then be 1 / cost, the best of the runs, whatever the workload."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def costing(self, function, seconds_per_token: float, tokens):
        calls = []

        def run(*args, **kwargs):
            calls.append(1)
            self.now += seconds_per_token * tokens(*args) * (2 if len(calls) % 2 == 0 else 1)
            return function(*args, **kwargs)
        return run


def _rates(out: str, name: str) -> tuple[float, float, float]:
    """(original tok/s, virnucpro tok/s, ratio) of the benchmark's line for `name`."""
    import re

    line = next(line for line in out.splitlines() if line.startswith(f"{name:10s} original"))
    found = re.search(r"original\s+([\d,]+) tok/s .* virnucpro\s+([\d,]+) tok/s .* ratio\s+([\d.]+)x", line)
    return tuple(float(group.replace(",", "")) for group in found.groups())


def test_encoders_print_the_rates_and_ratio_of_what_each_side_did(monkeypatch, capsys):
    """The original pattern costs 4 ms per real token (special tokens counted, padding not), the
    fast side 1 ms: whatever the workload, the lines read 250 and 1,000 tok/s and 4.00x. Kills an
    inverted ratio, swapped sides, a wrong count of tokens, and the worst run taken for the best."""
    be = _load("bench_encoders")
    clock = ScriptedClock()
    dna_tokens = lambda _encoder, tokens, *rest: sum(len(t) for t in tokens)  # noqa: E731
    protein_tokens = lambda _model, proteins, *rest: sum(len(p) + 2 for p in proteins)  # noqa: E731
    monkeypatch.setattr(be, "time", clock)
    monkeypatch.setattr(be, "dnabert_original", clock.costing(be.dnabert_original, 4e-3, dna_tokens))
    monkeypatch.setattr(be, "esm_original", clock.costing(be.esm_original, 4e-3, protein_tokens))
    monkeypatch.setattr(be, "run_batched", clock.costing(be.run_batched, 1e-3, dna_tokens))
    assert be.main(["--n", "5", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    for name in ("DNABERT-S", "ESM-2"):
        assert _rates(out, name) == (250, 1000, 4.0), out


def test_embed_prints_the_rates_ratio_and_overhead_of_what_each_side_did(monkeypatch, capsys):
    """On a scripted clock: embed() costs 2 ms per record with its checkpoint parts and 1.6 ms
    without, the original pattern 1 ms per record for DNABERT-S and 3 ms for ESM-2. The lines must
    read 500 and 250 records/s, 2.00x, +25.0% overhead, and real tokens/s from the shard's own
    proteins (each with its two special tokens), from the best runs. Kills an inverted ratio or
    overhead, swapped labels, one encoder's time counted in the other's, a wrong count of tokens,
    and the worst run taken for the best."""
    import re

    bench = _load("bench_embed")
    clock, shards, calls = ScriptedClock(), {}, {True: 0, False: 0}
    real_embed, real_save = bench.embed_mod.embed, bench.embed_mod.CheckpointStore.save

    def costly_embed(shard, *args, **kwargs):
        """Every second call of each variant (the warm-up counts as one with parts) costs double."""
        records = list(bench.fmt.read_shard(shard))
        shards[len(records)] = sum(len(protein) + 2 for _id, _nt, protein in records)
        parts = bench.embed_mod.CheckpointStore.save is real_save
        calls[parts] += 1
        clock.now += (2e-3 if parts else 1.6e-3) * len(records) * (2 if calls[parts] % 2 == 0 else 1)
        return real_embed(shard, *args, **kwargs)

    class CostlyDnabert(bench.DnabertSEncoder):
        def embed(self, tokens):
            clock.now += 1e-3 * len(tokens)
            return super().embed(tokens)

    monkeypatch.setattr(bench, "time", clock)
    monkeypatch.setattr(bench.embed_mod, "embed", costly_embed)
    monkeypatch.setattr(bench, "DnabertSEncoder", CostlyDnabert)
    monkeypatch.setattr(bench.be, "esm_original", clock.costing(bench.be.esm_original, 3e-3, lambda _m, p, *r: len(p)))
    assert bench.main(["--records", "6", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("embed: 6 records"))
    assert "500.0 records/s" in line and "original pattern: 250.0 records/s" in line and "ratio 2.00x" in line, line
    assert "DNABERT-S best 0.01 s, ESM-2 best 0.02 s" in line, line
    assert "checkpoint overhead: +25.0%" in out, out
    dna = int(re.search(r"real tokens: DNABERT-S ([\d,]+)", out).group(1).replace(",", ""))
    assert f"{(dna + shards[6]) / 0.012:,.0f} real tokens/s" in line, (line, shards)


def _turned(rows: int, cosine: float) -> tuple[np.ndarray, np.ndarray]:
    """(got, ref): `rows` random rows, equal but for row 0, whose two vectors have this cosine."""
    ref = np.random.default_rng(1).standard_normal((rows, 16))
    got = ref.copy()
    ref[0], got[0] = np.eye(16)[0], np.zeros(16)
    got[0][:2] = cosine, np.sqrt(1 - cosine ** 2)
    return got, ref


def test_compare_holds_every_row_to_the_tolerance_at_its_edge():
    """One row just past the limit among many fails (the worst row counts, not the mean); a
    difference just past the precision's limit fails, just within it passes."""
    conditions = _load("conditions")
    # the limits the scripts' docstrings and docs/encoders.md state
    assert (conditions.FP32_ATOL, conditions.HALF_MIN_COSINE) == (1e-4, 0.999)
    limit = conditions.HALF_MIN_COSINE
    for precision in ("fp16", "bf16"):
        assert not conditions.compare(*_turned(64, limit - 1e-3), precision)[0], precision
        assert conditions.compare(*_turned(64, min(1.0, limit + 1e-5)), precision)[0], precision
    ref = np.random.default_rng(2).standard_normal((64, 16))
    assert conditions.compare(ref + 0.9 * conditions.FP32_ATOL, ref, "fp32")[0]
    assert not conditions.compare(ref + 1.1 * conditions.FP32_ATOL, ref, "fp32")[0]
    one_bad = ref.copy()
    one_bad[5, 3] += 1.1 * conditions.FP32_ATOL
    assert not conditions.compare(one_bad, ref, "fp32")[0]


def _costing_rows(clock: ScriptedClock, rows_of, seconds_per_row: float):
    """A reader of (ids, features) blocks whose every block moves the clock as it is consumed."""
    def read(*args, **kwargs):
        for ids, features in rows_of(*args, **kwargs):
            clock.now += seconds_per_row * len(ids)
            yield ids, features
    return read


def test_h5_prints_each_read_as_a_ratio_to_the_plain_read_of_the_same_rows(monkeypatch, capsys):
    """On a scripted clock where only rows cost (1 us each by the plain read, 4 us by iter_rows),
    the seal and attribute reads are 0.00x, iter_rows and predict's reads (which read every row
    once) 4.00x. Kills an inverted ratio and a predict read that stops before the last row."""
    from virnucpro import h5shard

    bench, clock = _load("bench_h5"), ScriptedClock()
    monkeypatch.setattr(bench, "time", clock)
    monkeypatch.setattr(bench, "_plain_blocks", _costing_rows(clock, bench._plain_blocks, 1e-6))
    real_iter_rows = h5shard.iter_rows
    monkeypatch.setattr(h5shard, "ROWS_PER_WRITE", 1000)  # blocks of 1,000 rows for both reads: three of them
    monkeypatch.setattr(h5shard, "iter_rows", _costing_rows(
        clock, lambda *args, **kwargs: real_iter_rows(*args, **{"block": 1000, **kwargs}), 4e-6))
    assert bench.main(["--rows", "3000", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    ratios = {line[:38].strip(): line.split()[-4] for line in out.splitlines() if line.endswith("x the plain read")}
    assert ratios == {"seal check": "0.00x", "read_info (seal + attributes)": "0.00x",
                      "iter_rows (seal + rows + checksums)": "4.00x", "predict's reads (info, ids, rows)": "4.00x"}, out


def test_h5_exits_1_when_the_shard_counts_other_rows_than_were_written(monkeypatch, capsys):
    """Both reads agree row by row, but the shard's own count differs from the rows written."""
    import dataclasses

    from virnucpro import h5shard

    real = h5shard.read_info
    monkeypatch.setattr(h5shard, "read_info", lambda path: dataclasses.replace(real(path), records=real(path).records + 1))
    assert _load("bench_h5").main(["--rows", "5", "--repeats", "1"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_prepare_prints_its_ratios_from_the_best_runs_of_each_side(monkeypatch, capsys):
    """Scripted seconds per run (the real commands still run and are checked): pure Python 4 s,
    virnucpro 1 s, as FASTQ 2 s, each doubled on every second run; the 10x run 5 s. The lines must
    read 4.0x, 2.0x the FASTA rate, and 8.0x at 10x. Kills inverted ratios and worst-for-best runs."""
    bench = _load("bench_prepare")
    real, runs = bench.measure, {}

    def scripted(command):
        data = real(command)
        kind = ("pure" if "pure_python.py" in " ".join(command) else "big" if command[-1].endswith("ours_big")
                else "fastq" if "ours_fq" in command[-1] else "fasta")
        runs[kind] = runs.get(kind, 0) + 1
        data["seconds"] = {"pure": 4.0, "fasta": 1.0, "fastq": 2.0, "big": 5.0}[kind] * (2 if runs[kind] % 2 == 0 else 1)
        return data

    monkeypatch.setattr(bench, "measure", scripted)
    bench.main(["--reads", "20", "--repeats", "2", "--writer-lines", "100"])
    out = capsys.readouterr().out
    assert "speed-up    :      4.0x whole command" in out, out
    assert "(best of 2; 2.0x the pure-Python FASTA rate)" in out, out
    assert "(40 reads/s, 8.0x the best pure-Python rate on the 1x reads" in out, out


def test_prepare_checks_the_fastq_runs_too(monkeypatch):
    """The FASTQ rate is printed, so what those runs wrote is checked like the FASTA runs'."""
    bench = _load("bench_prepare")
    real = bench.shard_records
    monkeypatch.setattr(bench, "shard_records", lambda outdir: [] if "ours_fq" in outdir.name else real(outdir))
    with pytest.raises(SystemExit) as void:
        bench.main(["--reads", "20", "--repeats", "1", "--writer-lines", "100"])
    assert "pure-Python and virnucpro ORF records differ" in str(void.value)


def test_prepare_measures_the_memory_of_the_command_not_of_its_measurer():
    """A command that touches 300 MB more than another peaks 300 MB higher (the measurer's own peak
    starts at this test process's, which exec keeps, so only the difference tells them apart)."""
    bench = _load("bench_prepare")
    touch = "block = bytearray({} * 2 ** 20); block[::4096] = b'x' * len(block[::4096])"
    small, large = (bench.measure([sys.executable, "-c", touch.format(mib)])["peak_rss_mb"] for mib in (1, 301))
    assert large - small >= 280, (small, large)
