"""No long functions anywhere in the package, nor in the task scripts of bin/ (40 lines at most,
docstring included)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "virnucpro"
LIMIT = 40


def function_lengths() -> dict[str, int]:
    """'file:function' -> lines, for every function and method of the package and of bin/'s scripts."""
    found = {}
    for path in sorted([*PACKAGE.rglob("*.py"), *(REPO / "bin").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{path.relative_to(REPO).as_posix()}:{node.name}"
                found[name] = max(found.get(name, 0), node.end_lineno - node.lineno + 1)
    return found


def test_functions_are_short_everywhere():
    lengths = function_lengths()
    too_long = {name: n for name, n in lengths.items() if n > LIMIT}
    assert not too_long, f"functions over {LIMIT} lines: {too_long}"

