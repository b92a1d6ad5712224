"""benchmarks/gpu_check.py: its CPU smoke run covers every section, without fair-esm or biopython."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
SECTIONS = ("device", "ceilings", "encoders", "kernels", "precision", "embed", "autotune", "summary")
ABSENT = ("Bio", "esm")  # the GPU machine has neither


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One `--cpu-smoke` run with Bio and esm shadowed by packages that refuse to be imported."""
    blockers = tmp_path_factory.mktemp("blockers")
    for name in ABSENT:
        (blockers / name).mkdir()
        (blockers / name / "__init__.py").write_text(f"raise ImportError('{name} is not on the GPU machine')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blockers), os.environ.get("PYTHONPATH", "")])}
    figures = tmp_path_factory.mktemp("figures") / "figures.json"
    env["TMPDIR"] = str(tmp_path_factory.mktemp("shared-temp"))  # the shared temporary folder, watched
    done = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--json", str(figures)],
                          capture_output=True, text=True, env=env, timeout=600)
    return done, figures, Path(env["TMPDIR"])


def test_cpu_smoke_exits_0_and_prints_every_section(smoke):
    done, figures, _ = smoke
    assert done.returncode == 0, done.stderr[-3000:]
    for section in SECTIONS:
        assert f"\n== {section} " in done.stdout, section
    for role in ("dnabert_s", "esm2"):
        assert f"  {role:9s} reference " in done.stdout
        assert f"  {role:9s} {'fast+compiled':19s} ran {'fast+compiled':19s} load " in done.stdout  # compiled on the CPU too
    assert "records/s" in done.stdout and "min cosine" in done.stdout and "SKIPPED" not in done.stdout
    assert figures.is_file()
    autotuned = [r for r in strict_json(figures)["results"] if r["requested"] == "fast+autotuned"]
    assert len(autotuned) == 1 and autotuned[0]["ran"] == "fast+autotuned" and autotuned[0]["tokens_per_s"] > 0
    assert f"  esm2      {'fast+autotuned':19s} {'fast+autotuned':19s} " in done.stdout.split("\n== summary", 1)[1]


def test_the_smoke_run_times_a_later_tasks_load_in_a_new_process(smoke):
    """The 10 s load target is about each embed task's start: a new process loading both models
    (the first load, in the run's own process, also writes ESM-2's fp16 copy on a GPU)."""
    done, figures, _ = smoke
    task = strict_json(figures)["embed"]["task_load"]
    assert task["load_s"] > 0 and task["import_s"] > 0, task
    assert task["paths"] == {"dnabert_s": "reference", "esm2": "reference"}, task
    assert task["esm2_from"].endswith(".fp16.safetensors"), task  # at fp16 the first load wrote the copy
    assert f"a later task's load {task['load_s']:.1f} s" in done.stdout.split("\n== summary", 1)[1]


def test_the_smoke_run_leaves_nothing_in_the_shared_temporary_folder(smoke):
    """Torch inductor puts its precompiled headers (149 MB) in tempfile.gettempdir()/torchinductor_USER
    whatever TORCHINDUCTOR_CACHE_DIR says: they, and everything else, go under the run's own folder."""
    done, _, shared = smoke
    assert done.returncode == 0, done.stderr[-3000:]
    assert [str(p.relative_to(shared)) for p in shared.rglob("*")] == []


def test_runs_without_fair_esm_or_biopython(smoke):
    done, _, _ = smoke
    assert done.returncode == 0 and "is not on the GPU machine" not in done.stderr
    imported = set()
    for node in ast.walk(ast.parse(SCRIPT.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & set(ABSENT)


def test_mfu_is_not_applicable_on_the_cpu(smoke):
    """A CPU's fp16 GEMM bounds nothing the GPU run measures: no percentage against it."""
    done, _, _ = smoke
    summary = done.stdout.split("\n== summary", 1)[1]
    assert "MFU and 'of GEMM' n/a on the CPU" in summary
    rows = [line.split() for line in summary.splitlines() if line.startswith(("  dnabert_s ", "  esm2 "))]
    rows = [row for row in rows if len(row) > 6 and row[1] in ("reference", "fast", "fast+compiled")]
    assert len(rows) == 6 and all(row[5:7] == ["n/a", "n/a"] for row in rows), summary


def test_the_smoke_run_names_the_branches_only_a_gpu_runs():
    """`--cpu-smoke` is not every code path: the docstring says which branches need a GPU."""
    text = " ".join(ast.get_docstring(ast.parse(SCRIPT.read_text())).split())
    for branch in ("varlen_attn", "batching._flex(True)", "create_block_mask(..., _compile=True)"):
        assert branch in text, branch
    assert "every code path" not in text


# --- the figures survive failures, kills and fallbacks ---------------------------------------------------

def strict_json(path: Path):
    """The file parsed as strict JSON: a bare NaN or Infinity fails the test."""
    def refuse(constant):
        raise AssertionError(f"{path.name} holds {constant}, not strict JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_the_json_is_strict(smoke):
    """NaN (the CPU's peak memory, a missing comparison) is written as null."""
    done, figures, _ = smoke
    found = strict_json(figures)
    assert found["failed"] == [] and {r["peak_gib"] for r in found["results"]} == {None}, done.stdout[-2000:]
    assert {r["ran"] for r in found["results"]} >= {"fast+compiled"}
    assert not any(r["fell_back_during_measurement"] for r in found["results"])


@pytest.fixture
def gpu_check(monkeypatch, tmp_path, thread_settings_kept):
    """The script as a module, its compile cache (which it sets in os.environ) undone after the test."""
    from virnucpro.encoders import compiled

    monkeypatch.setenv(compiled.TORCH_CACHE_VARIABLE, str(tmp_path / "compile-cache"))
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def injected(message: str):
    """A stand-in for one of the script's steps that fails as a GPU might."""
    def fail(*_args, **_kwargs):
        raise RuntimeError(message)
    return fail


def test_a_failed_section_is_recorded_and_the_next_ones_still_run(gpu_check, monkeypatch, tmp_path, capsys):
    """The ceilings, every encoder x path, embed and precision fail: each is in the JSON, the
    sections after each still run, the summary prints, tracebacks go to stderr, the exit status is 1."""
    monkeypatch.setattr(gpu_check, "gemm_ceilings", injected("CUDA error: injected in the ceilings"))
    monkeypatch.setattr(gpu_check, "bench_path", injected("out of memory: injected in a path"))
    monkeypatch.setattr(gpu_check, "embed_section", injected("injected in embed"))
    monkeypatch.setattr(gpu_check, "precision_section", injected("out of memory: injected in precision"))
    figures = tmp_path / "figures.json"
    assert gpu_check.main(["--cpu-smoke", "--json", str(figures)]) == 1
    out, err = capsys.readouterr()
    found = strict_json(figures)
    paths = [f"encoders dnabert_s {path}" for path in ("reference", "reference+compiled", "fast", "fast+compiled")]
    paths += [f"encoders esm2 {path}" for path in ("reference", "fast", "fast+compiled")]  # no compiled reference
    assert [f["section"] for f in found["failed"]] == ["ceilings", *paths, "embed", "precision", "autotune"]
    assert {f["error"] for f in found["failed"]} == {"RuntimeError"}
    assert found["failed"][-2]["message"] == "out of memory: injected in precision"
    assert "device" in found and found["results"] == [] and "embed" not in found and "precision" not in found
    for section in ("encoders", "kernels", "embed", "precision", "autotune", "summary"):
        assert f"\n== {section} " in out, section
    summary = out.split("\n== summary", 1)[1]
    assert "FAILED ceilings: RuntimeError: CUDA error: injected in the ceilings" in summary
    assert "FAILED encoders esm2 fast+compiled" in summary and "FAILED precision" in summary
    assert "MFU and 'of GEMM' n/a" in summary
    assert "FAILED autotune: RuntimeError: out of memory: injected in a path" in summary
    assert err.count("Traceback") == 11 and "injected in precision" in err and "Traceback" not in out


def test_a_path_that_does_not_run_as_asked_fails_the_smoke_run(gpu_check, monkeypatch, tmp_path, capsys):
    """A review's case: with every compiled graph broken, the compiled rows read 'ran fast' and the
    smoke run exited 0; on the CPU every path can run as asked, so one that does not is a failure."""
    from virnucpro.encoders import compiled

    def broken(function):
        def run(*args, **kwargs):
            raise RuntimeError("injected: the compiled graph is broken")
        return run

    monkeypatch.setattr(compiled, "fused", broken)
    for section in ("gemm_ceilings", "embed_section", "precision_section", "autotune_section"):  # only paths matter
        monkeypatch.setattr(gpu_check, section, injected(f"skipped: {section}"))
    figures = tmp_path / "figures.json"
    assert gpu_check.main(["--cpu-smoke", "--json", str(figures)]) == 1
    failed = {f["section"]: f for f in strict_json(figures)["failed"]}
    for role in ("dnabert_s", "esm2"):
        assert failed[f"encoders {role} fast+compiled"]["error"] == "PathNotRun", failed
    assert "encoders esm2 fast" not in failed and "encoders esm2 reference" not in failed, failed
    assert "requested fast+compiled" in capsys.readouterr().out


def test_a_kill_keeps_every_finished_section(gpu_check, monkeypatch, tmp_path):
    """The JSON is rewritten after every section: stopped in precision, the earlier ones are on disk."""
    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt  # what a kill leaves: nothing after this line runs
    monkeypatch.setattr(gpu_check, "precision_section", killed)
    figures = tmp_path / "figures.json"
    with pytest.raises(KeyboardInterrupt):
        gpu_check.main(["--cpu-smoke", "--time-guard", "0", "--json", str(figures)])
    found = strict_json(figures)
    assert set(found["gemm_tflops"]) == {"qkv", "attn_out", "fc1", "fc2"} and found["copy_gb_s"] > 0
    assert "embed" in found and "precision" not in found and found["failed"] == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "compile-cache") == ["figures.json"]


def test_the_hard_limit_ends_a_step_that_runs_on(gpu_check, monkeypatch, tmp_path, capsys):
    """A step still running at --hard-limit is stopped; the rest is skipped, the summary printed."""
    monkeypatch.setattr(gpu_check, "describe_device", lambda device: time.sleep(120))
    figures = tmp_path / "figures.json"
    assert gpu_check.main(["--cpu-smoke", "--hard-limit", "1", "--json", str(figures)]) == 1
    out, _ = capsys.readouterr()
    found = strict_json(figures)
    assert [(f["section"], f["error"]) for f in found["failed"]] == [("device", "OutOfTime")]
    not_run = [s["step"] for s in found["skipped"]]
    assert not_run[:2] == ["ceilings", "dnabert_s reference"] and "esm2 fast+compiled" in not_run, not_run
    assert not_run[-2:] == ["precision esm2 fast+compiled bf16", "esm2 fast+autotuned"] and "embed" in not_run, not_run
    assert {s["reason"] for s in found["skipped"]} == {"--hard-limit reached"}
    assert "\n== summary" in out and "\n== ceilings" not in out


def test_the_hard_limit_names_the_step_it_stopped_and_every_step_not_run(gpu_check, monkeypatch, tmp_path, capsys):
    """The alarm fires as DNABERT-S's compiled reference path starts (before anything compiles: a
    compile cache of this process's run, removed with it, would fail a later test's compile): the
    JSON and the summary name that step, and every later one (the other paths, ESM-2's, embed, each
    precision load) as not run for the hard limit, not for the time guard."""
    real = gpu_check.bench_path

    def alarm_in_the_compiled_reference_path(role, load, path, *args):
        if path == "reference+compiled":
            os.kill(os.getpid(), signal.SIGALRM)  # what the --hard-limit timer sends
            time.sleep(60)
        return real(role, load, path, *args)

    monkeypatch.setattr(gpu_check, "bench_path", alarm_in_the_compiled_reference_path)
    figures = tmp_path / "figures.json"
    assert gpu_check.main(["--cpu-smoke", "--json", str(figures)]) == 1
    out, _ = capsys.readouterr()
    found = strict_json(figures)
    assert [(f["section"], f["step"], f["error"]) for f in found["failed"]] == \
        [("encoders", "dnabert_s reference+compiled", "OutOfTime")]
    assert [r["requested"] for r in found["results"]] == ["reference"]
    not_run = [s["step"] for s in found["skipped"]]
    assert not_run[:5] == ["dnabert_s fast", "dnabert_s fast+compiled", "esm2 reference", "esm2 fast",
                           "esm2 fast+compiled"]
    assert not_run[5:8] == ["kernels", "embed", "precision dnabert_s reference fp32"], not_run
    assert {s["reason"] for s in found["skipped"]} == {"--hard-limit reached"}
    summary = out.split("\n== summary", 1)[1]
    assert "FAILED encoders (dnabert_s reference+compiled): OutOfTime" in summary
    assert "not run (--hard-limit reached): dnabert_s fast, dnabert_s fast+compiled, esm2 reference" in summary
    assert "time guard" not in summary


def test_a_json_that_cannot_be_replaced_leaves_no_partial_file(gpu_check, tmp_path):
    """`--json` naming a folder: one clear message, and no `.NAME.partial` left beside it."""
    (tmp_path / "figures").mkdir()
    with pytest.raises(SystemExit, match="cannot write --json"):
        gpu_check.main(["--cpu-smoke", "--json", str(tmp_path / "figures")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures"]


def _stopped_by_sigterm(tmp_path: Path, ready, timeout: float, never: str):
    """`gpu_check.py --cpu-smoke` in a process of its own (its TMPDIR a new folder), sent SIGTERM once
    `ready(pid, json_path)`: (exit status, stdout, stderr, that TMPDIR, the JSON path)."""
    shared, figures = tmp_path / "shared-temp", tmp_path / "figures.json"
    shared.mkdir()
    run = subprocess.Popen([sys.executable, str(SCRIPT), "--cpu-smoke", "--json", str(figures)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "TMPDIR": str(shared)})
    try:
        deadline = time.monotonic() + timeout
        while not ready(run.pid, figures):
            assert time.monotonic() < deadline and run.poll() is None, never
            time.sleep(0.02)
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=120)
    finally:
        run.kill()
    return run.returncode, out, err, shared, figures


def test_sigterm_removes_the_temporary_folder_and_keeps_the_figures(tmp_path, gpu_check):
    """A job's `timeout` or a scheduler sends SIGTERM: the run stops like an interrupt, its temporary
    folder (random models, compile cache) is removed, the JSON keeps what was measured, and every
    step after the one stopped is named as not run; 128 + 15. (On a loaded machine the signal may
    land as late as the last step, which leaves none to name; or between two sections, where the
    later sections' steps went unnamed: the flake seen twice.)"""
    into_the_encoders = lambda _pid, figures: figures.is_file() and "gemm_tflops" in figures.read_text()  # noqa: E731
    returncode, out, err, shared, figures = _stopped_by_sigterm(tmp_path, into_the_encoders, 300,
                                                                "the ceilings never finished")
    assert returncode == 128 + signal.SIGTERM, err[-3000:]
    assert list(shared.iterdir()) == []  # no gpu_check_* folder, nothing of torch's
    found = strict_json(figures)
    stopped = found["failed"][-1]
    assert found["copy_gb_s"] > 0 and stopped["error"] == "Stopped", found["failed"]
    names = [name for name, _work in gpu_check.sections()]
    if stopped["section"] == "between sections":  # the next section not started: all of it not run
        last = [name for name in re.findall(r"^== (\S+) \(at ", out, re.M) if name in names][-1]
        expected = [step for name in names[names.index(last) + 1:] for step in gpu_check.steps_of(name)]
    else:
        later = [step for name in names[names.index(stopped["section"]) + 1:] for step in gpu_check.steps_of(name)]
        expected = gpu_check.steps_after(stopped["section"], stopped["step"]) + later
    assert [s["step"] for s in found["skipped"]] == expected, (stopped, found["skipped"])
    assert {s["reason"] for s in found["skipped"]} <= {"SIGTERM received"}, found["skipped"]
    assert "\n== summary" in out and "Traceback" not in err, err[-3000:]


def _blocks_sigterm(pid: int) -> bool:
    """Whether process `pid`'s main thread holds SIGTERM back (the SigBlk mask of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def test_sigterm_while_torch_loads_stops_the_run_with_128_plus_15(tmp_path):
    """A SIGTERM that lands during the imports (before the handlers exist) is held back, then stops
    the run like any other: 128 + 15, every step named as not run, no temporary folder left."""
    torch_loading = lambda pid, _figures: _blocks_sigterm(pid)  # noqa: E731 (the script's first lines ran)
    returncode, out, err, shared, figures = _stopped_by_sigterm(tmp_path, torch_loading, 60, "SIGTERM never held back")
    assert returncode == 128 + signal.SIGTERM, err[-3000:]
    assert list(shared.iterdir()) == []
    found = strict_json(figures)
    assert found["skipped"] and {s["reason"] for s in found["skipped"]} == {"SIGTERM received"}
    assert "\n== summary" in out and "Traceback" not in err, err[-3000:]


class FailsLater:
    """Esm2Encoder._run failing on one path once `succeed` batches after the load ran on it: the
    encoder falls back (encoders.forward_on_path) in the middle of what is measured."""

    def __init__(self, monkeypatch, esm2):
        self.calls, self.succeed, self.armed, self.real = 0, 0, None, esm2.Esm2Encoder._run
        monkeypatch.setattr(esm2.Esm2Encoder, "_run", lambda encoder, collated, path: self.run(encoder, collated, path))

    def run(self, encoder, collated, path):
        if path == self.armed:
            self.calls += 1
            if self.calls > self.succeed:
                raise RuntimeError("injected: the compiled kernel refuses this shape")
        return self.real(encoder, collated, path)

    def loader(self, load, failing: str, succeed: int):
        """`load`, the fault on path `failing` armed once the encoder is loaded (its self-check passed)."""
        def armed(device, dtype, path):
            self.armed, self.calls, self.succeed = None, 0, succeed
            encoder = load(device, dtype, path)
            self.armed = failing
            return encoder
        return armed


def test_a_fallback_while_measuring_is_never_credited_to_the_compiled_path(gpu_check, monkeypatch, capsys):
    """The compiled path fails mid-measurement: the row, the kernels label, the summary and the
    JSON name the path that ran at the end and flag the row as mixed; precision rows likewise
    (there the fast path fails, so that no second compile makes the test slower)."""
    import torch

    from virnucpro.encoders import esm2

    fault = FailsLater(monkeypatch, esm2)
    plan, cpu = gpu_check.SMOKE, torch.device("cpu")
    load, checked = gpu_check.loaders(None, gpu_check.esm_checkpoint(plan.esm, cpu, seed=6))["esm2"]
    guard, budget = gpu_check.Guard(600), gpu_check.embed_mod.DEFAULT_TOKEN_BUDGET["cpu"]
    failed = []
    results = gpu_check.bench_encoder("esm2", fault.loader(load, "fast+compiled", succeed=1), ("fast+compiled",),
                                      plan, cpu, guard, budget, keep=lambda result: None,
                                      failed=lambda section, exc: failed.append((section, type(exc).__name__)))
    assert failed == [("encoders esm2 fast+compiled", "PathNotRun")]  # the smoke run fails on it; a GPU's reads it
    gpu_check.print_kernels(results)
    def without_compile(device, dtype, path):
        """A loader taking `path` but not `compile`: precision compares reference and fast (no compile)."""
    precision = gpu_check.precision_section({"esm2": (fault.loader(load, "fast", succeed=0), without_compile)},
                                            plan, cpu, budget, guard)
    report = gpu_check.Report(None, guard)
    report.figures.update({"results": results, "precision": precision})
    gpu_check.print_summary(report)
    out = capsys.readouterr().out
    row = gpu_check.jsonable(results)[0]
    assert (row["requested"], row["loaded"], row["ran"], row["fell_back_during_measurement"]) == \
        ("fast+compiled", "fast+compiled", "fast", True)
    assert "esm2 fast+compiled (ran fast*)" in out  # the kernels label
    summary = out.split("\n== summary", 1)[1]
    assert f"esm2      {'fast+compiled':19s} fast* " in summary and "fast+compiled fast+compiled" not in summary
    assert "* fell back during the measurement" in summary
    fast_rows = [r for r in precision["rows"] if r["path"] == "fast"]
    assert len(fast_rows) == 2 and all(r["ran"] == "reference" and r["fell_back_during_measurement"]
                                       for r in fast_rows)
    assert f"precision esm2      {'fast':19s} fp16 (ran reference*)" in summary
    assert all(r["ran"] == "reference" for r in precision["rows"] if r["path"] == "reference")


def test_a_stop_between_two_sections_names_every_later_step_as_not_run(gpu_check, monkeypatch, capsys):
    """A signal landing after a section's work (in its clean-up) stopped the run with the later
    sections' steps unnamed in `skipped` (the SIGTERM test's flake). Here it lands in `free` after
    the first section."""
    import torch

    guard = gpu_check.Guard(600)
    run = gpu_check.Run(gpu_check.SMOKE, None, torch.device("cpu"), Path("."), guard,
                        gpu_check.Report(None, guard), 0)
    names = [name for name, _work in gpu_check.sections()]
    monkeypatch.setattr(gpu_check, "sections", lambda: [(name, lambda _run: {}) for name in names])

    def stopped_in_free(_device):
        guard.stop("SIGTERM received")
        raise gpu_check.Interrupted("SIGTERM received")

    monkeypatch.setattr(gpu_check, "free", stopped_in_free)
    gpu_check.run_sections(run)
    assert run.report.failed[-1]["section"] == "between sections"
    expected = [step for name in names[1:] for step in gpu_check.steps_of(name)]
    assert [s["step"] for s in guard.skipped] == expected and len(expected) > 5
    assert {s["reason"] for s in guard.skipped} == {"SIGTERM received"}


@pytest.mark.parametrize("smoke", [True, False])
def test_an_encoder_falling_back_during_embed_is_never_credited_to_the_path_it_loaded(gpu_check, monkeypatch,
                                                                                        tmp_path, capsys, smoke):
    """A review's case: embed()'s figure named the paths read before it ran, so an ESM-2 whose fast
    batches all failed (and ran on the reference path) was credited to `fast`. Now the paths that
    ran are starred and flagged; the smoke run fails on it."""
    import dataclasses

    import torch

    from virnucpro.encoders.esm2 import Esm2Encoder

    real_run, widths = Esm2Encoder._run, gpu_check.embed_mod.embedding_widths

    def refusing_fast(self, collated, path):
        if path == "fast":
            raise RuntimeError("injected: the fast kernel refuses this batch's shape")
        return real_run(self, collated, path)

    def loaded_on_fast(model_set, device, precision, *args, **kwargs):
        out = widths(model_set, device, precision, *args, **kwargs)
        gpu_check.embed_mod._load_encoders(model_set, device, precision)["esm2"].path = "fast"  # as a GPU settles
        return out

    monkeypatch.setattr(Esm2Encoder, "_run", refusing_fast)
    monkeypatch.setattr(gpu_check.embed_mod, "embedding_widths", loaded_on_fast)
    monkeypatch.setattr(gpu_check, "task_load", lambda *_args: {"skipped": "not this test's"})
    plan, cpu = dataclasses.replace(gpu_check.SMOKE, smoke=smoke), torch.device("cpu")
    dnabert = gpu_check.dnabert_folder(tmp_path / "models" / "DNABERT-S", plan.dnabert, cpu, seed=5)
    esm_data = gpu_check.esm_checkpoint(plan.esm, cpu, seed=6)
    if smoke:
        with pytest.raises(gpu_check.PathNotRun, match="ran .*'esm2': 'reference'"):
            gpu_check.embed_section(plan, tmp_path, dnabert, esm_data, cpu)
        return
    result = gpu_check.embed_section(plan, tmp_path, dnabert, esm_data, cpu)
    assert (result["loaded_paths"]["esm2"], result["paths"]["esm2"], result["fell_back_during_measurement"]) == \
        ("fast", "reference", True)
    report = gpu_check.Report(None, gpu_check.Guard(600))
    report.figures["embed"] = result
    gpu_check.print_summary(report)
    summary = capsys.readouterr().out.split("\n== summary", 1)[1]
    assert "'esm2': 'reference*'" in summary, summary


def test_a_paths_figures_are_its_steady_pass_over_every_real_token(gpu_check, monkeypatch):
    """On a scripted clock: an encoder whose first pass costs 1 s more (its compile) and then 1 ms
    per token gives steady 1 ms per token = 1,000 tokens/s, whatever the batches; the TFLOP come
    from every token. Kills doubled token counts and a steady time taken from the first pass."""
    import numpy as np
    import torch

    clock = type("Clock", (), {"now": 0.0, "perf_counter": lambda self: self.now})()

    class Encoder:
        compiled = False

        def collate(self, tokens):
            return [len(t) for t in tokens]

        def forward(self, lengths):
            clock.now += 1e-3 * sum(lengths) + (0.0 if Encoder.compiled else 1.0)
            Encoder.compiled = True

    monkeypatch.setattr(gpu_check, "time", clock)
    tokens = [np.ones(n, dtype=np.int64) for n in (7, 30, 12, 55, 3)]
    result = gpu_check.PathResult("esm2", "fast")
    gpu_check.measure_path(result, Encoder(), tokens, 64, torch.device("cpu"), lambda length: 1e9 * length)
    assert (result.tokens, round(result.first_pass_s, 6), round(result.steady_s, 6)) == (107, 1.107, 0.107)
    assert round(result.tokens_per_s) == 1000 and round(result.tflops, 9) == round(1e9 * 107 / 1e12 / 0.107, 9)
