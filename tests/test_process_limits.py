"""Limits of the process (threads and processes, open files, file size) and locales that cannot
encode every character: one message naming the limit and its fix, an exit code of CONTRACTS.md's
table, no traceback; never a bug report, nor a hint to redo sound work."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from virnucpro import h5shard
from virnucpro import prepared as fmt
from virnucpro.errors import ExitCode, OutputWriteError

CLI = [sys.executable, "-m", "virnucpro"]
NOBODY = 65534
THREAD_LIMIT_WORDS = ("ulimit -u", "--threads")


def _fasta(path: Path) -> Path:
    path.write_text(">a\n" + "ACGT" * 200 + "\n>b\n" + "ATGAAACCCGGGTTTTAA" * 40 + "\n")
    return path


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text and "this is a bug" not in text, text


# ------------------------------------------------------------------ 1. threads and processes


def test_a_thread_that_cannot_start_is_exit_10_naming_the_limit_before_the_models_load(
        tmp_path, small_sample, tiny_models, run_cli, monkeypatch):
    """`ulimit -u` or a pids limit refusing a thread was "unexpected RuntimeError ... this is a bug"
    (exit 1), and the checkpoint writer's thread started only at the first checkpoint, after the
    models loaded and the first window was computed (then lost)."""
    import virnucpro.embed

    prepared, _ = small_sample
    loads = []
    real_load = virnucpro.embed._load_encoders
    monkeypatch.setattr(virnucpro.embed, "_load_encoders", lambda *a, **k: loads.append(1) or real_load(*a, **k))

    def refused(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refused)
    code, err = run_cli("embed", prepared / "shards" / fmt.shard_name(0), "--models", tiny_models,
                        "--out", tmp_path / "s.h5", "--device", "cpu")
    monkeypatch.undo()
    assert code == ExitCode.OUTPUT_WRITE == 10, err
    assert all(word in err for word in THREAD_LIMIT_WORDS) and "pids limit" in err, err
    _no_traceback(err)
    assert not loads, "the models loaded before the checkpoint writer's thread was started"
    assert not (tmp_path / "s.h5").exists()


class PanicException(BaseException):
    """What pyo3 raises for a panic of a library's Rust code (its module cannot be imported by name)."""


PanicException.__module__ = "pyo3_runtime"
RAYON_PANIC = ('The global thread pool has not been initialized.: ThreadPoolBuildError { kind: IOError(Os { '
               'code: 11, kind: WouldBlock, message: "Resource temporarily unavailable" }) }')


def _panicking_prepare(monkeypatch, message: str, tmp_path: Path) -> None:
    """prepare panics with `message`; the crash report it leaves goes to `tmp_path`, not the system /tmp."""
    import tempfile

    import virnucpro.prepare

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def panic(*args, **kwargs):
        raise PanicException(message)

    monkeypatch.setattr(virnucpro.prepare, "prepare", panic)


def test_a_rust_thread_pool_that_cannot_start_is_the_limit_not_an_escaped_panic(tmp_path, run_cli, monkeypatch):
    """tokenizers' thread pool panics under a low `ulimit -u`: the PanicException (no Exception) went
    past every handler, a raw traceback and exit 1."""
    _panicking_prepare(monkeypatch, RAYON_PANIC, tmp_path)
    code, err = run_cli("prepare", _fasta(tmp_path / "a.fa"), "--outdir", tmp_path / "out")
    assert code == 10 and all(word in err for word in THREAD_LIMIT_WORDS), err
    _no_traceback(err)


def test_another_panic_is_named_a_library_failure(tmp_path, run_cli, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the bug is raised from tests/: not a PYTHONPATH module's fault
    _panicking_prepare(monkeypatch, "index out of bounds: the len is 3 but the index is 7", tmp_path)
    code, err = run_cli("prepare", _fasta(tmp_path / "a.fa"), "--outdir", tmp_path / "out")
    assert code == ExitCode.UNEXPECTED, err
    assert "a library failed" in err and "panicked" in err and "the index is 7" in err, err
    assert "ulimit" not in err, err
    reports = list(tmp_path.glob("virnucpro-crash-*.txt"))
    assert len(reports) == 1 and str(reports[0]) in err and "the index is 7" in reports[0].read_text(), err


def test_other_base_exceptions_still_pass(tmp_path, monkeypatch):
    """Only a panic is caught by its name: another BaseException (a KeyboardInterrupt) goes on."""
    import virnucpro.prepare
    from virnucpro.cli import main

    class Other(BaseException):
        pass

    monkeypatch.setattr(virnucpro.prepare, "prepare", lambda *a, **k: (_ for _ in ()).throw(Other()))
    with pytest.raises(Other):
        main(["prepare", str(_fasta(tmp_path / "a.fa")), "--outdir", str(tmp_path / "out")])


def _as_nobody() -> list[str]:
    """A command prefix running as another user, whom `ulimit -u` binds (root is exempt), still able
    to read and write this test's files."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run under a limit on processes")
    caps = "+dac_read_search,+dac_override"
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", f"--inh-caps={caps}",
            f"--ambient-caps={caps}"]


def _threads_of(uid: int) -> int:
    """Threads that processes of `uid` run now (all count against its `ulimit -u`)."""
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if fields.get("Uid", "").split()[:1] == [str(uid)]:
            count += int(fields.get("Threads", "1"))
    return count


@pytest.mark.parametrize("room", [2, 3])
def test_embed_under_a_real_limit_on_processes_says_so(tmp_path, small_sample, tiny_models, room):
    """The reported runs: room for a thread or two more than the user runs already (with --threads 1,
    tokenizers' pool panics with 2, Python's "can't start new thread" with 3; more --threads can meet
    libgomp or OpenBLAS first, which end the process themselves)."""
    prefix = _as_nobody()
    limit = _threads_of(NOBODY) + room

    def limited():
        resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))

    prepared, _ = small_sample
    private = tmp_path / "tmp"  # the CPU's torch cache folder is made in it, not in the machine's /tmp
    private.mkdir()
    done = subprocess.run([*prefix, *CLI, "embed", str(prepared / "shards" / fmt.shard_name(0)), "--models",
                           str(tiny_models), "--out", str(tmp_path / "s.h5"), "--device", "cpu", "--threads", "1"],
                          capture_output=True, text=True, timeout=300, preexec_fn=limited,
                          env={**os.environ, "TMPDIR": str(private)})
    assert done.returncode == 10, done.stderr[-3000:]
    last = done.stderr[done.stderr.rindex("error:"):]
    assert all(word in last for word in THREAD_LIMIT_WORDS), done.stderr[-3000:]
    _no_traceback(done.stderr)


@pytest.mark.parametrize("command", ["predict", "run", "models check"])
def test_openblas_meeting_the_limit_on_processes_is_the_limit_not_a_stop(tmp_path, small_sample, tiny_models,
                                                                         command):
    """A resource-limit review's case: numpy's OpenBLAS, unable to start its threads, sends SIGINT to
    its own process; predict (and embed, prepare) said "SIGINT received: stopped", exit 6, which the
    pipeline retries under the same limit. `run` loaded numpy before sizing the pools, and the models
    commands never sized them."""
    prefix = _as_nobody()
    limit = _threads_of(NOBODY) + 1

    def limited():
        resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))

    prepared, shard = small_sample
    arguments = {"predict": ["predict", "--prepared", str(prepared), "--embeddings", str(shard), "--models",
                             str(tiny_models), "--outdir", str(tmp_path / "out"), "--threads", "2"],
                 "run": ["run", str(_fasta(tmp_path / "a.fa")), "--models", str(tiny_models), "--outdir",
                         str(tmp_path / "out"), "--device", "cpu", "--threads", "2"],
                 "models check": ["models", "check", str(tiny_models)]}[command]
    done = subprocess.run([*prefix, *CLI, *arguments], capture_output=True, text=True, timeout=300,
                          preexec_fn=limited, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == 10, done.stderr[-3000:]
    assert "SIGINT" not in done.stderr and all(word in done.stderr for word in THREAD_LIMIT_WORDS), done.stderr
    _no_traceback(done.stderr)


def test_a_stop_during_torchs_first_import_waits_for_the_import_to_end(tmp_path):
    """A review's case: a Ctrl-C raised inside torch's C++ start-up aborted the process (exit 134, a
    C++ trace, the output folder's lock left). The stop is held until torch is imported whole."""
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\n"
                                      "time.sleep(0.2)\ncompleted = True\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from virnucpro.errors import InterruptedByUser, stop_signals_exit_interrupted\n"
            "from virnucpro.threads import import_torch_whole\n"
            "try:\n    with stop_signals_exit_interrupted():\n        import_torch_whole()\n"
            "except InterruptedByUser:\n    print('stopped', sys.modules['torch'].completed)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "stopped True", done.stdout + done.stderr


def test_a_stop_during_numpys_import_is_still_a_stop(tmp_path):
    """The SIGINT held while numpy loads is delivered when threads can still start: a user's stop."""
    fake = tmp_path / "numpy"
    fake.mkdir()
    (fake / "__init__.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from virnucpro.threads import limit_threads\n"
            "try:\n    limit_threads(1)\nexcept KeyboardInterrupt:\n    print('stopped')\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "stopped", done.stdout + done.stderr

# ------------------------------------------------------------------ 2. locales that are not UTF-8


@pytest.mark.parametrize("command", ["run", "prepare", "embed", "predict"])
def test_help_under_a_latin1_locale_does_not_crash(command):
    """`run --help` holds `…` (rich cuts long option names and help with it, more of them the narrower
    the terminal): UnicodeEncodeError, exit 1."""
    done = subprocess.run([*CLI, command, "--help"], capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONIOENCODING": "latin-1", "COLUMNS": "60"})
    assert done.returncode == 0, done.stderr.decode("latin-1")
    assert b"--out" in done.stdout and b"\\u2026" in done.stdout  # the character, escaped
    assert done.stderr == b""


# ------------------------------------------------------------------ 3. open files


def _emfile(path) -> OSError:
    return OSError(errno.EMFILE, os.strerror(errno.EMFILE), str(path))


def _refuse_opening(monkeypatch, module, name: str, suffix: str) -> None:
    """`module.name` (an opening function) fails with EMFILE for a path ending with `suffix`."""
    real = getattr(module, name)

    def limited(path, *args, **kwargs):
        if str(path).endswith(suffix):
            raise _emfile(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(module, name, limited)


@pytest.mark.parametrize("target", [(fmt, "open_regular", fmt.SEQUENCES), (h5shard, "_open_regular", ".h5")])
def test_predict_out_of_open_files_names_the_limit_not_a_damaged_folder(tmp_path, small_sample, tiny_models,
                                                                        run_cli, monkeypatch, target):
    """It was exit 5 "the prepare folder was edited or damaged: rerun `virnucpro prepare`" (or "cannot
    be read as an HDF5 embedding shard"), which sends users to redo sound work."""
    prepared, shard = small_sample
    _refuse_opening(monkeypatch, *target)
    code, err = run_cli("predict", "--prepared", prepared, "--embeddings", shard, "--outdir", tmp_path / "out",
                        "--models", tiny_models)
    assert code == 10, err
    assert "ulimit -n" in err and "rerun `virnucpro prepare`" not in err and "HDF5" not in err, err
    _no_traceback(err)


def test_embed_out_of_open_files_reading_its_shard_names_the_limit(tmp_path, small_sample, tiny_models, run_cli,
                                                                   monkeypatch):
    """It was exit 3 "cannot read shard ...: Too many open files", fix "check the path"."""
    prepared, _ = small_sample
    _refuse_opening(monkeypatch, fmt, "open_regular", fmt.shard_name(0))
    code, err = run_cli("embed", prepared / "shards" / fmt.shard_name(0), "--models", tiny_models,
                        "--out", tmp_path / "s.h5", "--device", "cpu")
    assert code == 10 and "ulimit -n" in err and "check the path" not in err, err


def test_out_of_open_files_making_a_lock_names_the_limit_not_the_folder(tmp_path, small_sample, tiny_models, run_cli,
                                                                        monkeypatch):
    """A resource-limit review's case (`ulimit -n 5` on embed): exit 3, "choose an output location in a
    folder you can write", for a folder nothing was wrong with."""
    from virnucpro import outdir

    prepared, _ = small_sample
    _refuse_opening(monkeypatch, outdir, "_create_or_open_lock", outdir.LOCK_NAME)
    code, err = run_cli("embed", prepared / "shards" / fmt.shard_name(0), "--models", tiny_models,
                        "--out", tmp_path / "s.h5", "--device", "cpu")
    assert code == 10 and "ulimit -n" in err and "folder you can write" not in err, err
    _no_traceback(err)

def test_the_system_table_of_open_files_full_is_named_too(tmp_path):
    from virnucpro.errors import process_limit

    found = process_limit(OSError(errno.ENFILE, os.strerror(errno.ENFILE), str(tmp_path / "x")))
    assert found is not None and found.code == 10 and "fs.file-max" in str(found), found
    assert fmt.unreadable(tmp_path / "x", _emfile(tmp_path / "x")).errno == errno.EMFILE
    in_text = process_limit(OSError(f"Unable to open file (unable to open file: name = 'x', errno = 24, error "
                                    f"message = '{os.strerror(errno.EMFILE)}')"))
    assert in_text is not None and "ulimit -n" in str(in_text), "HDF5 gives the errno in its text only"


@pytest.mark.parametrize("files", [5, 6, 7, 8])
def test_predict_under_a_real_limit_on_open_files_says_so(tmp_path, small_sample, tiny_models, files):
    """`ulimit -n` low enough to fail at each of predict's first opens: exit 10 naming the limit (or
    success), never exit 5 with the hint to prepare again, nor a bug report."""
    prepared, shard = small_sample

    def limited():
        resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))

    done = subprocess.run([*CLI, "predict", "--prepared", str(prepared), "--embeddings", str(shard), "--outdir",
                           str(tmp_path / "out"), "--models", str(tiny_models)], capture_output=True, text=True,
                          timeout=300, preexec_fn=limited)
    assert done.returncode in (0, 10), done.stderr[-3000:]
    if done.returncode:
        assert "ulimit -n" in done.stderr and "rerun `virnucpro prepare`" not in done.stderr, done.stderr
        _no_traceback(done.stderr)


@pytest.mark.parametrize("files", [5, 6, 7, 8])
def test_prepare_under_a_real_limit_on_open_files_says_so(tmp_path, reference_dir, files):
    """Opening an input past `ulimit -n` said "cannot read input file: Too many open files", exit 3,
    with "check the file permissions" as the fix."""
    def limited():
        resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))

    done = subprocess.run([*CLI, "prepare", str(reference_dir / "vanilla/test_with_orfs.fa"), "--outdir",
                           str(tmp_path / "out"), "--threads", "1"], capture_output=True, text=True, timeout=300,
                          preexec_fn=limited)
    assert done.returncode in (0, 10), done.stderr[-3000:]
    if done.returncode:
        assert "ulimit -n" in done.stderr and "permissions" not in done.stderr, done.stderr
        _no_traceback(done.stderr)


# ------------------------------------------------------------------ 4. prepare's workers


@pytest.mark.parametrize("code, words", [(errno.EMFILE, "ulimit -n"), (errno.EAGAIN, "ulimit -u")])
def test_prepare_workers_that_cannot_start_name_the_real_cause_first(reference_dir, tmp_path, monkeypatch, capsys,
                                                                     code, words):
    """Every failure to start the workers blamed /dev/shm and a limit on processes, even EMFILE."""
    import virnucpro.prepare
    import virnucpro.seqio
    from virnucpro.prepare import prepare

    def refused(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(virnucpro.seqio, "BLOCK", 8192)  # many record groups: workers would be used
    monkeypatch.setattr(virnucpro.prepare, "ProcessPoolExecutor", refused)
    prepare([reference_dir / "golden/mixed.fa"], tmp_path / "p", chunk_size=300, shard_size=100, threads=3)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and words in err and "/dev/shm" not in err, err
    assert err.index(os.strerror(code)) < err.index(words), err


# ------------------------------------------------------------------ 5. the file-size limit in HDF5


WRITER = """
import sys
from pathlib import Path
import numpy as np
from virnucpro import h5shard
from virnucpro.errors import VirnucproError

ids = [f"read_{i:05d}_chunk_1F1" for i in range(2000)]
rows = lambda start, stop: (np.zeros((stop - start, 16), "f4"), np.zeros((stop - start, 24), "f4"))
attrs = {"shard_index": 0, "shard_of": 1, "shard_sha256": "0" * 64, "chunk_size": 500,
         "models": {"esm2": {"name": "tiny", "sha256": "0" * 64}}, "precision": "fp32", "device": "cpu"}
try:
    h5shard.write_shard(Path(sys.argv[1]), ids, rows, (16, 24), attrs)
except VirnucproError as exc:
    print("error: " + str(exc), file=sys.stderr)
    sys.exit(int(exc.code))
"""


def test_an_embedding_file_past_the_file_size_limit_says_to_raise_it(tmp_path):
    """`ulimit -f` hit by the HDF5 write said "free space, fix the permissions"; prepare and predict
    say to raise the limit."""
    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    done = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path / "s.h5")], capture_output=True, text=True,
                          timeout=120, preexec_fn=limited)
    assert done.returncode == 10, done.stderr[-3000:]
    assert "ulimit -f unlimited" in done.stderr and "free space" not in done.stderr, done.stderr
    assert not list(tmp_path.iterdir())


def test_the_hdf5_write_hint_follows_the_errno():
    path = Path("/x/s.h5")
    too_big = h5shard._write_failed(path, OSError(errno.EFBIG, os.strerror(errno.EFBIG)))
    full = h5shard._write_failed(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert isinstance(too_big, OutputWriteError) and "fix: raise the file-size limit" in str(too_big), too_big
    assert "free space" not in str(too_big), too_big
    assert "free space" in str(full) and "checkpoints" in str(full) and "checkpoints" in str(too_big), full


def test_weights_out_of_open_files_name_the_limit_not_corrupt_models(tiny_models, monkeypatch):
    """torch.load failing with EMFILE read "corrupt, truncated or not a weights file", exit 4, with
    the fix to fetch the models again."""
    import torch

    from virnucpro.encoders import esm2

    def no_more_files(*args, **kwargs):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), "weights")

    monkeypatch.setattr(torch, "load", no_more_files)
    with pytest.raises(OSError) as raised:
        esm2._read_checkpoint(next(Path(tiny_models).glob("esm2_tiny.pt")))
    assert raised.value.errno == errno.EMFILE



# ------------------------------------------------------------------ 6. a limit met as prepare's workers start


def test_prepare_whose_pool_thread_cannot_start_after_its_workers_forked_prepares_here(
        reference_dir, tmp_path, monkeypatch, capsys):
    """A reviewer's case (`ulimit -u` with room for the workers, not for the pool's own thread): the
    RuntimeError was a bug report, and Python's exit then waited for ever on the forked workers,
    stop signals ignored. Now the workers are killed and this process prepares, as for a failed fork."""
    import multiprocessing
    from concurrent.futures import process

    import virnucpro.seqio
    from virnucpro.prepare import prepare

    def refused(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(virnucpro.seqio, "BLOCK", 8192)  # many record groups: workers would be used
    monkeypatch.setattr(process._ExecutorManagerThread, "start", refused)
    prepare([reference_dir / "golden/mixed.fa"], tmp_path / "p", chunk_size=300, shard_size=100, threads=3)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "ulimit -u" in err and "/dev/shm" not in err, err
    assert not multiprocessing.active_children()
    assert json.loads((tmp_path / "p" / "manifest.json").read_text())["counts"]["sequences"] > 0


def test_prepare_under_a_real_limit_met_by_its_pools_thread_ends(tmp_path):
    """The reported runs: room for prepare and its two workers, not for the pool's two threads (its
    manager's, then its queue feeder's, started by the manager). It hung for ever after its error
    (Ctrl-C ignored), or without one; it now prepares in this process."""
    prefix = _as_nobody()
    reads = tmp_path / "big.fa"
    reads.write_text("".join(f">r{i}\n{'ATGAAACCCGGGTTTAAC' * 28}\n" for i in range(6000)))  # groups beyond the first
    for room in (4, 5):
        limit = _threads_of(NOBODY) + room

        def limited(limit=limit):
            resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))

        done = subprocess.run([*prefix, *CLI, "prepare", str(reads), "--outdir", str(tmp_path / f"p{room}"),
                               "--threads", "2"], capture_output=True, text=True, timeout=120, preexec_fn=limited)
        _no_traceback(done.stderr)
        assert done.returncode == 0 and "ulimit -u" in done.stderr, done.stderr[-3000:]


def test_an_error_is_reported_with_its_code_when_no_thread_can_start(tmp_path):
    """The guard that ends the process should its last message block is a thread: refused, it turned
    a missing input (exit 3) into a traceback and exit 1."""
    code = ("import threading, sys\n"
            "def refused(self):\n    raise RuntimeError(\"can't start new thread\")\n"
            "threading.Timer.start = refused\n"
            "from virnucpro.cli import main\n"
            "main(['prepare', sys.argv[1], '--outdir', sys.argv[2]], exiting=True)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "missing.fa"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == ExitCode.BAD_INPUT == 3 and "missing.fa" in done.stderr, done.stderr
    _no_traceback(done.stderr)


def test_worker_processes_a_failed_command_left_behind_are_ended_with_it(tmp_path):
    """No process outlives its command: a worker left running by a failure (prepare's pool, when the
    failure came as it started) held Python's exit for ever, which waits for every worker."""
    code = ("import multiprocessing, sys, time\n"
            "from virnucpro import cli\n"
            "from virnucpro.errors import BadInputError\n"
            "def command(args, prog_name):\n"
            "    worker = multiprocessing.get_context('fork').Process(target=time.sleep, args=(3600,))\n"
            "    worker.start()\n"
            "    open(sys.argv[1], 'w').write(str(worker.pid))\n"
            "    raise BadInputError('a failure while the worker runs', 'none')\n"
            "cli.app = command\n"
            "cli.main(['prepare'], exiting=True)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "pid")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == ExitCode.BAD_INPUT and "a failure while the worker runs" in done.stderr, done.stderr
    worker = int((tmp_path / "pid").read_text())
    assert not Path(f"/proc/{worker}").exists() or "Z" in Path(f"/proc/{worker}/stat").read_text().split()[2]
