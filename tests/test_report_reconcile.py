"""The report's reconciliation refuses counts that do not add up (exit 5), whoever calls it: the last
guard between a tallying bug and a page whose cards do not sum to its input (found by mutation)."""

from __future__ import annotations

import pytest

from virnucpro.errors import ExitCode, InconsistentInputsError
from virnucpro.report import check_reconciles

COUNTS = {"chunks": 5, "chunks_without_orf": 1, "orfs": 12, "sequences": 4}
CALLS = {"virus": 1, "others": 1, "no_orf": 1, "empty": 1}


def test_counts_that_add_up_pass():
    check_reconciles(COUNTS, rows=12, n_chunks_scored=4, calls=CALLS)


@pytest.mark.parametrize("label, rows, scored, calls, expected, found", [
    ("chunks", 12, 3, CALLS, "5", "3 chunks with scored ORFs + 1 without ORF"),
    ("ORFs", 11, 4, CALLS, "12", "11 rows"),
    ("sequences", 12, 4, {**CALLS, "empty": 0}, "4", "3 sequences called"),
    ("sequences", 12, 4, {**CALLS, "virus": 2}, "4", "5 sequences called"),
])
def test_each_count_off_by_one_is_exit_5_naming_both_numbers(label, rows, scored, calls, expected, found):
    with pytest.raises(InconsistentInputsError) as refused:
        check_reconciles(COUNTS, rows=rows, n_chunks_scored=scored, calls=calls)
    said = str(refused.value)
    assert refused.value.code == ExitCode.INCONSISTENT
    assert f"the {label} do not reconcile: the prepared sample counts {expected}," in said and found in said, said
    assert "virnucpro run" in said and "please report it" in said, said  # advice a `run` user can follow too
