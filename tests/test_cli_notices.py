"""What the CLI says when it replaces earlier results, when it is stopped, and in its hints: each line
true to the situation (a reviewer's cases).

- an embedding file or a run's finished results replaced are said to be replaced, and why;
- a stop with nothing to resume from (prepare, predict, `run` during its prepare step) says the rerun
  starts again, not that it resumes from checkpoints; a stop that keeps checkpoints still says it resumes;
- run's warning about empty records does not promise a table a failed run never writes;
- predict on embeddings of tiny test models hints at those tiny models, however --models was given.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from test_error_paths_outdir import coding_reads, stopped_at, virnucpro
from test_pythonpath_and_offline_hints import unreachable_sources  # noqa: F401 (a fixture)
from virnucpro import errors
from virnucpro.errors import ExitCode, InterruptedByUser, StoppedWithNothingKept

RESUMES = "rerun the same command to resume"
STARTS_AGAIN = "rerun the same command to start again"


def prepared(tmp_path: Path, name: str, reads: int) -> Path:
    """A prepare folder of `reads` coding reads."""
    folder = tmp_path / name
    done = virnucpro("prepare", coding_reads(tmp_path / f"{name}.fa", reads), "--outdir", folder)
    assert done.returncode == 0, done.stderr
    return folder


# --- L1: replacing is said --------------------------------------------------------------------------

def test_embed_says_it_replaces_an_embedding_of_another_shard(tmp_path, tiny_models):
    out = tmp_path / "e.h5"
    common = ["--out", out, "--models", tiny_models, "--device", "cpu", "--threads", "1"]
    first = virnucpro("embed", prepared(tmp_path, "a", 3) / "shards" / "shard_00000.tsv", *common)
    assert first.returncode == 0 and "replacing" not in first.stderr, first.stderr
    second = virnucpro("embed", prepared(tmp_path, "b", 2) / "shards" / "shard_00000.tsv", *common)
    assert second.returncode == 0, second.stderr
    assert f"replacing {out} (an embedding of another shard: shard sha256" in second.stderr, second.stderr


def test_embed_keeping_its_own_shard_says_kept_not_replacing(tmp_path, tiny_models):
    shard = prepared(tmp_path, "a", 2) / "shards" / "shard_00000.tsv"
    common = ["--out", tmp_path / "e.h5", "--models", tiny_models, "--device", "cpu", "--threads", "1"]
    assert virnucpro("embed", shard, *common).returncode == 0
    again = virnucpro("embed", shard, *common)
    assert again.returncode == 0 and "already holds" in again.stderr and "replacing" not in again.stderr, again.stderr


def test_run_says_once_it_replaces_an_earlier_runs_results_and_why(tmp_path, tiny_models):
    out = tmp_path / "out"
    common = ["--models", tiny_models, "--device", "cpu", "--threads", "1", "--outdir", out]
    first = virnucpro("run", coding_reads(tmp_path / "one.fa", 3), *common)
    assert first.returncode == 0 and "replacing" not in first.stderr, first.stderr
    second = virnucpro("run", coding_reads(tmp_path / "two.fa", 2), *common, "--threshold", "0.7")
    assert second.returncode == 0, second.stderr
    line = f"replacing the earlier run's results in {out} when this run succeeds (inputs or options differ: " \
           "other inputs; threshold 0.5, not 0.7)"
    assert second.stderr.count("replacing") == 1 and line in second.stderr, second.stderr
    assert "two.fa" in (out / "run_info.json").read_text()
    # a reviewer's case: the same inputs with other models were said to be "same inputs and options"
    third = virnucpro("run", tmp_path / "two.fa", *common, "--threshold", "0.7")
    assert third.returncode == 0 and ("(same inputs, chunk size and threshold: computed again, with this run's "
                                      "models and settings)") in third.stderr, third.stderr


# --- L2: the stop's message is true to what is kept -------------------------------------------------

def test_a_stopped_prepare_says_the_rerun_starts_again(tmp_path):
    out = tmp_path / "p"
    done = stopped_at("open", r"virnucpro-partial/chunks\.tsv$", "prepare", coding_reads(tmp_path / "r.fa", 3),
                      "--outdir", out)
    assert done.returncode == ExitCode.INTERRUPTED, done.stderr
    assert "nothing to resume from" in done.stderr and STARTS_AGAIN in done.stderr, done.stderr
    assert "checkpoints kept" not in done.stderr and RESUMES not in done.stderr, done.stderr
    assert not out.exists()


def test_run_stopped_in_its_prepare_step_says_the_rerun_starts_again(tmp_path, tiny_models):
    out = tmp_path / "out"
    done = stopped_at("open", r"virnucpro-partial/chunks\.tsv$", "run", coding_reads(tmp_path / "r.fa", 3),
                      "--models", tiny_models, "--device", "cpu", "--threads", "1", "--outdir", out)
    assert done.returncode == ExitCode.INTERRUPTED, done.stderr
    assert "nothing to resume from" in done.stderr and STARTS_AGAIN in done.stderr, done.stderr
    assert "checkpoints kept" not in done.stderr and not (out / ".virnucpro-work").exists()


def test_run_stopped_while_embedding_still_says_it_resumes(tmp_path, tiny_models):
    out = tmp_path / "out"
    done = stopped_at("open", r"\.virnucpro-work/embeddings/", "run", coding_reads(tmp_path / "r.fa", 3),
                      "--models", tiny_models, "--device", "cpu", "--threads", "1", "--outdir", out)
    assert done.returncode == ExitCode.INTERRUPTED, done.stderr
    assert RESUMES in done.stderr and "nothing to resume from" not in done.stderr, done.stderr


def embedded(tmp_path: Path, models: Path) -> tuple[Path, Path]:
    """A prepare folder of 3 coding reads and its one embedding file."""
    folder = prepared(tmp_path, "p", 3)
    h5 = tmp_path / "e.h5"
    done = virnucpro("embed", folder / "shards" / "shard_00000.tsv", "--out", h5, "--models", models,
                     "--device", "cpu", "--threads", "1")
    assert done.returncode == 0, done.stderr
    return folder, h5


def test_a_stopped_predict_says_the_rerun_starts_again_and_keeps_the_earlier_outputs(tmp_path, tiny_models):
    folder, h5 = embedded(tmp_path, tiny_models)
    out = tmp_path / "pr"
    args = ["predict", "--prepared", folder, "--embeddings", h5, "--outdir", out, "--models", tiny_models]
    assert virnucpro(*args).returncode == 0
    before = (out / "prediction_results.txt").read_bytes()
    done = stopped_at("open", r"\.predict\.partial/prediction_results\.txt$", *args)
    assert done.returncode == ExitCode.INTERRUPTED, done.stderr
    assert "nothing to resume from" in done.stderr and STARTS_AGAIN in done.stderr, done.stderr
    assert "checkpoints kept" not in done.stderr and RESUMES not in done.stderr, done.stderr
    assert (out / "prediction_results.txt").read_bytes() == before


def test_a_predict_stopped_before_its_own_work_starts_says_the_rerun_starts_again(tmp_path, tiny_models):
    """Found by mutation: a stop while predict sizes its threads, before its own block says what a stop
    keeps, must not promise checkpoints either (the command's whole run keeps nothing)."""
    folder, h5 = embedded(tmp_path, tiny_models)
    done = stopped_at("open", r"^/proc/self/cgroup$", "predict", "--prepared", folder, "--embeddings", h5,
                      "--outdir", tmp_path / "pr", "--models", tiny_models)
    assert done.returncode == ExitCode.INTERRUPTED, done.stderr
    assert "nothing to resume from" in done.stderr and RESUMES not in done.stderr, done.stderr
    assert not (tmp_path / "pr").exists()


def test_run_stopped_in_its_predict_step_still_says_it_resumes(tmp_path, tiny_models):
    out = tmp_path / "out"
    done = stopped_at("open", r"\.predict\.partial/prediction_results\.txt$", "run",
                      coding_reads(tmp_path / "r.fa", 3), "--models", tiny_models, "--device", "cpu",
                      "--threads", "1", "--outdir", out)
    assert done.returncode == ExitCode.INTERRUPTED, done.stderr
    assert RESUMES in done.stderr and "nothing to resume from" not in done.stderr, done.stderr


def test_the_stop_inside_a_block_keeping_nothing_is_the_start_again_kind():
    errors.outputs_in_place(None)  # an in-process command of another test may have left its record
    with errors.stop_keeps_nothing():
        inside = errors._interrupted(signal.SIGINT)
    outside = errors._interrupted(signal.SIGINT)
    assert isinstance(inside, StoppedWithNothingKept) and inside.hint == STARTS_AGAIN
    assert "SIGINT received: stopped (unfinished output removed; nothing to resume from)" == inside.message
    assert type(outside) is InterruptedByUser and outside.hint == RESUMES
    assert isinstance(errors.stop_received(keeping_nothing=True), StoppedWithNothingKept)
    assert type(errors.stop_received()) is InterruptedByUser


# --- L3: run's empty-record warning promises no table a failed run never writes ---------------------

def test_runs_empty_record_warning_promises_no_table_a_failed_run_never_writes(tmp_path, unreachable_sources,
                                                                                 run_cli):
    """The models must be downloaded, so the inputs are prepared first (the warning), then the
    download fails (exit 4) and the run's folder goes: the warning named a table that never came."""
    reads = tmp_path / "r.fa"
    reads.write_text(">empty\n>s1\n" + "ATGGCT" * 40 + "\n")
    out = tmp_path / "out"
    code, err = run_cli("run", reads, "--outdir", out, "--models", tmp_path / "m")
    assert code == ExitCode.MODELS and "cannot reach 127.0.0.1" in err, err
    assert f"(listed as 'empty' in {out / 'sequences.tsv'} when the run succeeds)" in err, err
    assert not out.exists()
    code, err = run_cli("prepare", reads, "--outdir", tmp_path / "p")  # prepare's own table is written at once
    assert code == 0 and f"(listed as 'empty' in {tmp_path / 'p' / 'sequences.tsv'})" in err, err


# --- L4: the hint for tiny embeddings, --models given or not -----------------------------------------

@pytest.mark.parametrize("given", ["missing", "published-like"])
def test_predict_on_tiny_embeddings_hints_at_the_tiny_models_whatever_models_folder_is_given(
        tmp_path, tiny_models, given):
    folder = prepared(tmp_path, "a", 2)
    h5 = tmp_path / "e.h5"
    assert virnucpro("embed", folder / "shards" / "shard_00000.tsv", "--out", h5, "--models", tiny_models,
                     "--device", "cpu", "--threads", "1").returncode == 0
    models = tmp_path / "nonexistent"
    if given != "missing":
        models.mkdir()  # a folder that is no tiny models' folder
    done = virnucpro("predict", "--prepared", folder, "--embeddings", h5, "--models", models,
                     "--outdir", tmp_path / "o")
    assert done.returncode == ExitCode.MODELS, done.stderr
    assert "these embeddings were made with tiny test models" in done.stderr, done.stderr
    assert "give the folder of those tiny models with --models DIR" in done.stderr, done.stderr
    assert "models download" not in done.stderr, done.stderr


def test_a_file_name_with_a_line_break_or_an_escape_is_quoted_escaped_in_messages(tmp_path, run_cli):
    """A review's case: input paths went into messages raw, so a name with a line break forged a
    `fix:` line and an ESC byte reached the terminal. Every message escapes what it quotes."""
    forged = tmp_path / "x\nfix: nothing wrong, exit 0.fa"
    forged.write_text(">a\nACGTEFQ\n")
    code, message = run_cli("prepare", forged, "--outdir", tmp_path / "o")
    assert code == ExitCode.BAD_INPUT and "x\\nfix: nothing wrong" in message, message
    assert [line for line in message.splitlines() if line.lstrip().startswith("fix:")] == \
        [line for line in message.splitlines() if line.startswith("  fix: ")] and message.count("fix:") == 2, message
    coloured = tmp_path / "esc\x1b[31mred.fa"
    coloured.write_text(">a\nACGT\n")
    code, message = run_cli("prepare", coloured, coloured, "--outdir", tmp_path / "o")
    assert code == ExitCode.BAD_INPUT and "\x1b" not in message and "esc\\x1b[31mred.fa" in message, message


# --- a stop that torch's first import swallowed ----------------------------------------------------

TORCH_IMPORT = r"^/proc/self/maps$"  # read by torch's first import inside an `except Exception: pass`


def test_a_stop_during_torchs_first_import_ends_embed_before_it_loads_the_models(tmp_path, tiny_models):
    """A review's case: a stop landing in `import torch` was swallowed by torch (only noted), so embed
    loaded every model (ESM-2 3B: tens of seconds, past a scheduler's grace period) before the exit 6
    (predict did its whole job). The commands check for it right after that import, and between loads."""
    folder = prepared(tmp_path, "p", 3)
    done = stopped_at("open", TORCH_IMPORT, "embed", folder / "shards" / "shard_00000.tsv", "--models", tiny_models,
                      "--out", tmp_path / "x.h5", "--device", "cpu")
    assert done.returncode == ExitCode.INTERRUPTED, done.stderr
    assert "models loaded" not in done.stderr and "loading DNABERT-S" not in done.stderr, done.stderr


UMASK_READ = r"^/proc/self/status$"  # read once, for the new lock file's mode, just after it is created


@pytest.mark.parametrize("command", ["prepare", "embed"])
def test_a_stop_while_the_lock_file_is_made_leaves_nothing_behind(tmp_path, tiny_models, command):
    """A review's case: a stop landing just after the lock file was created, before its removal on
    failure was arranged, left the lock file, and so the output folder prepare had made."""
    if command == "prepare":
        out = tmp_path / "p"
        done = stopped_at("open", UMASK_READ, "prepare", coding_reads(tmp_path / "r.fa", 3), "--outdir", out)
        left = [out]
    else:
        folder = prepared(tmp_path, "p", 3)
        done = stopped_at("open", UMASK_READ, "embed", folder / "shards" / "shard_00000.tsv",
                          "--models", tiny_models, "--out", tmp_path / "x.h5", "--device", "cpu")
        left = [tmp_path / ".x.h5.lock", tmp_path / "x.h5"]
    assert done.returncode == ExitCode.INTERRUPTED, done.stderr
    assert not any(path.exists() for path in left), [path for path in left if path.exists()]


@pytest.mark.parametrize("command", ["prepare", "models tiny"])
def test_a_stop_before_a_command_that_keeps_nothing_starts_its_work_says_start_again(tmp_path, command):
    """A review's case: a stop in the first moments of prepare (before its own block saying it keeps
    nothing) promised checkpoints and a resume."""
    module, args = (("virnucpro\\.prepare", ["prepare", coding_reads(tmp_path / "r.fa", 3), "--outdir", tmp_path / "p"])
                    if command == "prepare" else ("virnucpro\\.models\\.tiny", ["models", "tiny", tmp_path / "m"]))
    done = stopped_at("import", f"^{module}$", *args)
    assert done.returncode == ExitCode.INTERRUPTED, done.stderr
    assert STARTS_AGAIN in done.stderr and RESUMES not in done.stderr, done.stderr
