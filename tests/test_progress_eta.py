"""Embed's ETA follows each model's own pace (nucleotide letters are cheap, protein letters dear),
its progress still reaches the full count, and `run` never points at embeddings it deletes."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from rich.console import Console

from virnucpro import console
from virnucpro import prepared as fmt
from virnucpro.run import KEPT, WORK

CHEAP, DEAR = 1.0, 40.0  # seconds per letter: DNABERT-S and ESM-2 as the real models compare
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _cost(role: str) -> float:
    return CHEAP if role == "dnabert_s" else DEAR


def _batches(n_windows: int, nucleotides: int, residues: int, batch: int) -> list[tuple[str, int]]:
    """(role, letters) of each batch as embed runs them: per checkpoint window DNABERT-S, then ESM-2."""
    batches = []
    for _ in range(n_windows):
        for role, letters in (("dnabert_s", nucleotides), ("esm2", residues)):
            batches += [(role, min(batch, letters - start)) for start in range(0, letters, batch)]
    return batches


def test_after_the_cheap_phase_the_eta_never_underestimates_the_costly_work():
    """One window: 3,000 nucleotide letters at 1 s, then 1,000 residues at 40 s. Dividing all the
    letters left by the letters per second so far said 1,000 s after the cheap phase; 40,000 are left."""
    estimate = console.RemainingTime({"dnabert_s": 3000, "esm2": 1000}, start=0.0)
    now = 0.0
    for _ in range(30):
        now += 100 * CHEAP
        estimate.record("dnabert_s", 100, now)
    assert estimate.seconds() is None, "no pace measured for the protein letters: no number beats a wrong one"
    now += 100 * DEAR
    estimate.record("esm2", 100, now)
    assert estimate.seconds() == pytest.approx(900 * DEAR)


def test_the_eta_is_the_time_left_through_every_window():
    """Four windows, DNABERT-S then ESM-2 in each: once both paces are measured (the first ESM-2
    batch), the estimate is the time left, never dropping when a cheap phase ends."""
    batches = _batches(4, nucleotides=3000, residues=1000, batch=250)
    estimate = console.RemainingTime({"dnabert_s": 4 * 3000, "esm2": 4 * 1000}, start=0.0)
    now, shown = 0.0, []
    for done, (role, letters) in enumerate(batches, start=1):
        now += letters * _cost(role)
        estimate.record(role, letters, now)
        shown.append(estimate.seconds())
        if shown[-1] is not None:
            assert shown[-1] == pytest.approx(sum(n * _cost(r) for r, n in batches[done:]))
    assert shown.count(None) == 3000 // 250 and shown[-1] == 0


def test_a_role_with_nothing_left_needs_no_pace():
    """Resumed with every protein vector restored: the nucleotide pace alone gives the ETA."""
    estimate = console.RemainingTime({"dnabert_s": 1000, "esm2": 0}, start=5.0)
    estimate.record("dnabert_s", 250, 255.0)
    assert estimate.seconds() == pytest.approx(750.0)


def test_log_lines_keep_their_format_and_show_no_eta_before_every_role_is_measured(monkeypatch):
    clock = {"now": 0.0}
    monkeypatch.setattr(console.time, "monotonic", lambda: clock["now"])
    out = io.StringIO()
    monkeypatch.setattr(console, "err", Console(file=out, force_terminal=False, width=200, highlight=False,
                                                soft_wrap=True))
    progress = console.Progress("embed shard 1/1", total=60, every_seconds=0, eta_by=("letters", 4000),
                                eta_parts={"dnabert_s": 3000, "esm2": 1000})
    clock["now"] = 3000 * CHEAP
    progress.advance(0, part="dnabert_s", sequences=60, tokens=600, letters=3000)
    clock["now"] += 100 * DEAR
    progress.advance(0, part="esm2", sequences=6, tokens=106, letters=100)
    clock["now"] += 900 * DEAR
    progress.advance(0, part="esm2", sequences=54, tokens=954, letters=900)
    progress.advance(60)
    progress.close()
    lines = out.getvalue().splitlines()
    # no "0.0 records/s" while a window is computed (a review's case: it filled a terminal's line, and
    # the sequences/s that showed the work going on were cut)
    assert lines[0].startswith("virnucpro embed shard 1/1: 0/60 records, ETA ? (") and "records/s" not in lines[0]
    assert lines[0].split("(")[1].split(",")[0].endswith(" sequences/s"), lines[0]  # the first rate shown
    assert lines[1].startswith("virnucpro embed shard 1/1: 0/60 records, ETA 10:00:00 (") and "records/s" not in lines[1]
    assert lines[3].startswith("virnucpro embed shard 1/1: 60/60 records, ETA 0:00 (")
    assert lines[3].endswith("letters/s)") and "sequences/s" in lines[3] and "tokens/s" in lines[3]


def test_embed_splits_its_letters_by_role_and_counts_each_to_the_end(golden_prepared, tiny_models, tmp_path,
                                                                     recorded_progress):
    """The real embed: the ETA's letters are split into the nucleotide and the protein letters, and
    each is counted to zero (restored work would be no pace)."""
    from virnucpro import embed as embed_module

    made = recorded_progress(embed_module)
    shard = golden_prepared / "shards" / fmt.shard_name(0)
    embed_module.embed(shard, tmp_path / "e.h5", models=tiny_models, device="cpu", checkpoint_every=20)
    (progress,) = made
    records = list(fmt.read_shard(shard))
    parts = progress.eta_parts
    assert parts == {"dnabert_s": sum(len(s) for s in {r[1] for r in records}),
                     "esm2": sum(len(s) for s in {r[2] for r in records})}
    assert progress.eta_by == ("letters", parts["dnabert_s"] + parts["esm2"])
    assert progress.remaining.left == {"dnabert_s": 0, "esm2": 0} and progress.remaining.seconds() == 0


def _on_a_terminal(args: list[str], env: dict | None = None) -> tuple[int, str]:
    """Run `args` with stdin, stdout and stderr on a new pseudo-terminal; (exit code, all it wrote)."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(args, stdin=follower, stdout=follower, stderr=follower, env=env, close_fds=True)
    os.close(follower)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: every writer is gone
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    code = process.wait(timeout=600)
    reader.join(timeout=60)
    os.close(leader)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_a_real_embed_on_a_terminal_draws_its_bar_to_the_full_count(golden_prepared, tiny_models, tmp_path):
    shard = golden_prepared / "shards" / fmt.shard_name(0)
    n_records = len(list(fmt.read_shard(shard)))
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "200"}
    env.pop("FORCE_COLOR", None), env.pop("TTY_COMPATIBLE", None), env.pop("NO_COLOR", None)
    code, said = _on_a_terminal([sys.executable, "-m", "virnucpro", "embed", str(shard), "--out",
                                 str(tmp_path / "e.h5"), "--models", str(tiny_models), "--device", "cpu",
                                 "--checkpoint-every", "20"], env)
    assert code == 0, said
    frames = [ESCAPES.sub("", frame) for frame in re.split(r"[\r\n]", said)]
    counts = [m.groups() for f in frames if (m := re.search(r"([\d,]+)/([\d,]+) records, ETA (\S+)", f))]
    assert counts, said
    assert counts[-1] == (f"{n_records:,}", f"{n_records:,}", "0:00"), counts
    assert all(eta == "?" or re.fullmatch(r"\d+:\d\d(:\d\d)?", eta) for _, _, eta in counts), counts


def _embedded_lines(message: str) -> list[str]:
    joined = re.sub(r"\n(?!virnucpro |warning:|error:)", "", message)  # lines rich wrapped, put back together
    return [line for line in joined.splitlines() if "embedded " in line]


@pytest.mark.parametrize("keep", [False, True], ids=["embeddings-removed", "embeddings-kept"])
def test_run_names_no_embedding_path_it_deletes(keep, tmp_path, reference_dir, tiny_models, run_cli):
    """A reviewer's case: `run` said `embedded ... -> OUT/.virnucpro-work/embeddings/shard_00000.h5`,
    a folder gone when it exits 0."""
    out = tmp_path / "r"
    code, message = run_cli("run", reference_dir / "vanilla/test_with_orfs.fa", "--outdir", out, "--models",
                            tiny_models, "--device", "cpu", *(["--keep-embeddings"] if keep else []))
    assert code == 0 and not (out / WORK).exists(), message
    (line,) = _embedded_lines(message)
    assert WORK not in line and "shard_00000.tsv" in line, line
    named = re.findall(r"(/\S+\.h5)", line)
    if keep:
        assert named == [str(out / KEPT / "shard_00000.h5")] and Path(named[0]).is_file(), line
    else:
        assert not named and "removed" in line and "--keep-embeddings" in line, line
