"""--input and the run's folders on the real Nextflow engine: what a task would fail on late, or a
glob would drop without a word, stops the run at start-up with one message naming it.

Each launch stops at start-up (about 20 s): folders given as --input, links to nothing a glob
matches, a samplesheet given as a glob, a file whose name the glob reads otherwise, and work and
launch folders whose path a task's shell script would misread.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from engine import NEXTFLOW, REPO, TEST_INPUTS, require_engine, run_pipeline, task_env

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module", autouse=True)
def _engine():
    require_engine()


def assert_refused_at_start_up(run, *culprits: str) -> None:
    """Stopped before any task, with one message (no Nextflow error dump) naming each culprit."""
    assert run.returncode != 0, run.output
    for culprit in culprits:
        assert culprit in run.output, f"{culprit!r} not named:\n{run.output[-3000:]}"
    assert "Submitted process" not in run.output
    assert "Caused by" not in run.output and "Command exit status" not in run.output, run.output[-3000:]


def test_a_folder_given_as_input_is_refused_at_start_up(tmp_path):
    """`--input /data/g4/` passed start-up; PREPARE then failed on it (exit 3, `input is a directory`)."""
    (tmp_path / "g4").mkdir()
    shutil.copy(TEST_INPUTS / "sample_a.fasta", tmp_path / "g4" / "a.fa")
    run = run_pipeline(tmp_path / "launch", "-profile", "test", "--input", f"{tmp_path / 'g4'}/")
    assert_refused_at_start_up(run, f"--input: '{tmp_path / 'g4'}/' is a directory, not a file",
                               f"'{tmp_path / 'g4'}/*.fa'")


def test_links_to_nothing_a_glob_matches_are_named_not_dropped(tmp_path):
    """A reviewer's case: `--input 'links/*.fa'` with one link to a moved file ran the others and
    ended well, that sample missing without a word (the CLI refuses the same files)."""
    links = tmp_path / "links"
    links.mkdir()
    (links / "a.fa").symlink_to(TEST_INPUTS / "sample_a.fasta")
    (links / "b.fa").symlink_to(tmp_path / "moved.fa")
    run = run_pipeline(tmp_path / "launch", "-profile", "test", "--input", str(links / "*.fa"))
    assert_refused_at_start_up(run, f"'{links / 'b.fa'}' (matched by '{links / '*.fa'}') is a link to {tmp_path / 'moved.fa'}")
    # under --validate_params false the pipeline's own check says the same
    run = run_pipeline(tmp_path / "unvalidated", "-profile", "test", "--validate_params", "false",
                       "--input", str(links / "*.fa"))
    assert_refused_at_start_up(run, f"--input: '{links / 'b.fa'}' (matched by '{links / '*.fa'}') is a link to")


def test_a_samplesheet_given_as_a_glob_is_told_to_be_one_file(tmp_path):
    """`--input 'sheets/*.csv'` matched a sheet, and was answered 'Samplesheet ... not found'."""
    (tmp_path / "sheets").mkdir()
    (tmp_path / "sheets" / "a.csv").write_text(f"sample,file\na,{TEST_INPUTS / 'sample_a.fasta'}\n")
    run = run_pipeline(tmp_path / "launch", "-profile", "test", "--input", str(tmp_path / "sheets" / "*.csv"))
    assert_refused_at_start_up(run, "is a glob pattern: a samplesheet is one file")
    assert "not found" not in run.output


def test_a_file_whose_name_the_glob_reads_otherwise_is_told_to_be_renamed(tmp_path):
    """An existing `g[1].fa` was answered 'no file matches' (the glob reads it as g1.fa)."""
    shutil.copy(TEST_INPUTS / "sample_a.fasta", tmp_path / "g[1].fa")
    run = run_pipeline(tmp_path / "launch", "-profile", "test", "--input", str(tmp_path / "g[1].fa"))
    assert_refused_at_start_up(run, f"--input {tmp_path / 'g[1].fa'}: '['", "make a link to it")
    assert "no file matches" not in run.output


def test_work_and_launch_folders_a_task_script_would_misread_are_refused_at_start_up(tmp_path):
    """-work-dir 'w $HOME', or a launch folder holding `$` with the default work folder, failed
    every task late (`touch: cannot touch .../.command.begin`)."""
    run = run_pipeline(tmp_path / "launch", "-profile", "test", "-work-dir", "w $HOME")
    assert_refused_at_start_up(run, f"-work-dir (the work folder) {tmp_path / 'launch' / 'w $HOME'}: '$'")
    launch = tmp_path / "a$b"
    launch.mkdir()
    done = subprocess.run([str(NEXTFLOW), "run", str(REPO), "-ansi-log", "false", "-profile", "test", "--outdir", "results"],
                          cwd=launch, env=task_env(), capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    # the test profile downloads no models, so --models_store is not among the paths resolved from it
    assert f"the launch folder {launch}: '$' (--outdir results and the default work folder (work) are resolved from it" in output, output[-3000:]
    assert "launch from another folder" in output and "Submitted process" not in output, output[-3000:]
