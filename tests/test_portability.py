"""virnucpro on the machines users try it on besides Linux x86-64: a Mac (no Linux-only error
numbers, no prctl, no /proc), found by a hostile review that simulated each missing piece."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# macOS's <sys/errno.h>: the error names Python has there
DARWIN_ERRNOS = set("""
EPERM ENOENT ESRCH EINTR EIO ENXIO E2BIG ENOEXEC EBADF ECHILD EDEADLK ENOMEM EACCES EFAULT ENOTBLK EBUSY EEXIST
EXDEV ENODEV ENOTDIR EISDIR EINVAL ENFILE EMFILE ENOTTY ETXTBSY EFBIG ENOSPC ESPIPE EROFS EMLINK EPIPE EDOM ERANGE
EAGAIN EWOULDBLOCK EINPROGRESS EALREADY ENOTSOCK EDESTADDRREQ EMSGSIZE EPROTOTYPE ENOPROTOOPT EPROTONOSUPPORT
ESOCKTNOSUPPORT ENOTSUP EOPNOTSUPP EPFNOSUPPORT EAFNOSUPPORT EADDRINUSE EADDRNOTAVAIL ENETDOWN ENETUNREACH
ENETRESET ECONNABORTED ECONNRESET ENOBUFS EISCONN ENOTCONN ESHUTDOWN ETOOMANYREFS ETIMEDOUT ECONNREFUSED ELOOP
ENAMETOOLONG EHOSTDOWN EHOSTUNREACH ENOTEMPTY EPROCLIM EUSERS EDQUOT ESTALE EREMOTE EBADRPC ERPCMISMATCH
EPROGUNAVAIL EPROGMISMATCH EPROCUNAVAIL ENOLCK ENOSYS EFTYPE EAUTH ENEEDAUTH EPWROFF EDEVERR EOVERFLOW EBADEXEC
EBADARCH ESHLIBVERS EBADMACHO ECANCELED EIDRM ENOMSG EILSEQ ENOATTR EBADMSG EMULTIHOP ENODATA ENOLINK ENOSR ENOSTR
EPROTO ETIME ENOPOLICY ENOTRECOVERABLE EOWNERDEAD EQFULL
""".split())
MAC_ERRNO = """import errno
for _name in [n for n in dir(errno) if n.startswith("E") and n not in {names!r}]:
    delattr(errno, _name)
"""


def without_proc(monkeypatch) -> None:
    """As on a Mac: no /proc/self/fd to reach a path that is no UTF-8 text by."""
    import os

    seen = os.path.isdir
    monkeypatch.setattr(os.path, "isdir", lambda path: False if path == "/proc/self/fd" else seen(path))


def _sources() -> list[Path]:
    return sorted([*(ROOT / "virnucpro").rglob("*.py"), *(ROOT / "bin").glob("*.py")])


def test_no_error_name_macos_lacks_is_looked_up_directly():
    """`errno.EREMOTEIO` at import stopped every command on a Mac (AttributeError): such names go
    through `errors.errno_codes`, which leaves out what the system has not."""
    used = {(path.relative_to(ROOT).as_posix(), name) for path in _sources()
            for name in re.findall(r"\berrno\.(E[A-Z0-9]+)\b", path.read_text("utf-8"))}
    assert used and not [entry for entry in used if entry[1] not in DARWIN_ERRNOS]


def test_every_module_imports_and_the_cli_answers_without_linux_only_error_names(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(MAC_ERRNO.format(names=sorted(DARWIN_ERRNOS)))
    imports = ("import errno, importlib, pkgutil, virnucpro\n"
               "assert not hasattr(errno, 'EREMOTEIO')\n"
               "for module in pkgutil.walk_packages(virnucpro.__path__, 'virnucpro.'):\n"
               "    if not module.name.endswith('__main__'):  # which runs the CLI\n"
               "        importlib.import_module(module.name)\n")
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for command in (["-c", imports], ["-m", "virnucpro", "--version"]):
        done = subprocess.run([sys.executable, *command], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.startswith("virnucpro "), done.stdout


def test_auto_on_a_mac_with_an_apple_gpu_says_it_is_not_used(monkeypatch, capsys):
    """torch sees MPS there: 'no GPU visible' read as a fault of the machine's GPU."""
    import torch

    from virnucpro.embed import resolve_device
    from virnucpro.errors import DeviceError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto").type == "cpu"
    warned = " ".join(capsys.readouterr().err.split())
    assert "no CUDA GPU visible: embedding on the CPU" in warned and "does not use Apple GPUs (MPS)" in warned
    assert "use a CUDA GPU for real data" in warned, warned
    with pytest.raises(DeviceError) as refused:
        resolve_device("cuda")
    assert "no CUDA GPU is visible" in str(refused.value) and "MPS" in str(refused.value), str(refused.value)
    assert "CUDA_VISIBLE_DEVICES" not in str(refused.value)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    assert "no GPU visible: embedding on the CPU" in " ".join(capsys.readouterr().err.split())


def test_models_under_a_path_that_is_no_utf8_without_proc_say_so(tmp_path, tiny_models, run_cli, monkeypatch):
    """Without /proc (macOS) the library's error on such a path read as a damaged weights file, and
    the fix offered (`models tiny` into it) met the same error."""
    import os
    import shutil

    models = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9-models"))
    shutil.copytree(tiny_models, models)
    without_proc(monkeypatch)
    fasta = tmp_path / "a.fa"
    fasta.write_text(">a\n" + "ATGAAACCCGGGTTTAAA" * 20 + "\n")
    code, message = run_cli("run", fasta, "--outdir", tmp_path / "out", "--models", models, "--device", "cpu")
    flat = " ".join(message.split())
    assert code == 4 and "is no UTF-8 text" in flat and "corrupt" not in flat, message
    assert "move or copy the models to a folder whose path is UTF-8 text" in flat, message
    assert "prepared" not in message, message  # refused before prepare, whose work was thrown away


def test_a_classifier_torch_reads_under_such_a_path_still_loads_without_proc(tmp_path, tiny_models, small_sample,
                                                                             run_cli, monkeypatch):
    """torch.load opens the file with Python's own functions: only a name given to a library that takes
    UTF-8 text only is refused there (the refusal first took in every models file)."""
    import os
    import shutil

    folder = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    folder.mkdir()
    classifier = Path(shutil.copy(tiny_models / "500_model_tiny.pth", folder))
    without_proc(monkeypatch)
    prepared, embedded = small_sample
    code, message = run_cli("predict", "--prepared", prepared, "--embeddings", embedded, "--outdir", tmp_path / "p",
                            "--classifier", classifier)
    assert code == 0, message


def test_esm2_memory_mapped_under_such_a_path_without_proc_says_so(tmp_path, tiny_models, monkeypatch):
    """torch's memory map takes the name as UTF-8: its error read as a damaged checkpoint."""
    import os
    import shutil

    from virnucpro.encoders import esm2
    from virnucpro.errors import ModelsError

    folder = Path(os.fsdecode(bytes(tmp_path) + b"/mod\xe9ls"))
    folder.mkdir()
    checkpoint = Path(shutil.copy(tiny_models / "esm2_tiny.pt", folder))
    without_proc(monkeypatch)
    with pytest.raises(ModelsError) as refused:
        esm2._read_checkpoint(checkpoint)
    assert "is no UTF-8 text" in str(refused.value) and "corrupt" not in str(refused.value), str(refused.value)


def test_dash_as_the_models_variable_is_refused(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VIRNUCPRO_MODELS", "-")
    code, message = run_cli("models", "check")
    assert code == 2 and "VIRNUCPRO_MODELS is '-'" in message and not (tmp_path / "-").exists(), message


def test_a_models_folder_to_download_into_is_refused_before_prepare(tmp_path, run_cli, monkeypatch):
    """Models still to download: the check came after prepare and the download (gigabytes into a
    folder the libraries cannot use)."""
    import os

    models = Path(os.fsdecode(bytes(tmp_path) + b"/empt\xe9"))
    without_proc(monkeypatch)
    fasta = tmp_path / "a.fa"
    fasta.write_text(">a\n" + "ATGAAACCCGGGTTTAAA" * 20 + "\n")
    code, message = run_cli("run", fasta, "--outdir", tmp_path / "out", "--models", models, "--device", "cpu")
    assert code == 4 and "is no UTF-8 text" in " ".join(message.split()) and "prepared" not in message, message


def test_with_proc_no_models_path_is_opened_to_check_it():
    """The check opened the DNABERT-S folder, which a shared install may not let be listed (exit 10)."""
    import os

    from virnucpro.models import store

    assert os.path.isdir("/proc/self/fd")
    store.refuse_out_of_reach([Path(os.fsdecode(b"/nonexistent/mod\xe9ls"))])


@pytest.mark.parametrize("command", [["models", "check"], ["models", "tiny"], ["models", "download", "--dest"]])
def test_models_commands_refuse_a_folder_the_libraries_cannot_take_without_proc(tmp_path, run_cli, monkeypatch,
                                                                                  command):
    """`models check` said "all models present and verified", and `models tiny` wrote them, under a path
    embed and run then refused (exit 4): every models command refuses it at once."""
    import os

    without_proc(monkeypatch)
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/mod\xe9"))
    code, message = run_cli(*command, folder)
    assert code == 4 and "is no UTF-8 text" in " ".join(message.split()), message
    assert not folder.exists(), message
