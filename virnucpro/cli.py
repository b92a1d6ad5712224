"""The `virnucpro` command line: parses options and calls one function per command.

Heavy libraries (torch, h5py) are imported inside the commands that need them, so `--help`,
`--version` and `prepare` start fast.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from virnucpro import __version__
from virnucpro.console import error
from virnucpro.streams import silence_dead_stream
from virnucpro.crash import report_bug
from virnucpro.errors import (BadInputError, OutputWriteError, VirnucproError, access_hint, denied_folder, home_expanded,
                              is_panic, printable, stop_keeps_nothing, stop_signals_exit_interrupted, storage_errno, storage_error,
                              storage_failure, storage_hint)
from virnucpro.models import store
from virnucpro.models.pins import CLASSIFIER_CHUNK_SIZES
from virnucpro.seqio import STDIN
from virnucpro.threads import import_torch_whole, limit_threads

OUTDIR_RULES = (" Locked while the command runs (flock, or an O_EXCL lock file with pid and host where "
                "the file system has no flock); written only if it is new, empty or an earlier output "
                "of the same command.")

app = typer.Typer(
    name="virnucpro",
    help="Identify viral short sequences: six-frame ORFs embedded by DNABERT-S and ESM-2, "
         "classified by the original VirNucPro MLP.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
models_app = typer.Typer(help="Download, check or create model weights.", no_args_is_help=True)
app.add_typer(models_app, name="models")

class ModelRole(str, Enum):
    esm2 = "esm2"
    dnabert_s = "dnabert_s"
    classifier_300 = "classifier_300"
    classifier_500 = "classifier_500"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


def _models_path(value: str) -> Path:
    """A models directory argument (--models, --dest, models check/tiny DIR): as `_path`, but a leading
    `~` is left to `store.models_dir`, which expands it the same way for $VIRNUCPRO_MODELS too and
    says where an unknown user came from."""
    if isinstance(value, Path):
        return value
    if value == STDIN:  # `models tiny -` made a folder named '-'
        raise typer.BadParameter("'-' is no models folder ('-' stands for standard input or output); give a path "
                                 "(./- for a folder named '-')")
    if value == "":
        return _path(value)
    return Path(value) if value.startswith("~") else _literal(value)


def _path(value: str) -> Path:
    """A path argument as given. An empty one is a usage error (exit 2, the option named by typer):
    `Path("")` is the current directory, so `--outdir ""` wrote into it. Whether the path exists or can
    be read is left to the command, which says so with its own exit code (a missing or unreadable
    input is 3, CONTRACTS.md), where click's checks made every one of them exit 2."""
    if isinstance(value, Path):
        return value
    if value == "":
        raise typer.BadParameter("an empty path; give a file or directory name (`.` for this directory)")
    return _home_expanded(value)


def _output_path(value: str) -> Path:
    """An output path (--outdir, --out, --checkpoint-dir, --compile-cache): as `_path`, but `-`, which
    reads as standard output elsewhere, is a usage error (it made a file or folder named `-`)."""
    if value == STDIN:
        raise typer.BadParameter("'-' would be standard output, where no folder or HDF5 file can go; give a "
                                 "path (./- for one named '-')")
    return _path(value)


def _stage_path(value: str) -> Path:
    """A file or folder no command reads from standard input (a shard, --prepared, --embeddings,
    --classifier): as
    `_path`, but `-` is a usage error (it was looked for as a file named '-')."""
    if value == STDIN:
        raise typer.BadParameter("'-' stands for standard input, which this option does not read; give a path "
                                 "(./- for one named '-')")
    return _path(value)


def _home_expanded(value: str) -> Path:
    """`value` with a leading `~` or `~user` expanded as the shell would (as --models always was): the
    shell leaves `--outdir=~/x` alone, which made a folder named `~` in the current one. A home that
    cannot be found leaves a path whose first part exists here as it is, as the shell does
    (`home_expanded`); otherwise it is a usage error (exit 2), not a folder named `~...` made."""
    if not value.startswith("~"):
        return _literal(value)
    head = value.split("/", 1)[0]
    try:
        return home_expanded(value)
    except RuntimeError:  # no such user, or no home directory, and nothing of that name here
        raise typer.BadParameter(f"{printable(value)}: the home directory of {printable(head)} cannot be determined "
                                 f"(no such user, or $HOME is not an absolute path); give an absolute path, or "
                                 f"./{printable(value)} for a name starting with ~ in this folder") from None


def _literal(value: str) -> Path:
    """`value`, which does not start with `~`, as a path no later step takes for a home or for
    standard input: pathlib shortens `./~x` to `~x` and `./-` to `-`, so such a path is made absolute
    here (`~x`, or the file named `-`, in the current folder)."""
    path = Path(value)
    shortened = str(path) == STDIN and value != STDIN
    return path.absolute() if shortened or (path.parts and path.parts[0].startswith("~")) else path


def _float_option(value: str, acceptable, said: str) -> float:
    """A number option checked by `acceptable` (false for nan, which a range check alone called
    "more than 1" or "less than 1"); anything else is exit 2: '<value> <said>'."""
    if isinstance(value, float):
        return value
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not acceptable(number):
        raise typer.BadParameter(f"{printable(str(value))} {said}")
    return number


def _threshold(value: str) -> float:
    """`--threshold`: a number from 0 to 1, the fraction of a sequence's chunks."""
    return _float_option(value, lambda number: 0.0 <= number <= 1.0, "is not a number between 0 and 1 (the "
                         "fraction of a sequence's scored chunks that must be virus)")


def _checkpoint_seconds(value: str) -> float:
    """`--checkpoint-seconds`: 1 or more (inf: by --checkpoint-every alone)."""
    return _float_option(value, lambda number: number >= 1.0, "is not a number of seconds of at least 1 (inf: "
                         "save checkpoints by --checkpoint-every alone)")


MAX_CHUNK_SIZE = 2**63 - 1

_written: list[tuple[Path, bool]] = []  # (absolute path, is a file) of each output of the command running


def _writes(*folders: Optional[Path], file: Optional[Path] = None) -> None:
    """Note the outputs the command writes: the folders (everything under them) and the file (with
    the names embed derives from it beside it: `.OUT.lock`, `.OUT.XXXXXXXX.tmp`, `OUT.ckpt/`). A
    permission error no command named is called a failed write only on one of them (`_is_output`)."""
    _written.extend((_absolute(folder), False) for folder in folders if folder is not None)
    if file is not None:
        _written.append((_absolute(file), True))


def _absolute(path: Path) -> Path:
    """`path` made absolute, a leading `~` expanded (a models folder's is left to the store: `_models_path`)."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def _is_output(path: Path) -> bool:
    """Whether `path` is, or is inside, an output of the command running (see `_writes`)."""
    target = Path(os.path.abspath(path))
    for output, is_file in _written:
        if target == output or output in target.parents:
            return True
        if is_file and output.parent in target.parents:
            first = target.relative_to(output.parent).parts[0]
            if first.lstrip(".").startswith(f"{output.name}."):
                return True
    return False


CHUNK_SIZE_ADVICE = {  # what each command that takes --chunk-size needs for another size
    "prepare": "add --allow-any-chunk-size (predict then needs your own classifier trained for that chunk size)",
    "run": "add --allow-any-chunk-size with your own --classifier",
}


def _check_chunk_size(chunk_size: int, allow_any: bool, command: str) -> None:
    """Only 300 and 500 have trained classifiers; other sizes need an explicit opt-in (exit 2), the
    advice in the words of `command` (a key of CHUNK_SIZE_ADVICE: prepare has no --classifier)."""
    if chunk_size < 3:
        hint = "the smallest is 3" if allow_any else f"use {' or '.join(map(str, CLASSIFIER_CHUNK_SIZES))}"
        raise typer.BadParameter(f"{chunk_size} is too small; {hint}", param_hint="--chunk-size")
    if chunk_size > MAX_CHUNK_SIZE:  # it is stored as a 64-bit integer in every stage's files
        raise typer.BadParameter(f"{chunk_size} is too large; the largest is {MAX_CHUNK_SIZE} (a chunk "
                                 "longer than every sequence already leaves each sequence whole)",
                                 param_hint="--chunk-size")
    if chunk_size not in CLASSIFIER_CHUNK_SIZES and not allow_any:
        raise typer.BadParameter(f"{chunk_size}: the classifiers were trained for "
                                 f"{' and '.join(map(str, CLASSIFIER_CHUNK_SIZES))} only; use "
                                 f"one of them, or {CHUNK_SIZE_ADVICE[command]}", param_hint="--chunk-size")


ChunkSizeOption = typer.Option(500, "--chunk-size", help="Chunk length: 300 or 500 (the classifiers "
                                                        "were trained per length).")
AllowAnyChunkSizeOption = typer.Option(False, "--allow-any-chunk-size",
                                       help="Accept a chunk size other than 300/500.")
ModelsOption = typer.Option(None, "--models", parser=_models_path, metavar="DIR", help="Models directory (default: $VIRNUCPRO_MODELS, "
                                                   "else the user data directory).")
DeviceOption = typer.Option(Device.auto, "--device", help="auto = first visible GPU, else CPU.")
PrecisionOption = typer.Option(Precision.auto, "--precision", help="auto = fp32 on CPU, fp16 on GPU.")
InputsArgument = typer.Argument(..., parser=_path, metavar="INPUT", help="FASTA/FASTQ files (plain, gzip, bzip2 or xz; `-` is standard "
                                         "input, read once like any pipe, from where it stands; `./-` a file named -); several files form one sample.")
ClassifierOption = typer.Option(None, "--classifier", parser=_stage_path, metavar="FILE", help="Classifier .pth/.safetensors (default: the "
                                                           "original one for the chunk size).")
ThresholdOption = typer.Option(0.5, "--threshold", parser=_threshold, metavar="FLOAT", help="Fraction (0 to 1) of a sequence's scored "
                                                                          "chunks that must be virus to call it virus (at least; 0 calls every scored sequence virus).")
TokenBudgetOption = typer.Option(None, "--token-budget", min=1, help="Tokens per forward (default: 4096 on "
                                 "CPU, 65536 on GPU); halved automatically on GPU out-of-memory.")
CheckpointEveryOption = typer.Option(2000, "--checkpoint-every", min=1, help="Save a checkpoint every N records "
                                     "(batches never span two checkpoints: a small N also means smaller, "
                                     "slower batches).")
CheckpointSecondsOption = typer.Option(600.0, "--checkpoint-seconds", parser=_checkpoint_seconds, metavar="FLOAT",
                                       help="Also save one at least every S seconds.")
NoCompileOption = typer.Option(False, "--no-compile", help="On a GPU, do not compile the encoders' "
                               "elementwise work: less compile time at start-up, slower embedding (also the "
                               "automatic fallback when compiling fails). FlexAttention, where a fast path "
                               "uses it (ESM-2 at fp32 or on torch before 2.10), is compiled either way.")
CompileCacheOption = typer.Option(None, "--compile-cache", parser=_output_path, metavar="DIR",
                                  help="Folder for compiled GPU kernels, reused by "
                                  "later runs and tasks (default: $TORCHINDUCTOR_CACHE_DIR when set, else "
                                  "$XDG_CACHE_HOME/virnucpro-<uid>/torch-compile, ~/.cache/... without it; "
                                  "used only if no other user can write to it).")
ThreadsOption = typer.Option(None, "--threads", min=1,
                             help="CPU threads to use (default: the CPUs this process may use).")


def _version_callback(value: bool) -> None:
    """`--version`: the version on stdout; a reader already gone (`| true`) changes no exit code."""
    if value:
        try:
            typer.echo(f"virnucpro {__version__}")
        except BrokenPipeError:
            silence_dead_stream(sys.stdout)
        raise typer.Exit()


#: Commands a stop leaves nothing to resume from, wherever it lands (see `stop_keeps_nothing`): also
#: before they reach their own block saying so, where the message promised checkpoints
NOTHING_TO_RESUME = {"prepare", "predict", "tiny"}


@app.callback()
def _root(ctx: typer.Context, version: bool = typer.Option(False, "--version", callback=_version_callback,
                                                           is_eager=True, help="Print the version and exit.")) -> None:
    """Identify viral short sequences (VirNucPro, re-implemented)."""
    _say_nothing_to_resume(ctx)


@models_app.callback()
def _models(ctx: typer.Context) -> None:
    """Download, check or create model weights."""
    _say_nothing_to_resume(ctx)


def _say_nothing_to_resume(ctx: typer.Context) -> None:
    """For the command's whole run, a stop says the rerun starts again when it keeps nothing."""
    if ctx.invoked_subcommand in NOTHING_TO_RESUME:
        ctx.with_resource(stop_keeps_nothing())


@app.command()
def prepare(
    inputs: List[Path] = InputsArgument,
    outdir: Path = typer.Option(..., "--outdir", "-o", parser=_output_path, metavar="DIR",
                                help="Output directory for shards and tables." + OUTDIR_RULES),
    chunk_size: int = ChunkSizeOption,
    allow_any_chunk_size: bool = AllowAnyChunkSizeOption,
    shard_size: int = typer.Option(100_000, "--shard-size", min=1,
                                   help="ORF records per shard (one embed task each)."),
    threads: Optional[int] = ThreadsOption,
) -> None:
    """Chunk, translate six frames and write ORF shards for `embed`."""
    threads = limit_threads(threads)
    from virnucpro.prepare import prepare as run_prepare

    _check_chunk_size(chunk_size, allow_any_chunk_size, "prepare")
    _writes(outdir)
    run_prepare(inputs, outdir, chunk_size=chunk_size, shard_size=shard_size, threads=threads)


@app.command()
def embed(
    shard: Path = typer.Argument(..., parser=_stage_path, metavar="SHARD", help="A prepare shard (shards/shard_NNNNN.tsv)."),
    models: Optional[Path] = ModelsOption,
    out: Path = typer.Option(..., "--out", parser=_output_path, metavar="FILE", help="HDF5 embedding shard to write (locked through .OUT.lock "
                             "beside it while embed runs; an existing file is replaced only if it is "
                             "a virnucpro embedding)."),
    checkpoint_dir: Optional[Path] = typer.Option(None, "--checkpoint-dir", parser=_output_path, metavar="DIR", help="Where resumable "
                                                  "checkpoints live, one folder per shard, removed when the "
                                                  "shard is written (default: OUT.ckpt/, removed too; a "
                                                  "folder given here stays)."),
    device: Device = DeviceOption,
    precision: Precision = PrecisionOption,
    token_budget: Optional[int] = TokenBudgetOption,
    checkpoint_every: int = CheckpointEveryOption,
    checkpoint_seconds: float = CheckpointSecondsOption,
    threads: Optional[int] = ThreadsOption,
    no_compile: bool = NoCompileOption,
    compile_cache: Optional[Path] = CompileCacheOption,
) -> None:
    """Embed one shard with DNABERT-S and ESM-2 into one HDF5 file (resumable)."""
    threads = limit_threads(threads)
    import_torch_whole()
    from virnucpro.embed import Compiling, embed as run_embed

    _writes(checkpoint_dir, compile_cache, file=out)
    run_embed(shard, out, models=models, checkpoint_dir=checkpoint_dir, device=device.value,
              precision=precision.value, token_budget=token_budget, checkpoint_every=checkpoint_every,
              checkpoint_seconds=checkpoint_seconds, threads=threads,
              compiling=Compiling(False if no_compile else None, compile_cache))


@app.command()
def predict(
    prepared: Path = typer.Option(..., "--prepared", parser=_stage_path, metavar="DIR", help="The prepare output directory."),
    embeddings: List[Path] = typer.Option(..., "--embeddings", parser=_stage_path, metavar="FILE|DIR", help="Every embedding shard of "
                                          "the sample (.h5), in any order: --embeddings a.h5 b.h5 ..., or the "
                                          "folder holding them (its .h5 files: no limit on their number)."),
    more_embeddings: Optional[List[Path]] = typer.Argument(None, metavar="MORE.h5", parser=_stage_path,
                                                           help="More embedding shards after --embeddings "
                                                                "(a shell glob: --embeddings emb/*.h5)."),
    outdir: Path = typer.Option(..., "--outdir", "-o", parser=_output_path, metavar="DIR",
                                help="Output directory for tables and report." + OUTDIR_RULES),
    classifier: Optional[Path] = ClassifierOption,
    models: Optional[Path] = ModelsOption,
    threshold: float = ThresholdOption,
    threads: Optional[int] = ThreadsOption,
) -> None:
    """Classify every ORF and write the original tables, per-chunk/per-sequence tables and a report."""
    limit_threads(threads)
    import_torch_whole()
    from virnucpro.predict import predict as run_predict

    _writes(outdir)
    run_predict(prepared, list(embeddings) + list(more_embeddings or []), outdir,
                classifier=classifier, models=models, threshold=threshold)


@app.command()
def run(
    inputs: List[Path] = InputsArgument,
    outdir: Path = typer.Option(..., "--outdir", "-o", parser=_output_path, metavar="DIR", help="Output directory." + OUTDIR_RULES),
    chunk_size: int = ChunkSizeOption,
    allow_any_chunk_size: bool = AllowAnyChunkSizeOption,
    models: Optional[Path] = ModelsOption,
    classifier: Optional[Path] = ClassifierOption,
    device: Device = DeviceOption,
    precision: Precision = PrecisionOption,
    keep_embeddings: bool = typer.Option(False, "--keep-embeddings",
                                         help="Keep the HDF5 embeddings under OUTDIR/embeddings/."),
    offline: bool = typer.Option(False, "--offline", help="Never download; missing models are an error."),
    threshold: float = ThresholdOption,
    threads: Optional[int] = ThreadsOption,
    token_budget: Optional[int] = TokenBudgetOption,
    checkpoint_every: int = CheckpointEveryOption,
    checkpoint_seconds: float = CheckpointSecondsOption,
    no_compile: bool = NoCompileOption,
    compile_cache: Optional[Path] = CompileCacheOption,
) -> None:
    """Everything in one process: prepare, embed, predict (resumable; the default on one machine)."""
    _check_chunk_size(chunk_size, allow_any_chunk_size, "run")
    threads = limit_threads(threads)  # before numpy loads (predict's module): its OpenBLAS pool is sized then
    from virnucpro.predict import require_own_classifier

    require_own_classifier(chunk_size, classifier, why="this run cuts the sequences")
    import_torch_whole()
    from virnucpro.embed import Compiling
    from virnucpro.run import run as run_all

    _writes(outdir, compile_cache)
    run_all(inputs, outdir, chunk_size=chunk_size, models=models, classifier=classifier, device=device.value,
            precision=precision.value, keep_embeddings=keep_embeddings, offline=offline, threads=threads,
            threshold=threshold, token_budget=token_budget, checkpoint_every=checkpoint_every,
            checkpoint_seconds=checkpoint_seconds, compiling=Compiling(False if no_compile else None, compile_cache))


@models_app.command("download")
def models_download(
    dest: Optional[Path] = typer.Option(None, "--dest", parser=_models_path, metavar="DIR", help="Models directory (default: "
                                        "$VIRNUCPRO_MODELS, else the user data directory)."),
    only: Optional[ModelRole] = typer.Option(None, "--only", help="Download one role only."),
    mirror: Optional[str] = typer.Option(None, "--mirror", help="Base URL replacing every source "
                                         "host (site mirrors)."),
) -> None:
    """Download ESM-2 3B, DNABERT-S and the original classifiers (resumable, verified)."""
    limit_threads(None)
    from virnucpro.models import download

    _writes(dest)
    download.download(dest=dest, only=only.value if only else None, mirror=mirror)


@models_app.command("check")
def models_check(directory: Optional[Path] = typer.Argument(None, parser=_models_path, metavar="DIR", help="Models directory.")) -> None:
    """Report which models are present and whether their checksums hold."""
    limit_threads(None)
    store.check(directory)


@models_app.command("tiny")
def models_tiny(directory: Path = typer.Argument(..., parser=_models_path, metavar="DIR", help="Directory to create.")) -> None:
    """Write tiny random models in the real formats (tests, the Nextflow test profile)."""
    limit_threads(None)
    import_torch_whole()
    from virnucpro.models import tiny

    _writes(directory)
    tiny.make_tiny(directory)


def _access_fix(path: Optional[Path]) -> str:
    """The hint for a path this user may not reach: the folder on its way that cannot be entered,
    else the path itself (`access_hint`: chmod for the owner, or what to ask of them)."""
    if path is None:
        return "make it readable to this user, and each folder on its path enterable (chmod u+rx)"
    folder = denied_folder(path)
    if folder is not None:
        return access_hint(folder, "rx", f"make the folder {printable(str(folder))} searchable")
    return access_hint(path, "r")


REPORT_SECONDS = 10.0


def _exit_anyway_after_the_report(code: int) -> None:
    """The command has ended (its clean-up done, its checkpoints kept) and only its last message is
    left: should writing it block (a terminal that stopped reading: Ctrl-S, a stalled ssh link),
    the process still ends with `code` after REPORT_SECONDS, instead of hanging on after a stop
    signal (which it ignores from its first one on)."""
    timer = threading.Timer(REPORT_SECONDS, os._exit, args=(code,))
    timer.daemon = True
    try:
        timer.start()
    except RuntimeError:  # no thread can start (`ulimit -u`): the message goes out without this guard
        pass


def _end_leftover_workers() -> None:
    """Kill the worker processes a failed command left behind (prepare's pool, when the failure came
    as it started): Python's exit waits for each, and one blocked on its pool held the exit for ever,
    stop signals ignored. No process outlives its command."""
    import multiprocessing

    for child in multiprocessing.active_children():
        child.kill()
        child.join(timeout=5)


ONLY_WRITES_FAIL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}  # errnos a read never meets


def _unnamed_storage_failure(exc: OSError) -> Optional[VirnucproError]:
    """The error for a storage failure no command named (None: `exc` is none, a bug). "Cannot write"
    only of a write: an errno only writes meet, or a path the command writes (`_is_output`). Elsewhere a
    permission error is a file or folder this user cannot reach, exit 3 like a missing one; any other
    failure of the storage (an I/O error, a mount that went away) stays exit 10, naming the path."""
    code = storage_errno(exc)
    if code is None:
        return None
    path = Path(os.fsdecode(exc.filename)) if exc.filename else None
    if code in ONLY_WRITES_FAIL or code == errno.ENAMETOOLONG or (path is not None and _is_output(path)):
        return storage_failure(exc, path or Path("an output file"))
    where = printable(str(path)) if path is not None else "a file (the error names none)"
    if code in (errno.EACCES, errno.EPERM):
        return BadInputError(f"cannot access {where}: permission denied", _access_fix(path))
    return OutputWriteError(f"cannot access {where}: {storage_error(exc)}", storage_hint(exc))


def main(argv: Optional[List[str]] = None, exiting: bool = False) -> None:
    """Console-script entry: run the app and map every failure to a CONTRACTS.md exit code.

    Usage errors are handled by typer itself (exit 2); our errors print one message and exit with
    their code; a stop signal ends every command with exit 6 (partial output removed, checkpoints
    kept); a storage failure nobody named earlier is exit 10 (a permission error on a path the command
    does not write is exit 3, see `_unnamed_storage_failure`), and so is a limit on open files or
    threads (`process_limit`); anything else, a library's Rust panic included, is a bug, reported
    with its traceback saved to a file. `exiting`: the process ends with the command (the console script).
    """
    _written.clear()
    store.forget_verified()  # a command verifies the models it reads itself
    try:
        _run_app(argv, exiting)
    finally:
        if exiting:
            _end_leftover_workers()


def _run_app(argv: Optional[List[str]], exiting: bool) -> None:
    """`main`'s command, every failure mapped to its exit code (see `main`)."""
    try:
        with stop_signals_exit_interrupted(exiting):
            app(args=argv, prog_name="virnucpro")
    except VirnucproError as exc:
        if exiting:
            _exit_anyway_after_the_report(int(exc.code))
        error(str(exc))
        sys.exit(int(exc.code))
    except OSError as exc:
        failure = _unnamed_storage_failure(exc)
        if failure is None:
            sys.exit(int(report_bug(exc)))
        error(str(failure))
        sys.exit(int(failure.code))
    except Exception as exc:  # noqa: BLE001 - last resort, turned into a bug report
        sys.exit(int(report_bug(exc)))
    except BaseException as exc:  # a Rust panic is no Exception; SystemExit and the like go on
        if not is_panic(exc):
            raise
        sys.exit(int(report_bug(exc)))
