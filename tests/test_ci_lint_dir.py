""".ci/lint.sh from a clone whose path holds a blank: nf-core runs `nextflow config` with the path
unquoted, so lint reads a copy of the repository's files made by `lint_dir` (the function itself, run
by bash on a real git repository): tracked and untracked files, not ignored ones, not deleted ones."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

LINT = Path(__file__).resolve().parents[1] / ".ci" / "lint.sh"


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, timeout=60)


def _lint_dir(repo: Path, work: Path) -> subprocess.CompletedProcess:
    """`lint_dir` of .ci/lint.sh, as lint.sh runs it (errexit, pipefail), for REPO and WORK."""
    function = "/^lint_dir() [{]/,/^[}]/p"  # the function's lines, from its name to its closing brace
    script = f'set -euo pipefail\neval "$(sed -n "{function}" {LINT})"\nlint_dir\n'
    return subprocess.run(["bash", "-c", script], env={"REPO": str(repo), "WORK": str(work), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git repository under a path with a blank: tracked, deleted, untracked and ignored files."""
    repo = tmp_path / "a b" / "repo"
    (repo / "modules").mkdir(parents=True)
    (repo / ".gitignore").write_text(".venv/\n")
    (repo / "main.nf").write_text("workflow {}\n")
    (repo / "modules" / "gone.nf").write_text("deleted after the commit\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x")
    (repo / "modules" / "gone.nf").unlink()
    (repo / "modules" / "new.nf").write_text("not committed yet\n")
    (repo / ".venv").mkdir()
    (repo / ".venv" / "big").write_text("ignored")
    return repo


def test_a_path_with_a_blank_is_linted_as_a_copy_of_the_repositorys_files(tmp_path, repo):
    (tmp_path / "work").mkdir()
    done = _lint_dir(repo, tmp_path / "work")
    assert done.returncode == 0, done.stderr
    copy = Path(done.stdout.strip())
    assert copy == tmp_path / "work" / "pipeline"
    found = sorted(path.relative_to(copy).as_posix() for path in copy.rglob("*") if path.is_file())
    assert found == [".gitignore", "main.nf", "modules/new.nf"]


def test_a_path_without_a_blank_is_linted_where_it_is(tmp_path):
    (tmp_path / "work").mkdir()
    done = _lint_dir(tmp_path, tmp_path / "work")
    assert done.returncode == 0 and done.stdout.strip() == str(tmp_path), done.stderr
    assert list((tmp_path / "work").iterdir()) == []
