"""Publishing never replaces a file that appeared while the command ran (the folder was checked at
the start, hours before the results moved in): the check is made again at publish time, and a
name nothing held is taken with a rename that refuses an existing target."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from virnucpro import outdir as od
from virnucpro import prepared as fmt
from virnucpro.errors import BadInputError

NAMES = ("table.tsv", "parts", "done.json")  # the last one marks a complete set, as in the commands


def staged(folder: Path, text: str) -> Path:
    """A staging folder holding one complete set of outputs."""
    staging = folder / ".staging"
    (staging / "parts").mkdir(parents=True)
    (staging / "table.tsv").write_text(text)
    (staging / "parts" / "p0.tsv").write_text(text)
    (staging / "done.json").write_text(text)
    return staging


def publish_once(folder: Path, text: str, before_publish=None) -> None:
    with od.claim(folder, "prepare", NAMES) as output:
        staging = staged(folder, text)
        if before_publish:
            before_publish()
        output.publish(staging, NAMES)


@pytest.mark.parametrize("rel", ["table.tsv", "parts/p0.tsv", "done.json"])
def test_a_file_that_appears_during_the_first_run_is_not_replaced(tmp_path, rel):
    out = tmp_path / "out"
    with pytest.raises(BadInputError) as refused:
        publish_once(out, "ours\n", lambda: ((out / rel).parent.mkdir(exist_ok=True), (out / rel).write_text("MINE\n")))
    assert rel in str(refused.value) and refused.value.code == 3
    assert (out / rel).read_text() == "MINE\n"


def publish_with(out: Path, text: str, extra: str) -> None:
    """A publish of ours that also writes `extra` (which the next publish then drops as stale)."""
    with od.claim(out, "prepare", NAMES) as output:
        staging = staged(out, text)
        (staging / extra).write_text(text)
        output.publish(staging, NAMES)


@pytest.mark.parametrize("rel", ["table.tsv", "parts/p0.tsv", "parts/p1.tsv", "done.json"])
def test_our_earlier_file_replaced_by_someone_during_a_rerun_is_kept(tmp_path, rel):
    out = tmp_path / "out"
    publish_with(out, "first\n", "parts/p1.tsv")  # p1 is not made again: dropped unless someone's now
    with pytest.raises(BadInputError) as refused:
        publish_once(out, "second\n", lambda: (out / rel).write_text("someone else's, written meanwhile\n"))
    assert rel in str(refused.value)
    assert (out / rel).read_text() == "someone else's, written meanwhile\n"


def appearing_after_the_last_check(monkeypatch, path: Path, nth: int = 1) -> None:
    """A user's file written at `path` just after the `nth` of publish's checks of the folder (1: its
    first, before the record of the files about to move in is written; 2: the last, right before the
    first drop): only the checks of each file at its own rename or removal are left to find it."""
    check, seen = od.OutputFolder._refuse_unproven, []

    def checked_then_written(self, why, **kwargs):
        check(self, why, **kwargs)
        if "appeared" in why:  # publish's checks, not the claim's
            seen.append(why)
            if len(seen) == nth:
                path.parent.mkdir(exist_ok=True)
                path.write_text("MINE\n")

    monkeypatch.setattr(od.OutputFolder, "_refuse_unproven", checked_then_written)


@pytest.mark.parametrize("nth", [1, 2], ids=["after the first check", "after the last check"])
@pytest.mark.parametrize("rerun", [False, True], ids=["first run", "rerun"])
@pytest.mark.parametrize("rel", ["table.tsv", "parts/p0.tsv", "parts/p2.tsv", "done.json"])
def test_a_file_that_appears_after_the_last_check_is_still_not_replaced(tmp_path, monkeypatch, rel, rerun, nth):
    """Found by mutation: a plain replace (at a top-level name, or inside a folder merged file by
    file) overwrote such a file, exit 0; every test wrote its file before publish checked again."""
    out = tmp_path / "out"
    if rerun:
        publish_once(out, "first\n")
    appearing_after_the_last_check(monkeypatch, out / rel, nth)
    with pytest.raises(BadInputError) as refused:
        with od.claim(out, "prepare", NAMES) as output:
            staging = staged(out, "second\n")
            (staging / "parts" / "p2.tsv").write_text("second\n")
            output.publish(staging, NAMES)
    assert rel in str(refused.value) and refused.value.code == 3, refused.value
    assert (out / rel).read_text() == "MINE\n"
    if rerun and nth == 1:  # refused before anything was dropped: the earlier set is whole (a reviewer's case)
        earlier = {"table.tsv", "parts/p0.tsv", "done.json"} - {rel}
        assert {name: (out / name).read_text() for name in earlier} == dict.fromkeys(earlier, "first\n")


def test_a_rerun_still_replaces_its_own_files(tmp_path):
    out = tmp_path / "out"
    publish_once(out, "first\n")
    publish_once(out, "second\n")
    assert {(out / rel).read_text() for rel in ("table.tsv", "parts/p0.tsv", "done.json")} == {"second\n"}


@pytest.mark.parametrize("renameat2", [True, False])
def test_taking_a_new_name_never_replaces_what_holds_it(tmp_path, monkeypatch, renameat2):
    if not renameat2:
        monkeypatch.setattr(od, "_renameat2", None)
    source, target = tmp_path / "source", tmp_path / "target"
    source.write_text("ours")
    target.write_text("theirs")
    with pytest.raises(FileExistsError):
        od.rename_new(source, target)
    assert source.read_text() == "ours" and target.read_text() == "theirs"
    target.unlink()
    od.rename_new(source, target)
    assert target.read_text() == "ours" and not source.exists()


def test_a_folder_never_takes_the_place_of_an_empty_one(tmp_path):
    (tmp_path / "source").mkdir()
    (tmp_path / "target").mkdir()
    with pytest.raises(FileExistsError):
        od.rename_new(tmp_path / "source", tmp_path / "target")
    assert (tmp_path / "source").is_dir() and (tmp_path / "target").is_dir()


def test_prepare_refuses_a_table_written_into_its_folder_while_it_read_a_pipe(tmp_path):
    """The real command: the folder is checked when prepare starts, the file appears while prepare
    waits on its input, and prepare ends with exit 3 naming it instead of replacing it."""
    fifo, out = tmp_path / "reads.fifo", tmp_path / "out"
    os.mkfifo(fifo)
    process = subprocess.Popen([sys.executable, "-m", "virnucpro", "prepare", str(fifo), "--outdir", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with open(fifo, "w") as feed:  # opens once prepare has claimed the folder and opened its input
        assert (out / od.MARKER_NAME).exists()
        (out / fmt.SEQUENCES).write_text("MINE\n")
        feed.write(">r1\n" + "ACGT" * 100 + "\n")
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 3, err
    assert fmt.SEQUENCES in err and "Traceback" not in err
    assert (out / fmt.SEQUENCES).read_text() == "MINE\n"
