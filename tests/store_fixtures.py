"""Helpers for the model-store tests: a scriptable HTTP server on 127.0.0.1, pickle makers and a
second process holding a folder's lock.

The server serves in-memory files and can misbehave on request: drop the connection mid-file,
answer 5xx, ignore Range, redirect with Hugging Face-style hash headers. Nothing here ever talks to
a real host.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import urlparse

import pytest

#: The tiny models' ESM-2 weights and the fp16 copy derived from them, by name in a models folder.
ESM2_WEIGHTS = "esm2_tiny.pt"
ESM2_COPY = "esm2_tiny.fp16.safetensors"


@pytest.fixture(autouse=True)
def fresh_model_process_state():
    """Each test starts as a new process would: no model hashes remembered and no "said once per
    process" notes said (autouse in every test module that imports it)."""
    from virnucpro.encoders import esm2
    from virnucpro.models import store

    store.remembered_hashes.clear()
    esm2._told.clear()
    yield
    store.remembered_hashes.clear()


def range_not_satisfiable(handler, size: int) -> None:
    """The 416 answer to a Range that starts at or past the end of a file of `size` bytes."""
    handler.send_response(416)
    handler.send_header("Content-Range", f"bytes */{size}")
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeHost:
    """A local HTTP server. Configure the dicts, then use `.url`."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.headers: dict[str, dict[str, str]] = {}     # extra headers per path
        self.redirects: dict[str, tuple[str, dict[str, str]]] = {}  # path -> (target, headers)
        self.drop_once: set[str] = set()                 # send half, then close, once
        self.drop_always: set[str] = set()
        self.errors: dict[str, int] = {}                 # path -> number of 503s still to send
        self.no_range: set[str] = set()                  # ignore Range: always answer 200
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.lock = threading.Lock()
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = urlparse(self.path).path
                with host.lock:
                    host.requests.append((path, self.headers.get("Range")))
                    if path in host.redirects:
                        target, extra = host.redirects[path]
                        self.send_response(302)
                        self.send_header("Location", target)
                        for key, value in extra.items():
                            self.send_header(key, value)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    if host.errors.get(path, 0) > 0:
                        host.errors[path] -= 1
                        body = b"busy"
                        self.send_response(503)
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                        return
                    data = host.files.get(path)
                    drop = path in host.drop_always or path in host.drop_once
                    host.drop_once.discard(path)
                    honour_range = path not in host.no_range
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                ranged = self.headers.get("Range")
                if ranged and honour_range:
                    start = int(ranged.split("=", 1)[1].split("-", 1)[0])
                    if start >= len(data):
                        range_not_satisfiable(self, len(data))
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                for key, value in host.headers.get(path, {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if drop:
                    self.wfile.write(body[: max(1, len(body) // 2)])
                    self.wfile.flush()
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def ranged_requests(self, path: str) -> list[str]:
        return [r for p, r in self.requests if p == path and r]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class _RunsCommand:
    """Unpickling this calls os.system: the classic malicious checkpoint."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def malicious_pickle_bytes(marker: str, protocol: int = 2) -> bytes:
    return pickle.dumps(_RunsCommand(f"touch {marker}"), protocol=protocol)


def save_malicious_torch(path, marker: str, legacy: bool = False) -> None:
    """A torch checkpoint (zip format, or the legacy format) whose unpickling runs `touch marker`."""
    import torch

    torch.save(_RunsCommand(f"touch {marker}"), str(path), _use_new_zipfile_serialization=not legacy)


@contextlib.contextmanager
def folder_held_by_another_process(folder) -> Iterator[int]:
    """A real second process holding virnucpro's lock on `folder` until the block ends; yields its
    pid. It says "ready" on stdout once it holds the lock, and lets go when its stdin closes."""
    code = ("import sys; from pathlib import Path; from virnucpro.outdir import folder_lock\n"
            "with folder_lock(Path(sys.argv[1]), 'models folder'):\n"
            "    print('ready', flush=True); sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()


def pins_matching(directory) -> dict:
    """The pin table with every pin replaced by the hashes of the file of that name in `directory`
    (the standard layout); DNABERT-S's `model.safetensors`, which the real table lacks, is added
    when present. Monkeypatch `virnucpro.models.pins.SOURCES` with it: those files then count
    as the published models."""
    import dataclasses
    from pathlib import Path

    from virnucpro.models import pins

    table = {}
    for role, source in pins.SOURCES.items():
        specs = list(source.files)
        if role == "dnabert_s":
            specs.append(pins.FileSource("DNABERT-S/model.safetensors", "https://huggingface.co", "x"))
        present = [spec for spec in specs if (Path(directory) / spec.relpath).is_file()]
        table[role] = dataclasses.replace(source, files=tuple(
            _pinned_like(spec, (Path(directory) / spec.relpath).read_bytes()) for spec in present))
    return table


def _pinned_like(spec, data: bytes):
    """`spec` pinned to `data` the way the real table pins it (git blob id for the classifiers)."""
    import dataclasses

    if spec.git_sha1:
        return dataclasses.replace(spec, git_sha1=git_blob_sha1(data))
    return dataclasses.replace(spec, sha256=sha256(data))
