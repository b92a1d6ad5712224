"""The `virnucpro` console script and `python -m virnucpro`.

Stop signals are held back from this module's first line: one that arrives while the command line
loads (its imports take a few tenths of a second) stays pending until the command's handlers are
in place, then ends the command with exit 6 like any other stop, instead of killing it (143) first.
"""

from __future__ import annotations

import os
import signal
import sys

signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT, signal.SIGHUP))


def _fill_closed_standard_streams() -> None:
    """Open /dev/null on a closed stdin, stdout or stderr (`<&-`, `2>&-`), so that no file we open
    later takes its number: `/dev/stdin` would read our lock file, and whatever a library or a child
    writes to fd 2 would land in an output. Python has already set sys.stdin (...) to None for them."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _refuse_deleted_current_folder() -> None:
    """Exit 2 with one message when the current folder was deleted under the shell: checked before
    the heavy imports, where it was a bug report from a relative --outdir, or a oneMKL fatal error
    while torch loaded (exit 2 with no word of the cause)."""
    try:
        os.getcwd()
    except FileNotFoundError:
        from virnucpro.console import error
        from virnucpro.errors import ExitCode

        error("the current folder no longer exists: it was deleted while this shell was in it\n"
              "  fix: cd to an existing folder (`cd ~`; `cd \"$PWD\"` if it was made again) and rerun the command")
        sys.exit(int(ExitCode.USAGE))


# torch reads these at import and aborts the process (a C++ stack, exit 134) when one is not a list
# of `key:value` settings (`expandable_segments=True`): checked before torch loads, exit 2 instead
ALLOCATOR_VARIABLES = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")


def _refuse_malformed_allocator_settings() -> None:
    """Exit 2 naming the variable when torch's allocator settings cannot be parsed (`_settings_parse`)."""
    for name in ALLOCATOR_VARIABLES:
        value = os.environ.get(name)
        if value is not None and not _settings_parse(value):
            from virnucpro.console import error
            from virnucpro.errors import ExitCode, printable
            error(f"{name}={printable(repr(value))} is no list of key:value settings, and torch stops at start-up "
                  f"on it, whatever the command\n  fix: correct it (as in {name}=expandable_segments:True) or unset it")
            sys.exit(int(ExitCode.USAGE))


def _settings_parse(value: str) -> bool:
    """Whether torch can tokenize `value`: comma-separated `key:value` items (blank ones too), a value
    possibly a bracketed list; lenient where torch is (spaces anywhere, a trailing comma, ...)."""
    items = _top_level_items(value)
    if items is None:  # a bracket left open
        return False
    for item in (item.replace(" ", "") for item in items):
        key, colon, rest = item.partition(":")
        if item and (not key or "[" in key or not colon or not rest or ":" in _outside_lists(rest)):
            return False
    return True


def _top_level_items(value: str) -> list[str] | None:
    """`value` split at the commas outside brackets; None when a bracket is left open."""
    depth, items, current = 0, [], []
    for ch in value:
        depth += 1 if ch == "[" else -1 if ch == "]" and depth else 0
        if ch == "," and not depth:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    return None if depth else items + ["".join(current)]


def _outside_lists(text: str) -> str:
    """`text` without its bracketed lists ("[256:1,512:2]y" -> "y")."""
    depth, kept = 0, []
    for ch in text:
        depth += 1 if ch == "[" else -1 if ch == "]" and depth else 0
        if not depth and ch not in "[]":
            kept.append(ch)
    return "".join(kept)


def _tolerant_standard_streams() -> None:
    """Write what stdout and stderr cannot encode as escapes (`\\u2026`) instead of failing: under a
    locale that is not UTF-8 (LC_ALL=C, tr_TR.ISO-8859-9, PYTHONIOENCODING=latin-1) the help's `…`, or a
    file name in a message, raised UnicodeEncodeError and `--help` ended as a bug report (exit 1).
    Surrogate escapes (a file name that is not UTF-8) still go out as their original bytes. stderr,
    the log, becomes `LogStream`: a write there that fails loses the log, never the command."""
    import codecs

    codecs.register_error(ESCAPES, _escape_unencodable)
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) in ("strict", "surrogateescape") and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors=ESCAPES)
            except (OSError, ValueError):
                pass  # a stream that is gone or closed: nothing will be written there
    if sys.stderr is not None:
        from virnucpro.streams import LogStream

        sys.stderr = LogStream(sys.stderr)


ESCAPES = "virnucpro-escapes"  # the error handler of `_escape_unencodable`


def _escape_unencodable(exc: UnicodeError) -> tuple[bytes, int]:
    """A codec error handler: a surrogate escape (a byte of a name that is not UTF-8) written as that
    byte, as `surrogateescape` does; any other character the encoding lacks as a backslash escape."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = bytearray()
    for char in exc.object[exc.start:exc.end]:
        code = ord(char)
        out += bytes([code - 0xDC00]) if 0xDC80 <= code <= 0xDCFF else char.encode("ascii", "backslashreplace")
    return bytes(out), exc.end


def _flush_standard_streams() -> None:
    """Flush stdout and stderr at the end; one whose reader left (`| head -1`) goes to /dev/null, so
    that the interpreter's own flush at exit cannot turn the command's exit code into 120."""
    from virnucpro.streams import silence_dead_stream

    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except OSError:
            silence_dead_stream(stream)


def _command_line():
    """`virnucpro.cli.main`. It imports typer and rich as it loads, before its handler exists: one of
    them (or any module) that PYTHONPATH put first failing to load, or one not installed, is exit 2
    naming it, as the handler does for numpy, torch or h5py; any other failure is raised (exit 1)."""
    try:
        from virnucpro.cli import main as run
    except Exception as exc:  # noqa: BLE001 - told apart below, and raised again unless foreign
        foreign = module_from_pythonpath(exc)
        message = foreign_module_message(exc, foreign) if foreign is not None else installation_fault(exc)
        if message is None:
            raise
        _refuse_without_rich(message)
    return run


def module_from_pythonpath(exc: BaseException) -> str | None:
    """The file under a PYTHONPATH folder, outside virnucpro itself, that the failure went through
    or names (a module there that loaded but lacks what is imported from it), or None."""
    folders = [os.path.realpath(entry).rstrip(os.sep) + os.sep
               for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    ours = os.path.realpath(os.path.dirname(os.path.abspath(__file__))) + os.sep
    for name in reversed(_files_of_failure(exc)):
        real = os.path.realpath(name)
        if not real.startswith(ours) and any(real.startswith(folder) for folder in folders):
            return name
    return None


def _files_of_failure(exc: BaseException) -> list[str]:
    """The source files `exc` went through, then those of the modules it names, innermost last."""
    import traceback

    files = [frame.f_code.co_filename for frame, _line in traceback.walk_tb(exc.__traceback__)]
    files += [exc.filename] if isinstance(exc, SyntaxError) and exc.filename else []
    named = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    owner = getattr(exc, "obj", None) if isinstance(exc, AttributeError) else None
    for module_name in (named, getattr(owner, "__name__", None)):
        module = sys.modules.get(module_name.partition(".")[0]) if isinstance(module_name, str) else None
        files += [module.__file__] if isinstance(getattr(module, "__file__", None), str) else []
    return files


# the modules virnucpro needs whose distribution (what pip installs) has another name
DISTRIBUTION_OF = {"esm": "fair-esm"}
# what a compiled module says when it was built for a numpy other than the one installed
NUMPY_BUILD_MISMATCH = ("numpy.dtype size changed", "compiled using NumPy 1.x", "_ARRAY_API not found",
                        "numpy.core.multiarray failed to import")


def installation_fault(exc: BaseException) -> str | None:
    """The message (exit 2) for a failure of the Python installation rather than of virnucpro: a module
    that is not installed (`pip install --no-deps`, a partial environment), or a compiled package built
    for another numpy than the installed one; None for any other failure. Chained causes count."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.partition(".")[0] != "virnucpro":
            return _missing_module_message(exc.name)
        if isinstance(exc, (ImportError, ValueError, RuntimeError)) and any(
                text in str(exc) for text in NUMPY_BUILD_MISMATCH):
            return _numpy_mismatch_message(exc)
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _missing_module_message(name: str) -> str:
    """A module that is not installed, and the pip command that installs it into this Python."""
    from virnucpro.errors import shell_word

    top = name.partition(".")[0]
    distribution = DISTRIBUTION_OF.get(top, top)
    requirement = _requirement(distribution)
    pip = f"{shell_word(sys.executable)} -m pip install"
    if top != name and sys.modules.get(top) is not None:
        return (f"the installed {top} lacks its module {name}: a damaged or partial installation of {distribution}"
                f"\n  fix: install it again: {pip} --force-reinstall {shell_word(requirement or distribution)}")
    if requirement is None:
        return (f"the Python module {top} is not installed for {sys.executable}, and virnucpro or a package it "
                f"uses needs it\n  fix: install virnucpro with its dependencies (not with --no-deps), or the "
                f"package that provides {top}")
    return (f"the Python package {distribution}, which virnucpro needs, is not installed for {sys.executable}"
            f"\n  fix: {pip} {shell_word(requirement)}")


def _requirement(distribution: str) -> str | None:
    """virnucpro's own requirement on `distribution` (`numpy>=1.24`), from its installed metadata;
    None when it declares none (or virnucpro runs uninstalled, from PYTHONPATH)."""
    import re
    from importlib import metadata

    try:
        declared = metadata.requires("virnucpro") or []
    except metadata.PackageNotFoundError:
        return None
    pattern = re.compile(rf"{re.escape(distribution)}\s*(?:[<>=!~(]|$)", re.IGNORECASE)
    found = [line.strip() for line in declared if ";" not in line and pattern.match(line.strip())]
    return found[0] if found else None


def _numpy_mismatch_message(exc: BaseException) -> str:
    """A compiled package built for another numpy than the installed one (an h5py older than 3.11
    meeting numpy 2, say): which package, and the upgrade that fixes it."""
    from virnucpro.errors import printable, shell_word

    package = _installed_package_of_failure(exc) or "a compiled package"
    try:
        from importlib import metadata
        numpy = f"numpy {metadata.version('numpy')}"
    except Exception:  # noqa: BLE001 - the version is a detail of the message
        numpy = "numpy"
    upgrade = (f"{shell_word(sys.executable)} -m pip install --upgrade {shell_word(DISTRIBUTION_OF.get(package, package))}"
               if package != "a compiled package" else "upgrade the package the traceback names")
    return (f"{package} was built for another numpy than the installed {numpy} ({printable(str(exc)[:200])})"
            f"\n  fix: {upgrade} (to a release built for this numpy), or install the numpy it was built for")


def _installed_package_of_failure(exc: BaseException) -> str | None:
    """The installed package (a folder under site-packages, not numpy) whose code raised `exc`."""
    for name in reversed(_files_of_failure(exc)):
        parts = os.path.normpath(name).split(os.sep)
        for index, part in enumerate(parts[:-1]):
            if part in ("site-packages", "dist-packages") and parts[index + 1] not in ("numpy", "virnucpro"):
                return os.path.splitext(parts[index + 1])[0]
    return None


def foreign_module_message(exc: BaseException, foreign: str) -> str:
    """What a failure in `foreign`, a module PYTHONPATH put first, is and how to fix it (exit 2)."""
    from virnucpro.errors import printable

    return (f"{type(exc).__name__}: {printable(str(exc)[:300])}, in {printable(foreign)}, which PYTHONPATH="
            f"{printable(os.environ['PYTHONPATH'])} put before virnucpro's own packages\n  fix: unset PYTHONPATH "
            "for virnucpro (for the Nextflow pipeline without a container: in the shell that launches it)")


def _refuse_without_rich(message: str) -> None:
    """Exit 2 with `message`, as `virnucpro.crash.report_bug` says it, written without rich (which may
    be the module that failed)."""
    from virnucpro.errors import ExitCode

    try:
        if sys.stderr is not None:  # None when stderr was closed (`2>&-`): nowhere to say it
            sys.stderr.write(f"error: {message}\n")
            sys.stderr.flush()
    except OSError:
        pass  # a reader that left: the exit code still says it
    sys.exit(int(ExitCode.USAGE))


def main() -> None:
    """Load the command line and run it (`virnucpro.cli.main` lets the stop signals through)."""
    _fill_closed_standard_streams()
    _tolerant_standard_streams()
    _refuse_deleted_current_folder()
    _refuse_malformed_allocator_settings()
    run = _command_line()

    try:
        run(exiting=True)
    finally:
        _flush_standard_streams()
