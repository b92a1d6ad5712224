"""`virnucpro models download`: fetch the four models into a models directory, safely.

Standard library only (urllib). Each file goes to `<file>.part`, resumed with an HTTP Range request
after an interruption (within a run: up to `ATTEMPTS` tries; across runs: the `.part` is kept),
verified, then renamed into place. One download per directory at a time (`.download.lock`).

Verification, per file, against everything known:
- a pinned sha256 (DNABERT-S weights) or a pinned git blob id (the classifiers, from the GitHub tree
  of the pinned commit);
- the server's own hash where it sends one: Hugging Face's `X-Linked-Etag` (sha256 of an LFS file,
  on the redirect), or, on a response carrying `X-Repo-Commit`, an `ETag` that is a sha256 (LFS) or
  a git blob id (small files);
- nothing more is known for ESM-2 (fair-esm publishes no checksum): its sha256 is recorded on
  first download and verified from then on.
A downloaded classifier must also pass the restricted loader before it counts as present.

`--mirror URL` replaces the scheme and host of every source; the paths stay, e.g.
`URL/fair-esm/models/esm2_t36_3B_UR50D.pt`, `URL/zhihan1996/DNABERT-S/resolve/<rev>/config.json`,
`URL/Li-Jing-1997/VirNucPro/<commit>/300_model.pth`.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from virnucpro import __version__
from virnucpro.console import Progress, info, warn
from virnucpro.errors import ModelsError
from virnucpro.store import (ROLES, _HashCache, _staging_hint, models_dir,
                             read_manifest, sha256_file, write_manifest)

ATTEMPTS = 5            # tries per file within one run (connection drops, 5xx, timeouts)
BACKOFF_SECONDS = 2.0   # sleep attempt * BACKOFF_SECONDS between tries
TIMEOUT_SECONDS = 60.0  # socket timeout per read
CHUNK = 1024 * 1024
LOCK_NAME = ".download.lock"

DNABERT_S_REPO = "zhihan1996/DNABERT-S"
DNABERT_S_REVISION = "2efd650282ec5d5ab377c787c76ea56b723f6b7c"
VIRNUCPRO_REPO = "Li-Jing-1997/VirNucPro"
VIRNUCPRO_COMMIT = "0f93f2755a7ea1acd3ff1bcf182892f960ef3326"


@dataclass(frozen=True)
class FileSource:
    relpath: str                 # where it goes inside the models directory
    base: str                    # scheme://host, replaced by --mirror
    path: str                    # path on the host, kept under --mirror
    sha256: str | None = None    # pinned content hash, when known
    git_sha1: str | None = None  # pinned git blob id, when known


@dataclass(frozen=True)
class RoleSource:
    role: str
    name: str
    source: str
    revision: str | None
    files: tuple[FileSource, ...]


def _hf(filename: str, sha256: str | None = None) -> FileSource:
    return FileSource(f"DNABERT-S/{filename}", "https://huggingface.co",
                      f"{DNABERT_S_REPO}/resolve/{DNABERT_S_REVISION}/{filename}", sha256=sha256)


SOURCES: dict[str, RoleSource] = {
    "esm2": RoleSource(
        "esm2", "esm2_t36_3B_UR50D", "https://dl.fbaipublicfiles.com/fair-esm", None,
        (FileSource("esm2_t36_3B_UR50D.pt", "https://dl.fbaipublicfiles.com",
                    "fair-esm/models/esm2_t36_3B_UR50D.pt"),
         FileSource("esm2_t36_3B_UR50D-contact-regression.pt", "https://dl.fbaipublicfiles.com",
                    "fair-esm/regression/esm2_t36_3B_UR50D-contact-regression.pt"))),
    "dnabert_s": RoleSource(
        "dnabert_s", DNABERT_S_REPO, f"https://huggingface.co/{DNABERT_S_REPO}", DNABERT_S_REVISION,
        (_hf("config.json"),
         _hf("pytorch_model.bin",
             sha256="f3cfc3d0541859df64759e758cc4bc40fe1d5760799a7d098a9f9f09501c1e5f"),
         _hf("tokenizer.json"),
         _hf("tokenizer_config.json"),
         _hf("special_tokens_map.json"))),
    "classifier_300": RoleSource(
        "classifier_300", "300_model.pth", f"https://github.com/{VIRNUCPRO_REPO}", VIRNUCPRO_COMMIT,
        (FileSource("300_model.pth", "https://raw.githubusercontent.com",
                    f"{VIRNUCPRO_REPO}/{VIRNUCPRO_COMMIT}/300_model.pth",
                    git_sha1="a0b5b85e7c1e44f00cde146d091beb82b2c8e855"),)),
    "classifier_500": RoleSource(
        "classifier_500", "500_model.pth", f"https://github.com/{VIRNUCPRO_REPO}", VIRNUCPRO_COMMIT,
        (FileSource("500_model.pth", "https://raw.githubusercontent.com",
                    f"{VIRNUCPRO_REPO}/{VIRNUCPRO_COMMIT}/500_model.pth",
                    git_sha1="fc35d5ef9f1f4564eea7036f34f4f8ec6000d33d"),)),
}


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------

def download(dest: Path | None = None, only: str | None = None, mirror: str | None = None) -> None:
    """Download every role (or `only` one) into `dest` (default: `models_dir(None)`)."""
    if only is not None and only not in ROLES:
        raise ModelsError(f"unknown model {only!r} for --only; choose one of {', '.join(ROLES)}")
    directory = models_dir(dest)
    download_roles(directory, [only] if only else list(ROLES), mirror=mirror)
    info(f"models ready in {directory}"
         + ("" if dest or os.environ.get("VIRNUCPRO_MODELS") else
            " (the default location; on a cluster, stage a shared directory with --dest and use "
            "--models/VIRNUCPRO_MODELS)"))


def download_roles(directory: Path, roles: Iterable[str], mirror: str | None = None,
                   sources: dict[str, RoleSource] | None = None) -> None:
    """Download `roles` into `directory`, one file at a time under the directory's lock."""
    sources = sources or SOURCES
    if mirror is not None:
        parsed = urllib.parse.urlparse(mirror)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ModelsError(f"--mirror must be an http(s) URL, got {mirror!r}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelsError(f"cannot create models directory {directory}: {exc}") from None
    with _lock(directory):
        for role in roles:
            entry = _download_role(directory, sources[role], mirror)
            manifest = read_manifest(directory) or {"models": {}}
            manifest["models"][role] = entry
            try:
                write_manifest(directory, manifest)
            except OSError as exc:
                raise ModelsError(f"cannot write {directory}/manifest.json: {exc}") from None


@contextlib.contextmanager
def _lock(directory: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one download at a time is up to the user
        yield
        return
    path = directory / LOCK_NAME
    try:
        handle = open(path, "a+")
    except OSError as exc:
        raise ModelsError(f"cannot create lock file {path}: {exc}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info(f"another virnucpro download into {directory} is running; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as exc:  # e.g. a file system without flock support
            warn(f"cannot lock {path} ({exc}); make sure no other download runs into {directory}")
        yield


# --------------------------------------------------------------------------------------------
# One role
# --------------------------------------------------------------------------------------------

def _url(spec: FileSource, mirror: str | None) -> str:
    return f"{(mirror or spec.base).rstrip('/')}/{spec.path}"


def _download_role(directory: Path, source: RoleSource, mirror: str | None) -> dict:
    manifest = read_manifest(directory) or {"models": {}}
    old = manifest["models"].get(source.role) or {}
    recorded = old.get("sha256", {}) if not old.get("tiny") else {}
    cache = _HashCache(directory)
    hashes: dict[str, str] = {}
    urls: dict[str, str] = {}
    try:
        for spec in source.files:
            url = _url(spec, mirror)
            urls[spec.relpath] = url
            target = directory / spec.relpath
            if target.is_file():
                digest = _existing_ok(directory, spec, recorded.get(spec.relpath), cache)
                if digest is not None and source.role.startswith("classifier_"):
                    try:
                        _validate_classifier(target, delete=False)
                    except ModelsError as exc:
                        warn(f"{exc.message}; downloading it again")
                        digest = None
                if digest is not None:
                    hashes[spec.relpath] = digest
                    continue
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = fetch(url, target, sha256=spec.sha256, git_sha1=spec.git_sha1,
                           label=f"{source.role} ({spec.relpath})",
                           validate=_validate_classifier if source.role.startswith("classifier_")
                           else None, models_directory=directory, roles=[source.role])
            cache.record(spec.relpath, target, digest)
            hashes[spec.relpath] = digest
    finally:
        cache.save()
    return {
        "files": [spec.relpath for spec in source.files],
        "sha256": hashes,
        "source": mirror.rstrip("/") if mirror else source.source,
        "revision": source.revision,
        "tiny": False,
        "name": source.name,
        "urls": urls,
    }


def _existing_ok(directory: Path, spec: FileSource, recorded: str | None,
                 cache: _HashCache) -> str | None:
    """sha256 of an already present file if it checks out, else None (it will be replaced)."""
    target = directory / spec.relpath
    if spec.git_sha1:
        digest, blob = sha256_file(target, git_sha1=True)
        if blob != spec.git_sha1 or (spec.sha256 and digest != spec.sha256):
            warn(f"{target} does not match the pinned checksum; downloading it again")
            return None
        return digest
    digest = cache.sha256(directory, spec.relpath)
    expected = spec.sha256 or recorded
    if expected and digest != expected.lower():
        warn(f"{target} does not match its {'pinned' if spec.sha256 else 'recorded'} sha256; "
             f"downloading it again")
        return None
    if not expected:
        info(f"keeping existing {target} (sha256 {digest[:12]}…, nothing to verify it against)")
    return digest


def _validate_classifier(path: Path, delete: bool = True) -> None:
    """The restricted loader must accept a classifier before it counts as present."""
    from virnucpro.classifier import load_classifier

    try:
        load_classifier(path)
    except ModelsError as exc:
        if not delete:
            raise
        path.unlink(missing_ok=True)
        raise ModelsError(f"downloaded classifier failed validation and was discarded: "
                          f"{exc.message}") from None


# --------------------------------------------------------------------------------------------
# One file
# --------------------------------------------------------------------------------------------

class _Interrupted(Exception):
    """The transfer stopped early; the .part file is kept for a resume."""


class _RecordingRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects (keeping the Range header) and remembers each hop's headers."""

    def __init__(self) -> None:
        super().__init__()
        self.hops: list = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401 - urllib API
        self.hops.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX40 = re.compile(r"[0-9a-f]{40}")


def _clean_etag(value: str | None) -> str:
    value = (value or "").strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"').lower()


def server_hashes(header_sets: Iterable) -> tuple[str | None, str | None]:
    """(sha256, git blob id) a Hugging Face-style server vouches for, from a redirect chain."""
    sha256 = git_sha1 = None
    for headers in header_sets:
        linked = _clean_etag(headers.get("X-Linked-Etag"))
        if _HEX64.fullmatch(linked):
            sha256 = sha256 or linked
        if headers.get("X-Repo-Commit"):
            etag = _clean_etag(headers.get("ETag"))
            if _HEX64.fullmatch(etag):
                sha256 = sha256 or etag
            elif _HEX40.fullmatch(etag):
                git_sha1 = git_sha1 or etag
    return sha256, git_sha1


def _host(url: str) -> str:
    return urllib.parse.urlparse(url).netloc or url


def fetch(url: str, target: Path, sha256: str | None = None, git_sha1: str | None = None,
          label: str | None = None, validate=None, attempts: int | None = None,
          models_directory: Path | None = None, roles: list[str] | None = None) -> str:
    """Download `url` to `target` atomically (via `target.part`, resumable); return its sha256.

    Raises `ModelsError` on HTTP errors (after retries for 5xx), unreachable hosts, checksum
    mismatches (the .part is deleted) and validation failures.
    """
    attempts = attempts or ATTEMPTS
    label = label or target.name
    part = target.with_name(target.name + ".part")
    expected_sha, expected_blob = sha256, git_sha1
    restarted_clean = not part.exists()
    last_error = "unknown error"
    ever_connected = False
    server_sha = server_blob = None
    attempt = 0
    while True:
        attempt += 1
        try:
            server_sha, server_blob = _transfer(url, part, label)
            ever_connected = True
        except _Interrupted as exc:
            ever_connected = True
            last_error = str(exc)
        except urllib.error.HTTPError as exc:
            ever_connected = True
            if exc.code == 416 and part.exists():  # nothing left to send: the .part may be whole
                server_sha, server_blob = server_hashes([exc.headers])
                total = _total_from_content_range(exc.headers.get("Content-Range"))
                if total is not None and total == part.stat().st_size:
                    break
                part.unlink()
                last_error = "server refused to resume"
            elif exc.code >= 500 or exc.code == 429:
                last_error = f"HTTP {exc.code} {exc.reason}"
            else:
                raise ModelsError(f"cannot download {label}: HTTP {exc.code} {exc.reason} from {url}",
                                  hint="a --mirror must serve the original paths under its URL"
                                  ) from None
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError,
                http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            last_error = f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
        except OSError as exc:  # local disk trouble: retrying will not help
            raise ModelsError(f"cannot write {part}: {exc}") from None
        else:
            break
        if attempt >= attempts:
            if not ever_connected:
                raise ModelsError(f"cannot reach {_host(url)} to download {label}: {last_error} "
                                  f"(offline?)", hint=_staging_hint(models_directory or target.parent,
                                                                    roles))
            raise ModelsError(f"download of {label} from {url} failed after {attempts} attempts: "
                              f"{last_error}; rerun the same command to resume"
                              + (f" ({part.stat().st_size:,} bytes kept in {part})"
                                 if part.exists() else ""))
        time.sleep(BACKOFF_SECONDS * attempt)

    digest, blob = sha256_file(part, git_sha1=True)
    problems = []
    for kind, want, got in (("pinned sha256", expected_sha, digest),
                            ("pinned git blob id", expected_blob, blob),
                            ("server's sha256", server_sha, digest),
                            ("server's git blob id", server_blob, blob)):
        if want and want.lower() != got:
            problems.append(f"{kind} {want} != {got}")
    if problems:
        part.unlink(missing_ok=True)
        if not restarted_clean:  # a stale or foreign .part was resumed: try once from scratch
            warn(f"{label}: checksum mismatch after resuming an old partial file; starting over")
            return fetch(url, target, sha256, git_sha1, label, validate, attempts,
                         models_directory, roles)
        raise ModelsError(f"checksum mismatch for {label} downloaded from {url}: "
                          + "; ".join(problems) + " (file discarded)",
                          hint="retry later or use another --mirror; if it persists the source "
                               "changed and virnucpro's pins need an update")
    if validate is not None:
        validate(part)
    os.replace(part, target)
    return digest


def _total_from_content_range(value: str | None) -> int | None:
    match = re.match(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+)", value or "")
    return int(match.group(3)) if match else None


def _transfer(url: str, part: Path, label: str) -> tuple[str | None, str | None]:
    """One HTTP attempt appending to `part`; raises `_Interrupted` if it ends early."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"virnucpro/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    redirects = _RecordingRedirects()
    opener = urllib.request.build_opener(redirects)
    request = urllib.request.Request(url, headers=headers)
    with opener.open(request, timeout=TIMEOUT_SECONDS) as response:
        chain = redirects.hops + [response.headers]
        status = getattr(response, "status", 200)
        if offset and status == 206:
            start = _range_start(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _Interrupted(f"server answered a resume with the wrong range "
                                   f"({response.headers.get('Content-Range')})")
            mode = "ab"
        else:
            if offset:
                info(f"{label}: server does not resume; starting over")
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        if status == 206 and total is None:
            total = _total_from_content_range(response.headers.get("Content-Range"))
        if offset:
            info(f"{label}: resuming at {offset:,} bytes")
        progress = Progress(f"download {label}", total=total or 0, unit="bytes", every_seconds=10)
        progress.advance(offset)
        received = offset
        try:
            with open(part, mode) as handle:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (http.client.HTTPException, OSError) as exc:  # network, not disk
                        raise _Interrupted(f"connection lost after {received:,} bytes "
                                           f"({type(exc).__name__})") from None
                    if not chunk:
                        break
                    handle.write(chunk)
                    received += len(chunk)
                    progress.advance(len(chunk))
        finally:
            progress.close()
        if total is not None and received != total:
            raise _Interrupted(f"connection closed after {received:,} of {total:,} bytes")
        return server_hashes(chain)


def _range_start(value: str | None) -> int | None:
    match = re.match(r"bytes\s+(\d+)-", value or "")
    return int(match.group(1)) if match else None
