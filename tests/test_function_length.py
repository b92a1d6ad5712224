"""No long functions anywhere in the package (about 40 lines at most).

The few that were longer before this rule covered the whole package are listed with their length
then: they may shrink, never grow, and no new one may join them.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "virnucpro"
LIMIT = 40
OLDER = {"classifier.py:pickle_globals": 44, "classifier.py:load_classifier": 55,
         "encoders/batching.py:pack": 61, "predict.py:predict": 46, "prepare.py:six_frame_orfs": 54,
         "prepare.py:prepare_group": 42}


def function_lengths() -> dict[str, int]:
    """'file:function' -> lines, for every function and method of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{path.relative_to(PACKAGE).as_posix()}:{node.name}"
                found[name] = max(found.get(name, 0), node.end_lineno - node.lineno + 1)
    return found


def test_functions_are_short_everywhere():
    lengths = function_lengths()
    too_long = {name: n for name, n in lengths.items() if n > OLDER.get(name, LIMIT)}
    assert not too_long, f"functions over {LIMIT} lines (or longer than they were): {too_long}"


def test_the_older_long_functions_still_exist():
    """A listed function that was split or renamed leaves the list (so the list cannot hide a new one)."""
    lengths = function_lengths()
    assert {name for name in OLDER if lengths.get(name, 0) > LIMIT} == set(OLDER)
