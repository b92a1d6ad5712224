"""benchmarks/gpu_check.py: its CPU smoke run covers every section, without fair-esm or biopython."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
SECTIONS = ("device", "ceilings", "encoders", "kernels", "precision", "embed", "summary")
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
    done = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--json", str(figures)],
                          capture_output=True, text=True, env=env, timeout=600)
    return done, figures


def test_cpu_smoke_exits_0_and_prints_every_section(smoke):
    done, figures = smoke
    assert done.returncode == 0, done.stderr[-3000:]
    for section in SECTIONS:
        assert f"\n== {section} " in done.stdout, section
    for role in ("dnabert_s", "esm2"):
        assert f"  {role:9s} reference " in done.stdout
        assert f"  {role:9s} fast+compiled ran fast+compiled load " in done.stdout  # compiled on the CPU too
    assert "records/s" in done.stdout and "min cosine" in done.stdout and "SKIPPED" not in done.stdout
    assert figures.is_file()


def test_runs_without_fair_esm_or_biopython(smoke):
    done, _ = smoke
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
    done, _ = smoke
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
