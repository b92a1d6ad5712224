"""Third review of the model store: `models download`, `models check` and `models tiny` agree.

Every transfer goes to a local HTTP server on 127.0.0.1 (`store_fixtures.FakeHost`, reused through
`test_download`), never a real host.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from store_fixtures import folder_held_by_another_process, range_not_satisfiable  # noqa: E402
from test_download import (fake_sources, fast_retries, host, local_host_without_proxy,  # noqa: E402,F401
                           payloads, serve_all)

from virnucpro.errors import ExitCode  # noqa: E402
from virnucpro.models import download as dl  # noqa: E402
from virnucpro.models import pins as model_pins  # noqa: E402
from virnucpro.models import store  # noqa: E402

STRAY = "DNABERT-S/pytorch_model.bin"  # the fake table pins model.safetensors: the .bin is not published


@pytest.fixture
def served(host, payloads, monkeypatch):
    """The fake host serving every file, with the pins matching what it serves."""
    serve_all(host, payloads)
    monkeypatch.setattr(model_pins, "SOURCES", fake_sources(payloads))
    return host


# ------------------------------------------------------------------ 1. a stray weights file

def test_a_stray_weights_file_is_refused_by_download_and_check_says_move_it(served, tmp_path, run_cli):
    """Before: download said "models ready" (exit 0) while check refused the folder and hinted the
    very download that had just passed: a loop."""
    dest = tmp_path / "m9"
    assert run_cli("models", "download", "--dest", dest, "--mirror", served.url)[0] == 0
    stray = dest / STRAY
    stray.write_bytes(b"weights staged by hand")
    code, err = run_cli("models", "download", "--dest", dest, "--only", "dnabert_s", "--mirror", served.url)
    assert code == ExitCode.MODELS, err
    assert str(stray) in err and "move it away" in err and "models ready" not in err, err
    code, err = run_cli("models", "check", dest)
    assert code == ExitCode.MODELS, err
    fix = err.split("fix:", 1)[1]
    assert "move" in fix and str(stray) in fix, err
    assert stray.read_bytes() == b"weights staged by hand"
    stray.rename(tmp_path / "moved.bin")  # what the hint says: then everything agrees
    assert run_cli("models", "check", dest)[0] == 0


def test_a_stray_weights_file_is_refused_before_any_transfer(served, tmp_path, run_cli):
    dest = tmp_path / "m"
    (dest / "DNABERT-S").mkdir(parents=True)
    (dest / STRAY).write_bytes(b"mine")
    code, err = run_cli("models", "download", "--dest", dest, "--mirror", served.url)
    assert code == ExitCode.MODELS and str(dest / STRAY) in err, err
    assert not served.requests and (dest / STRAY).read_bytes() == b"mine"


def test_a_hand_staged_file_failing_its_pin_gets_a_move_hint_from_check(served, tmp_path, run_cli):
    """`models download` refuses to replace a file it did not write: check's hint says so first."""
    dest = tmp_path / "m"
    assert run_cli("models", "download", "--dest", dest, "--mirror", served.url)[0] == 0
    manifest = json.loads((dest / "manifest.json").read_text())
    del manifest["models"]["classifier_300"]
    (dest / "manifest.json").write_text(json.dumps(manifest))
    (dest / "300_model.pth").write_bytes((dest / "500_model.pth").read_bytes())
    code, err = run_cli("models", "check", dest)
    assert code == ExitCode.MODELS
    assert "move" in err.split("fix:", 1)[1] and str(dest / "300_model.pth") in err.split("fix:", 1)[1], err


# ------------------------------------------------------------------ 8. `models tiny` stopped by a full disk

def _fail_on_third_file(monkeypatch):
    """`models tiny` writing its third file into the folder finds the disk full."""
    import errno

    from virnucpro.models import tiny

    written = tiny.write_atomically
    calls = []

    def write(target, data):
        calls.append(target)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        written(target, data)

    monkeypatch.setattr(tiny, "write_atomically", write)


def test_a_tiny_run_stopped_by_a_full_disk_is_a_tiny_folder_to_complete(tmp_path, run_cli, monkeypatch):
    """Before: model files without manifest.json, a folder the hints sent to `models download`."""
    folder = tmp_path / "tiny"
    with monkeypatch.context() as patch:
        _fail_on_third_file(patch)
        code, err = run_cli("models", "tiny", folder)
    assert code == ExitCode.OUTPUT_WRITE and "the disk is full" in err, err
    assert store.is_tiny_folder(folder)
    code, err = run_cli("models", "check", folder)
    assert code == ExitCode.MODELS and f"virnucpro models tiny {folder}" in err, err
    assert "models download" not in err, err
    code, err = run_cli("models", "download", "--dest", folder, "--mirror", "http://127.0.0.1:9")
    assert code == ExitCode.USAGE and "tiny test models" in err, err
    assert run_cli("models", "tiny", folder)[0] == 0
    assert run_cli("models", "check", folder)[0] == 0


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 19328 vs 19216"),
    Exception("Error while serializing: I/O error: No space left on device (os error 28)"),
], ids=["torch", "safetensors"])
def test_a_full_temporary_folder_says_the_disk_is_full(tmp_path, run_cli, monkeypatch, failure):
    import shutil

    from virnucpro.models import tiny

    def fail(directory):
        raise failure

    monkeypatch.setattr(tiny, "_write_models", fail)
    monkeypatch.setattr(tiny.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**6, 10**6, 0))
    code, err = run_cli("models", "tiny", tmp_path / "t")
    assert code == ExitCode.OUTPUT_WRITE, err
    assert "the disk is full" in err and "enforce fail" not in err and "bug" not in err, err
    assert not (tmp_path / "t").exists()


# ------------------------------------------------------------------ 3. --mirror validation

@pytest.mark.parametrize("mirror", [
    "http://[::1", "http://h:abc", "http://h:99999", "http://h.example/x?token=1", "http://h.example/x#top",
    "http://user:secret@h.example/", "https://secret@h.example", "http://h.example /x", "http://:80/",
    "http://user:secret@[::1",
])
def test_a_bad_mirror_is_a_usage_error_before_anything_is_touched(tmp_path, run_cli, mirror):
    """Before: `[::1` was a crash (exit 1), `h:abc` retried for 20 s, a query had the file path
    appended after it, and a password in the URL was printed."""
    dest = tmp_path / "m"
    code, err = run_cli("models", "download", "--dest", dest, "--only", "classifier_500", "--mirror", mirror)
    assert code == ExitCode.USAGE, err
    assert "--mirror" in err and "secret" not in err and "bug" not in err, err
    assert not dest.exists()


def test_a_good_mirror_with_a_path_and_port_is_accepted():
    dl.check_mirror("http://127.0.0.1:8080/virnucpro/")
    dl.check_mirror("https://[::1]:8443/m")


# ------------------------------------------------------------------ a scripted server (4, 2, 5)

class Scripted:
    """A local HTTP server for one file at `/f`: each GET takes the next scripted reply, then the
    file (with Range support). A reply: {"status", "headers"} (an error answer), {"cut": N} (the
    first N bytes with no Content-Length, then the connection closes), {"drop": N} (a full
    Content-Length, N bytes, closed), {"wrong": True} (other bytes), {"redirect": URL},
    {"stall": S} (S seconds before any answer), {"length": TEXT} (the file with that Content-Length,
    then the connection closes)."""

    def __init__(self, data: bytes) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.data, self.replies, self.requests = data, [], []
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                host.requests.append(self.headers.get("Range"))
                reply = host.replies.pop(0) if host.replies else {}
                host.answer(self, reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # a client gone after a stall: not news
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/f"

    def answer(self, handler, reply: dict) -> None:
        import time

        if reply.get("stall"):
            time.sleep(reply["stall"])
        if "status" in reply or "redirect" in reply:
            handler.send_response(reply.get("status", 302))
            for key, value in {**reply.get("headers", {}), **({"Location": reply["redirect"]}
                                                              if "redirect" in reply else {})}.items():
                handler.send_header(key, value)
            handler.send_header("Content-Length", "4")
            handler.end_headers()
            handler.wfile.write(b"nope")
            return
        data = self.data[:-10] + b"X" * 10 if reply.get("wrong") else self.data
        start = int(handler.headers["Range"].split("=")[1].split("-")[0]) if handler.headers.get("Range") else 0
        if start >= len(data):
            range_not_satisfiable(handler, len(data))
            return
        handler.send_response(206 if start else 200)
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        body = data[start:]
        if "cut" in reply or "length" in reply:
            handler.send_header("Connection", "close")
        if "cut" not in reply:
            handler.send_header("Content-Length", reply.get("length", str(len(body))))
        handler.end_headers()
        handler.wfile.write(body[: reply.get("cut", reply.get("drop", len(body)))])
        handler.close_connection = True

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted(payloads):
    server = Scripted(payloads["c300"])
    yield server
    server.close()


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """The waits between tries, recorded instead of slept."""
    waited: list[float] = []
    monkeypatch.setattr(dl.time, "sleep", waited.append)
    return waited


def _fetch(scripted, tmp_path, **options) -> str:
    from store_fixtures import git_blob_sha1

    return dl.fetch(scripted.url, tmp_path / "c.pth", git_sha1=git_blob_sha1(scripted.data), **options)


# ------------------------------------------------------------------ 4. a body cut short

def test_a_body_cut_short_without_content_length_is_resumed_not_a_mismatch(scripted, tmp_path, capsys):
    """Before: "checksum mismatch ... pins need an update", the .part deleted."""
    scripted.replies = [{"cut": len(scripted.data) // 2}]
    _fetch(scripted, tmp_path)
    assert (tmp_path / "c.pth").read_bytes() == scripted.data
    assert scripted.requests == [None, f"bytes={len(scripted.data) // 2}-"]
    assert "mismatch" not in capsys.readouterr().err


def test_a_cut_body_whose_rest_cannot_be_had_now_is_kept_for_the_next_run(scripted, tmp_path, sleeps):
    half = len(scripted.data) // 2
    scripted.replies = [{"cut": half}, {"status": 503}, {"status": 503}]
    with pytest.raises(dl.ModelsError, match="HTTP 503") as info:
        _fetch(scripted, tmp_path, attempts=2)
    assert "mismatch" not in str(info.value) and (tmp_path / "c.pth.part").stat().st_size == half


def test_a_body_of_unannounced_size_that_is_whole_and_wrong_is_a_mismatch(scripted, tmp_path):
    scripted.replies = [{"cut": len(scripted.data), "wrong": True}, {"wrong": True}]
    with pytest.raises(dl.ModelsError, match="checksum mismatch") as info:
        _fetch(scripted, tmp_path)
    assert info.value.code == ExitCode.MODELS and not (tmp_path / "c.pth.part").exists()
    assert scripted.requests == [None, f"bytes={len(scripted.data)}-"]  # the 416 says it was whole


def test_a_resume_within_the_run_that_fails_the_checksum_starts_over_once(scripted, tmp_path, capsys):
    """docs/models.md: a resumed file that fails its checksum is downloaded once more from the start."""
    half = len(scripted.data) // 2
    scripted.replies = [{"drop": half}, {"wrong": True}]
    _fetch(scripted, tmp_path)
    assert (tmp_path / "c.pth").read_bytes() == scripted.data
    assert scripted.requests == [None, f"bytes={half}-", None]
    assert "starting over" in capsys.readouterr().err
    scripted.requests.clear()
    scripted.replies = [{"drop": half}, {"wrong": True}, {"drop": half}, {"wrong": True}]
    (tmp_path / "again").mkdir()
    with pytest.raises(dl.ModelsError, match="checksum mismatch"):  # once, not forever
        _fetch(scripted, tmp_path / "again")
    assert len(scripted.requests) == 4


# ------------------------------------------------------------------ 2. Retry-After

def test_retry_after_in_seconds_is_honoured(scripted, tmp_path, sleeps):
    scripted.replies = [{"status": 503, "headers": {"Retry-After": "7"}}, {"status": 408}]
    _fetch(scripted, tmp_path)
    assert sleeps[0] == 7 and len(scripted.requests) == 3


def test_retry_after_as_an_http_date_is_honoured(scripted, tmp_path, sleeps):
    from email.utils import formatdate
    import time

    scripted.replies = [{"status": 429, "headers": {"Retry-After": formatdate(time.time() + 30, usegmt=True)}}]
    _fetch(scripted, tmp_path)
    assert 25 <= sleeps[0] <= 31


def test_a_retry_after_beyond_the_cap_gives_up_saying_when(scripted, tmp_path, sleeps):
    scripted.replies = [{"status": 503, "headers": {"Retry-After": "3600"}}]
    with pytest.raises(dl.ModelsError, match="retry") as info:
        _fetch(scripted, tmp_path)
    assert "3600" in str(info.value) or "60 min" in str(info.value)
    assert "UTC" in str(info.value) and not sleeps and len(scripted.requests) == 1


@pytest.mark.parametrize("value", ["9" * 400, "99999999999999999999", "\u00b2"])
def test_a_retry_after_out_of_any_range_is_no_crash(scripted, tmp_path, sleeps, value):
    """A 400-digit value overflowed the date of the message; '\u00b2'.isdigit() is True but float()
    refuses it: both were exit 1, "a bug"."""
    scripted.replies = [{"status": 503, "headers": {"Retry-After": value}}]
    try:
        _fetch(scripted, tmp_path)
    except dl.ModelsError as exc:  # far beyond the cap: give up, saying when
        assert "UTC" in str(exc)
    else:  # not a number: the usual back-off
        assert sleeps and sleeps[0] < dl.RETRY_AFTER_CAP_SECONDS


@pytest.mark.parametrize("value", ["\u00b2", "\u0663"])
def test_a_content_length_of_no_ascii_digits_is_no_crash(scripted, tmp_path, value):
    """A review's case: '\u00b2'.isdigit() is True but int() refuses it: exit 1, "a bug", with a
    traceback. A length that is no number is no length: the body is read to its end and checked."""
    scripted.replies = [{"length": value}]
    _fetch(scripted, tmp_path)
    assert (tmp_path / "c.pth").read_bytes() == scripted.data


# ------------------------------------------------------------------ 5. messages name the actual cause

def test_a_host_that_connects_but_does_not_answer_is_not_called_unreachable(scripted, tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "TIMEOUT_SECONDS", 0.3)
    scripted.replies = [{"stall": 1.5}, {"stall": 1.5}]
    with pytest.raises(dl.ModelsError) as info:
        _fetch(scripted, tmp_path, attempts=2)
    assert "no answer within 0.3 s after connecting" in str(info.value)
    assert "cannot reach" not in str(info.value) and "offline" not in str(info.value)


def test_a_failing_proxy_is_named_without_its_password(payloads, tmp_path, monkeypatch):
    from store_fixtures import closed_port_url, git_blob_sha1

    proxy = closed_port_url().replace("http://", "http://user:pw-secret@")
    monkeypatch.setenv("HTTPS_PROXY", proxy)
    monkeypatch.delenv("https_proxy", raising=False)
    with pytest.raises(dl.ModelsError) as info:
        dl.fetch("https://mirror.example.org/f", tmp_path / "f", git_sha1=git_blob_sha1(b"x"), attempts=1)
    text = str(info.value)
    assert "cannot reach the proxy" in text and "HTTPS_PROXY" in text and "pw-secret" not in text, text


@pytest.mark.parametrize("target", ["ftp://files.example.org/c.pth", "file:///etc/passwd"])
def test_a_redirect_to_another_scheme_names_the_redirect(scripted, tmp_path, target):
    """file:// was refused by urllib itself, as 'HTTP 302 ... from file:///etc/passwd' with the hint
    that the mirror must serve the original paths."""
    scripted.replies = [{"redirect": target}]
    with pytest.raises(dl.ModelsError) as info:
        _fetch(scripted, tmp_path)
    text = str(info.value)
    assert f"redirected the download to {target}, which is not an http(s) URL" in text, text
    assert "cannot reach" not in text and "HTTP 302" not in text, text
    assert len(scripted.requests) == 1


def test_the_404_hint_mentions_the_mirror_only_when_one_was_given(scripted, tmp_path):
    scripted.replies = [{"status": 404}, {"status": 404}]
    with pytest.raises(dl.ModelsError) as info:
        _fetch(scripted, tmp_path)
    assert "a --mirror must" not in str(info.value) and "the mirror" not in str(info.value)
    assert "report it" in str(info.value)
    with pytest.raises(dl.ModelsError) as info:
        _fetch(scripted, tmp_path, mirror=scripted.url.rsplit("/", 1)[0])
    assert f"the mirror {scripted.url.rsplit('/', 1)[0]} must serve the original paths" in str(info.value)


# ------------------------------------------------------------------ 7. check while a download runs

def test_check_during_a_download_says_it_is_in_progress(served, tmp_path, run_cli):
    dest = tmp_path / "m"
    assert run_cli("models", "download", "--dest", dest, "--only", "esm2", "--mirror", served.url)[0] == 0
    with folder_held_by_another_process(dest) as pid:
        code, err = run_cli("models", "check", dest)
    assert code == ExitCode.MODELS, err
    assert "in progress" in err and f"pid {pid}" in err, err
    assert "models download" not in err.split("fix:", 1)[1], err
    code, err = run_cli("models", "check", dest)  # no holder: the usual hint
    assert code == ExitCode.MODELS and "models download" in err, err


def test_a_redirect_loop_is_one_line_naming_it(scripted, tmp_path):
    scripted.replies = [{"redirect": scripted.url}] * 12
    with pytest.raises(dl.ModelsError) as info:
        _fetch(scripted, tmp_path, attempts=1)
    assert "keeps redirecting it (in a loop, or more than 10 times)" in info.value.message, info.value.message
    assert "\n" not in info.value.message


def test_a_redirect_to_a_host_that_cannot_be_reached_names_that_host(scripted, tmp_path):
    """Hugging Face answers and redirects the file to a CDN: a firewall that lets only the first
    host through made the message say the first host could not be reached."""
    from store_fixtures import closed_port_url

    cdn = closed_port_url()
    scripted.replies = [{"redirect": cdn + "/c.pth"}]
    with pytest.raises(dl.ModelsError) as info:
        _fetch(scripted, tmp_path, attempts=1)
    text, first = str(info.value), dl._host(scripted.url)
    assert f"cannot reach {dl._host(cdn)}, where {first} redirected the download" in text, text
    assert f"reach {dl._host(cdn)} as well as {first}" in info.value.hint, info.value.hint
    assert f"cannot reach {first}" not in text, text
