"""`virnucpro models download` and `ensure`: fetch the four models into a models directory, safely.

Standard library only (urllib) for the transfers. Each file goes to `<file>.part`, resumed with an HTTP Range request
after an interruption (within a run: up to `ATTEMPTS` tries; across runs: the `.part` is kept),
verified against its pin, then renamed into place. Each file has a byte bound
(`FileSource.max_bytes`): a Content-Length above it is refused before anything is written, and a
body that grows past it is cut off at once, its `.part` deleted (exit 4). One command writes a
models directory at a time: `virnucpro.outdir.held_folder` (a second one exits 3 naming the first).

Only files virnucpro wrote are ever replaced: a file in place that fails its pin is downloaded
again only when the directory's manifest records it with a sha256 (our own download, since
corrupted); anything else there (the user's file, a directory, a link) is exit 4 naming it, and a
`.part` that is a link or not a plain file is never written through, nor is a folder inside the
models directory that is a symbolic link (exit 3 naming it). A models directory that is
(or is inside) another virnucpro output is refused (exit 3), and a damaged manifest is exit 4
before anything is transferred.

Every file is pinned in `virnucpro.models.pins`, never learned from a server. A mirror
must serve identical bytes; anything else is exit 4 with nothing recorded. A file without a pin is
never downloaded or recorded as trusted. Before the rename, a classifier must also pass the
restricted loader and an encoder checkpoint must hold nothing but tensors.

After ESM-2's `.pt` verifies, its fp16 copy for fast loads is derived from it (or kept when it still
matches) and recorded in the manifest (see `virnucpro.encoders.esm2.ensure_fp16_copy`).

Retried within a run: connection drops, timeouts, 5xx, 408 and 429 (waiting as long as a
Retry-After asks, up to `RETRY_AFTER_CAP_SECONDS`; a longer wait is exit 4 saying when to rerun).
A body whose size the server did not announce is asked for its rest before a failed checksum counts
as a mismatch; a resumed file that fails its checksum is downloaded once more from the start.
Messages name the actual cause: a proxy that cannot be reached (never its password), a host that
connected but did not answer, a redirect to something other than http(s).

`--mirror URL` (an http(s) URL with a host and a valid port, without a query, fragment, user name or
password, else a usage error, exit 2) replaces the scheme and host of every source; the paths stay, e.g.
`URL/fair-esm/models/esm2_t36_3B_UR50D.pt`, `URL/zhihan1996/DNABERT-S/resolve/<rev>/config.json`,
`URL/Li-Jing-1997/VirNucPro/<commit>/300_model.pth`.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import http.client
import os
import re
import socket
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Iterable

from virnucpro import __version__
from virnucpro.console import Progress, info, warn
from virnucpro.errors import (BadInputError, InterruptedByUser, ModelsError, OutputWriteError,
                              UsageError, VirnucproError, name_too_long, storage_errno, storage_error,
                              storage_failure, storage_hint)
from virnucpro.models import pins, store
from virnucpro.models.pins import FileSource, RoleSource
from virnucpro.outdir import held_folder, refuse_nesting

ATTEMPTS = 5            # tries per file within one run (connection drops, 5xx, timeouts)
BACKOFF_SECONDS = 2.0   # sleep attempt * BACKOFF_SECONDS between tries
TIMEOUT_SECONDS = 60.0  # socket timeout per read
CHUNK = 1024 * 1024
FOLDER = "models folder"  # how lock messages name the directory

NETWORK_ERRORS = (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError,
                  http.client.HTTPException)


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------

def download(dest: Path | None = None, only: str | None = None, mirror: str | None = None) -> None:
    """`virnucpro models download`: every role (or `only` one) into `dest` (default: `models_dir`)."""
    if only is not None and only not in store.ROLES:
        raise UsageError(f"unknown model {only!r} for --only; choose one of {', '.join(store.ROLES)}")
    check_mirror(mirror)
    directory = store.models_dir(dest, "--dest")
    store.refuse_out_of_reach([directory])  # gigabytes no command could load
    roles = [only] if only else list(store.ROLES)
    try:
        download_roles(directory, roles, mirror=mirror)
    except OutputWriteError as exc:
        if dest is None:  # the default folder, which the user did not choose: say how to choose one
            exc.hint = f"{exc.hint}; or download into a folder of yours with --dest DIR"
        raise
    store.locate(directory, roles)  # never "ready" when `models check` would refuse the folder
    info(f"models ready in {directory}"
         + ("" if dest or os.environ.get("VIRNUCPRO_MODELS") else
            " (the default location; on a cluster, stage a shared directory with --dest and use "
            "--models/VIRNUCPRO_MODELS)"))


def ensure(directory: Path | None = None, roles: Iterable[str] = store.ROLES, offline: bool = False
           ) -> store.ModelSet:
    """`store.locate`, downloading missing roles first unless offline (`--offline` or HF_HUB_OFFLINE=1).

    A present file that fails its checksum or pin or holds code is never replaced silently: that is
    an error to look at.
    """
    roles = list(roles)
    directory, statuses, missing = _to_download(directory, roles, offline)
    if not missing:
        return store.model_set(directory, statuses)
    download_roles(directory, missing, mirror=None)
    return store.locate(directory, roles)


def will_download(directory: Path | None, roles: Iterable[str], offline: bool) -> bool:
    """Whether `ensure` with these arguments would download (GBs), rather than return at once or
    refuse at once (wrong or incomplete tiny models, offline)."""
    try:
        return bool(_to_download(directory, list(roles), offline)[2])
    except InterruptedByUser:
        raise
    except VirnucproError:
        return False


def _to_download(directory: Path | None, roles: list[str], offline: bool
                 ) -> tuple[Path, list[store.RoleStatus], list[str]]:
    """The models folder, the status of each role, and the roles to download; what must not be
    downloaded (a wrong file, an incomplete tiny folder, missing models while offline) is raised."""
    directory, statuses = store.scan(directory, roles)
    if any(s.wrong for s in statuses):
        raise store.problems(directory, statuses)  # type: ignore[misc]
    missing = [s.role for s in statuses if s.missing]
    if not missing:
        return directory, statuses, missing
    busy = store.in_progress(directory, store.missing_text(statuses))
    if busy is not None:  # the hints below name a command the lock would refuse while it runs
        raise busy
    _refuse_incomplete_tiny(directory, statuses)
    if offline or _env_offline():
        why = "--offline" if offline else f"HF_HUB_OFFLINE={os.environ['HF_HUB_OFFLINE'].strip()}"
        raise ModelsError(f"models missing in {directory}: {', '.join(missing)}; not downloading ({why})",
                          hint=store.staging_hint(directory, missing))
    _refuse_unwritable(directory, missing)
    return directory, statuses, missing


def _refuse_unwritable(directory: Path, missing: list[str]) -> None:
    """Exit 4 at once when missing models could not be written into `directory` (a read-only mount,
    a shared folder of another user): `run` would otherwise prepare all its inputs first, then fail
    to write the folder's lock file."""
    existing = directory
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if os.access(existing, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        return
    raise ModelsError(f"models missing in {directory}: {', '.join(missing)}; they cannot be downloaded into it: "
                      f"this user cannot write {existing} (permissions, or a read-only file system)",
                      hint="download them into a folder you can write (`virnucpro models download --dest DIR`), "
                           f"then point runs at it with --models DIR or VIRNUCPRO_MODELS=DIR; or ask whoever "
                           f"manages {directory} to add them")


def _refuse_incomplete_tiny(directory: Path, statuses: list[store.RoleStatus]) -> None:
    """A folder of tiny test models with files missing is never completed with the published
    models (a multi-GB download, of other widths, into a test folder), online or not: exit 4
    telling how to write the tiny models again."""
    broken = [s for s in statuses if s.missing]
    if broken and (any(s.marked_tiny for s in broken) or store.is_tiny_folder(directory)):
        raise ModelsError(f"tiny test models in {directory} are incomplete: " + "; ".join(
            f"{s.role} ({', '.join(s.missing)})" for s in broken),
            hint=f"rerun `{store.tiny_command(directory)}`")


def _env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def check_mirror(mirror: str | None) -> None:
    """A `--mirror` that is not a plain http(s) base URL with a host (and a valid port) is a usage
    error (exit 2), found before anything is touched. A query or fragment (the file paths would go
    after it) and a user name or password (never printed, never stored in the manifest) are refused
    too; the message shows the URL with any password masked."""
    if mirror is None:
        return
    problem = _mirror_problem(mirror)
    if problem is not None:
        raise UsageError(f"--mirror must be an http(s) URL of the mirror's base folder: {problem}; "
                         f"got {_masked(mirror)!r}",
                         hint="give the mirror's base URL, e.g. --mirror https://mirror.example.org")


def _mirror_problem(mirror: str) -> str | None:
    """Why `mirror` cannot serve as the base URL of the sources, or None."""
    if any(ch.isspace() or not ch.isprintable() for ch in mirror):
        return "it holds a space or a control character"
    try:
        parsed = urllib.parse.urlsplit(mirror)
        port = parsed.port  # ValueError for a port that is not a number in 0-65535
    except ValueError as exc:
        return f"it is not a valid URL ({_masked(str(exc))})"
    if parsed.scheme not in ("http", "https"):
        return "the scheme is not http or https"
    if "@" in parsed.netloc:
        return "a user name or password in the URL is not supported"
    if not parsed.hostname or port == 0:
        return "it has no host" if not parsed.hostname else "port 0 is not a port"
    if parsed.query or parsed.fragment or mirror.rstrip().endswith(("?", "#")):
        return "it has a query or fragment (the file paths are appended to the URL)"
    return None


def _masked(text: str) -> str:
    """`text` with the user information of any URL in it (`user:password@`) masked."""
    return re.sub(r"(//)[^/?#\s]*@", r"\1***@", text)


def download_roles(directory: Path, roles: Iterable[str], mirror: str | None = None) -> None:
    """Download `roles` into `directory`, one file at a time, holding the directory's lock."""
    roles = list(roles)
    check_mirror(mirror)
    refuse_nesting(directory, "models directory", itself=True)
    with held_folder(directory, FOLDER):
        manifest = store.read_manifest(directory, "--dest")  # a damaged one: exit 4 before any transfer
        _remove_fp16_leftovers(directory)
        _refuse_tiny_folder(directory, manifest)
        _refuse_stray_weights(directory, roles)
        ours = _recorded_files(manifest)
        for role in roles:
            _record_role(directory, role, _download_role(directory, pins.SOURCES[role], mirror, ours, roles))
            if role == "esm2":
                _fp16_copy(directory)


def _remove_fp16_leftovers(directory: Path) -> None:
    """Remove what a writer of ESM-2's fp16 copy that was killed left in the folder (a download
    holds its lock, so none is writing it now; see `store.remove_leftover_temporaries`)."""
    home = store.Esm2Home(directory, pins.SOURCES["esm2"].files[0].relpath, {})
    store.remove_leftover_temporaries(directory / home.copy_name)


def _refuse_tiny_folder(directory: Path, manifest: dict | None) -> None:
    """The published models never go into a folder of tiny test models (other widths; gigabytes into
    a test folder): exit 2 naming a new folder instead. A folder of tiny models is one whose every
    role is tiny, as for the hints (`store.is_tiny_folder`), which name `models download` for any
    other folder: a hint never names a command that refuses the folder."""
    roles = {role: entry for role, entry in (manifest or {}).get("models", {}).items() if role in store.ROLES}
    tiny = sorted(role for role, entry in roles.items() if entry.get("tiny") is True)
    if tiny and len(tiny) == len(roles):
        raise UsageError(
            f"{directory} holds tiny test models ({', '.join(tiny)}); the published models go into a folder "
            f"of their own", hint=f"download them into a new folder: {store.NEW_FOLDER_HINT}")


def _refuse_stray_weights(directory: Path, roles: list[str]) -> None:
    """Exit 4, before any transfer, naming a weights file in a role's folder that the published
    model does not have (`DNABERT-S/model.safetensors` staged by hand): the encoder would read it
    in place of the published weights, so `models check` refuses it, and a download never
    replaces nor deletes it. Reporting the folder ready would send the user round in a loop."""
    for role in roles:
        listed = [spec.relpath for spec in pins.SOURCES[role].files]
        for rel in store.unlisted_weights(directory, role, listed):
            raise ModelsError(f"{directory / rel} is in the way: the published {role} model has no file of "
                              f"that name, and the encoder would read it instead of the published weights; "
                              f"virnucpro never replaces nor deletes a file it did not download",
                              hint=f"move it away, then rerun `{store.download_command(directory, roles)}`")


def _recorded_files(manifest: dict | None) -> set[str]:
    """The files the manifest records with a sha256: the ones virnucpro wrote here."""
    return {rel for entry in (manifest or {}).get("models", {}).values() for rel in entry.get("sha256", {})}


def _record_role(directory: Path, role: str, entry: dict) -> None:
    """Put one role's entry into the manifest (keeping its fp16 copy's record, checked later)."""
    manifest = store.read_manifest(directory) or {"models": {}}
    if "fp16" in manifest["models"].get(role, {}):
        entry["fp16"] = manifest["models"][role]["fp16"]  # checked against the .pt by _fp16_copy
    manifest["models"][role] = entry
    try:
        store.write_manifest(directory, manifest)
    except OSError as exc:
        raise _write_error(directory / store.MANIFEST, exc) from None


def _fp16_copy(directory: Path) -> None:
    """Write ESM-2's fp16 copy for fast loads (kept when it still matches the .pt); a failure
    only costs speed, so it is a warning. The caller holds the folder lock."""
    from safetensors import SafetensorError

    from virnucpro.encoders.esm2 import ensure_fp16_copy

    home = store.esm2_home(directory / pins.SOURCES["esm2"].files[0].relpath)
    try:
        copy, problem = ensure_fp16_copy(home) if home else (None, "the manifest does not list it")
    except InterruptedByUser:
        raise  # a stop is no failure to write the copy
    except (VirnucproError, OSError, SafetensorError) as exc:  # a full disk, said by safetensors its own way
        copy, problem = None, exc.message if isinstance(exc, VirnucproError) else str(exc)
    if copy is None:
        warn(f"ESM-2: no fp16 copy written ({problem}); fp16 runs load the .pt instead")
    else:
        info(f"ESM-2 fp16 copy for fast loads: {copy}")


# storage failures another --dest does not settle: a file-size limit binds every folder alike, a
# storage that went away is mounted again
SETTLED_BY_NO_DEST = (errno.EFBIG, errno.ENOTCONN, errno.ESTALE)

def _write_error(path: Path, exc: OSError) -> VirnucproError:
    """Exit 10 when the storage failed (full, quota, read-only), exit 3 for a name too long, else exit 4.
    The fix is another --dest where one helps (space, permissions); a file-size limit (EFBIG) binds
    every --dest alike, so its hint is `storage_hint`'s (raise the limit)."""
    if name_too_long(exc):
        return storage_failure(exc, path)
    meaning = storage_error(exc)
    if meaning is not None:
        hint = (storage_hint(exc) if storage_errno(exc) in SETTLED_BY_NO_DEST
                else "free space, fix the permissions, or download into another --dest")
        return OutputWriteError(f"cannot write {path}: {meaning}", hint)
    return ModelsError(f"cannot write {path}: {exc}")


# --------------------------------------------------------------------------------------------
# One role
# --------------------------------------------------------------------------------------------

def _url(spec: FileSource, mirror: str | None) -> str:
    """The file's URL at its source, or at the same path under `mirror`."""
    return f"{(mirror or spec.base).rstrip('/')}/{spec.path}"


def _download_role(directory: Path, source: RoleSource, mirror: str | None, ours: set[str],
                   roles: list[str]) -> dict:
    """Fetch (or keep, when it verifies) every file of one role; returns its manifest entry. `roles`:
    all those of the command, which its hints name (following one then completes them all)."""
    cache = store.HashCache(directory)
    try:
        hashes = {spec.relpath: _ensure_file(directory, source.role, spec, mirror, cache, ours, roles)
                  for spec in source.files}
    finally:
        cache.save()
    return {
        "files": [spec.relpath for spec in source.files],
        "sha256": hashes,
        "source": mirror.rstrip("/") if mirror else source.source,
        "revision": source.revision,
        "tiny": False,
        "name": source.name,
        "urls": {spec.relpath: _url(spec, mirror) for spec in source.files},
    }


def _ensure_file(directory: Path, role: str, spec: FileSource, mirror: str | None,
                 cache: store.HashCache, ours: set[str], roles: list[str]) -> str:
    """sha256 of the file in place: kept when it verifies, else downloaded (in place of a bad
    file only when virnucpro wrote it, see `_replace_only_ours`)."""
    target = directory / spec.relpath
    label = f"{role} ({spec.relpath})"
    _require_pin(spec.sha256 or spec.git_sha1, label)
    if os.path.lexists(target):
        digest, problem = _existing_ok(directory, role, spec, cache)
        if digest is not None:
            return digest
        _replace_only_ours(directory, spec.relpath, problem, ours, roles)
    _refuse_linked_folders(directory, spec.relpath)
    created = not target.parent.exists()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(target.parent, exc) from None
    try:
        digest, placed = fetch_stamped(_url(spec, mirror), target, sha256=spec.sha256, git_sha1=spec.git_sha1,
                                       label=label, validate=_validator(role, spec.relpath),
                                       hint=store.staging_hint(directory, roles, mirror), max_bytes=spec.max_bytes,
                                       mirror=mirror)
    except BaseException:
        if created:  # a failed download leaves no empty folder (rmdir refuses one that holds anything)
            with contextlib.suppress(OSError):
                target.parent.rmdir()
        raise
    cache.record(spec.relpath, target, digest, placed)
    return digest


def _refuse_linked_folders(directory: Path, rel: str) -> None:
    """Exit 3 when a folder on the way from `directory` to `rel` is a symbolic link (or not a
    folder): downloading through it would write outside the models directory."""
    folder = directory
    for part in Path(rel).parent.parts:
        folder = folder / part
        if folder.is_symlink() or (os.path.lexists(folder) and not folder.is_dir()):
            what = f"a symbolic link to {os.readlink(folder)}" if folder.is_symlink() else "not a folder"
            raise BadInputError(f"{folder} is {what}: virnucpro writes models only inside the models "
                                f"directory, never through a link", hint="move it away, then rerun the same command")


def _existing_ok(directory: Path, role: str, spec: FileSource, cache: store.HashCache
                 ) -> tuple[str | None, str]:
    """(sha256, "") of an already present file that matches its pin and passes validation, else
    (None, what is wrong with it).

    A sha256 pin is compared with the cached hash when the file is unchanged (HashCache), so a rerun
    does not re-read 6 GB; a git blob id pin always re-reads the (small) file.
    """
    target = directory / spec.relpath
    if not target.is_file():
        return None, _not_a_file(target)
    try:
        if spec.git_sha1:
            digest = _verified(target, spec.sha256, spec.git_sha1)
        else:
            digest = _pinned_sha256(cache.sha256(directory, spec.relpath), spec.sha256)
        validate = _validator(role, spec.relpath)
        if validate is not None:
            validate(target)
    except ModelsError as exc:
        return None, exc.message
    return digest, ""


def _not_a_file(path: Path) -> str:
    """What sits at `path` instead of a regular file, for messages."""
    if path.is_symlink():
        return f"it is a symbolic link to {os.readlink(path)}"
    return "it is a directory" if path.is_dir() else "it is not a regular file"


def _replace_only_ours(directory: Path, rel: str, problem: str, ours: set[str], roles: list[str]) -> None:
    """A file in place that failed its check is downloaded again only when virnucpro wrote it (the
    manifest records it with a sha256, and it is a plain file, not a link); anything else is the
    user's, never replaced: exit 4 naming it."""
    target = directory / rel
    if rel in ours and stat.S_ISREG(os.lstat(target).st_mode):
        warn(f"{target}: {problem}; virnucpro downloaded it, so it is downloaded again")
        return
    raise ModelsError(f"{target} is in the way: {problem}; virnucpro did not write it (the models "
                      f"manifest does not record it), so it is left as it is",
                      hint=f"move it away, then rerun `{store.download_command(directory, roles)}`")


def _require_pin(pin: str | None, label: str) -> None:
    """A file without a pin is never downloaded, nor recorded as trusted (exit 4)."""
    if not pin:
        raise ModelsError(f"no pinned checksum for {label}: virnucpro never records a file it "
                          f"cannot verify as trusted", hint="this is a bug in virnucpro's table of sources")


def _validator(role: str, relpath: str) -> Callable[[Path], None] | None:
    """What a file of this role must pass besides its pin before it counts as present."""
    if role.startswith("classifier_"):
        return _validate_classifier
    if role in store.ENCODER_ROLES and relpath.endswith(store.PICKLE_SUFFIXES):
        return _validate_tensors_only
    return None


def _validate_classifier(path: Path) -> None:
    """The restricted loader must accept a classifier before it counts as present."""
    from virnucpro.classifier import load_classifier

    load_classifier(path)


def _validate_tensors_only(path: Path) -> None:
    """An encoder checkpoint must hold nothing that could run code when loaded."""
    offending = store.code_in_weights(path)
    if offending:
        raise ModelsError(store.refused_message(path, offending))


# --------------------------------------------------------------------------------------------
# One file
# --------------------------------------------------------------------------------------------

class _Interrupted(Exception):
    """The transfer stopped early; the .part file is kept for a resume."""


class _Mismatch(ModelsError):
    """The bytes are not the pinned ones (exit 4)."""


class _TransferFailed(ModelsError):
    """A transfer made while verifying failed (exit 4 as it was raised; the `.part` stays as it is)."""


class _Job:
    """One file's download: where from and to, its byte bound, and what happened so far (whether a
    partial file was resumed, whether the server announced the file's size)."""

    def __init__(self, url: str, part: Path, label: str, max_bytes: int | None, attempts: int, hint: str,
                 mirror: str | None = None):
        self.url, self.part, self.label, self.max_bytes = url, part, label, max_bytes
        self.attempts, self.hint, self.mirror = attempts, hint, mirror
        self.resumed = False  # bytes of an earlier transfer (this run's or an old .part) were kept
        self.sized = False    # the last response said how large the file is
        self.redirected_to: str | None = None  # where the last attempt was sent on to, if anywhere

    def target(self) -> str:
        """The URL the last attempt ended up asking: a redirect's (a CDN's) or the file's own."""
        return self.redirected_to or self.url

    def check(self, size: int, how: str) -> None:
        """Exit 4 when `size` bytes are more than the file may have; the `.part` is deleted."""
        if self.max_bytes is None or size <= self.max_bytes:
            return
        self.part.unlink(missing_ok=True)
        raise ModelsError(f"{self.label} from {self.url} {how} {size:,} bytes, more than the "
                          f"{self.max_bytes:,} the published file can have: download stopped (file "
                          f"discarded, nothing recorded)", hint=_MISMATCH_HINT)


def fetch(url: str, target: Path, **options) -> str:
    """Download `url` to `target` atomically and return its sha256 (see `fetch_stamped`)."""
    return fetch_stamped(url, target, **options)[0]


def fetch_stamped(url: str, target: Path, sha256: str | None = None, git_sha1: str | None = None,
                  label: str | None = None, validate: Callable[[Path], None] | None = None,
                  attempts: int | None = None, hint: str | None = None, max_bytes: int | None = None,
                  mirror: str | None = None) -> tuple[str, os.stat_result]:
    """Download `url` to `target` atomically (via `target.part`, resumable); return its sha256 and
    the status of the file in place, for the hash cache (`_placed`).

    The bytes must match the pinned `sha256` or `git_sha1` (and pass `validate`) before the rename;
    a file with no pin is refused before anything is transferred. Raises `ModelsError` (exit 4) on
    HTTP errors (after retries for 5xx, 408 and 429), unreachable hosts, mismatches, failed
    validation and a file larger than `max_bytes`, with the .part deleted whenever its bytes are
    wrong. `mirror`: the --mirror `url` is under, if any (for messages).
    """
    label = label or target.name
    _require_pin(sha256 or git_sha1, label)
    job = _Job(url, target.with_name(target.name + ".part"), label, max_bytes, attempts or ATTEMPTS,
               hint or store.staging_hint(target.parent, mirror=mirror), mirror)
    digest, hashed = _download_verified(job, sha256, git_sha1, validate)
    try:
        os.replace(job.part, target)
    except OSError as exc:  # e.g. a directory put in its place meanwhile
        raise _write_error(target, exc) from None
    return digest, _placed(target, hashed)


def _placed(target: Path, hashed: os.stat_result) -> os.stat_result:
    """The status of `target` when it is the `.part` hashed as `hashed`, renamed into place and
    unwritten since; else exit 4: another file was put there, whose sha256 is not known."""
    with store.reading(target):
        now = os.stat(target)
    if not store.same_version(hashed, now):
        raise ModelsError(f"{target} changed while it was being verified (another file was put in its place)",
                          hint="wait for whatever writes it to finish, then rerun")
    return now


def _download_verified(job: _Job, sha256: str | None, git_sha1: str | None,
                       validate: Callable[[Path], None] | None) -> tuple[str, os.stat_result]:
    """Transfer and verify the `.part`; its sha256 and the status of the file hashed. A resumed file
    (an old `.part`, or a connection dropped and resumed in this run) that fails its checksum is
    downloaded once more from the start: the bytes kept may be another version's. Any other failure
    deletes the `.part` (exit 4)."""
    for last in (False, True):
        job.resumed = _part_size(job.part) is not None
        _transfer_with_retries(job)
        try:
            return _verified_part(job, sha256, git_sha1, validate)
        except _TransferFailed:
            raise
        except ModelsError as exc:
            job.part.unlink(missing_ok=True)
            if last or not (job.resumed and isinstance(exc, _Mismatch)):
                unsized = "" if job.sized else "; the server did not say how large the file is"
                raise ModelsError(f"{job.label} downloaded from {job.url}: {exc.message} (file discarded, "
                                  f"nothing recorded{unsized})", hint=exc.hint or _MISMATCH_HINT) from None
            warn(f"{job.label}: checksum mismatch after resuming a partial download; starting over")
    raise AssertionError("unreachable")


def _verified_part(job: _Job, sha256: str | None, git_sha1: str | None,
                   validate: Callable[[Path], None] | None) -> tuple[str, os.stat_result]:
    """The `.part`'s sha256 (and the status of the file hashed) once it matches its pin and passes
    `validate`. A body whose size the server did not announce ends like a whole one when the
    connection is cut: before calling it a mismatch, the rest is asked for (a server that has no
    more answers 416, and it is one)."""
    try:
        verified = _verified_stamped(job.part, sha256, git_sha1)
    except _Mismatch:
        if job.sized:
            raise
        info(f"{job.label}: the server did not say how large the file is, and the {_part_size(job.part) or 0:,} "
             f"bytes received do not match the pin; asking for the rest in case the transfer was cut short")
        try:
            _transfer_with_retries(job)
        except ModelsError as exc:
            raise _TransferFailed(exc.message, hint=exc.hint) from None
        verified = _verified_stamped(job.part, sha256, git_sha1)
    if validate is not None:
        validate(job.part)
    return verified


def _part_size(part: Path) -> int | None:
    """The bytes of our partial download (None without one). A link or anything but a plain file
    at that name is not ours: never written through, never removed (exit 4)."""
    try:
        info = os.lstat(part)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        raise _foreign_part(part, info)
    return info.st_size


def _foreign_part(part: Path, info: os.stat_result | None = None) -> ModelsError:
    """Exit 4 for a `.part` name virnucpro did not create as a plain file of its own: a link, or a
    file with other names (hard links: a `cp -al` backup), which writing it would change too."""
    if info is not None and stat.S_ISREG(info.st_mode):
        what = f"a file with {info.st_nlink - 1} other name(s) (hard links)"
    else:
        what = "a symbolic link" if part.is_symlink() else "not a plain file"
    return ModelsError(f"{part} is {what}: virnucpro keeps its partial downloads in plain files of their own "
                       f"and never writes through a link, so it is left as it is",
                       hint="move it away, then rerun the same command")


def _open_part(part: Path, append: bool):
    """`part` opened for writing without following a link (O_NOFOLLOW), appending or from empty (cut
    only once it is known to be a plain file of its own)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if append else 0)
    try:
        fd = os.open(part, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _foreign_part(part) from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        raise _foreign_part(part, info)
    try:
        if not append:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "ab" if append else "wb")


_MISMATCH_HINT = ("retry later or use another --mirror (a mirror must serve the very same files); "
                  "if it persists the source changed and virnucpro's pins need an update")


def _verified(path: Path, sha256: str | None, git_sha1: str | None) -> str:
    """The file's sha256 when it matches the pins; `_Mismatch` otherwise."""
    return _verified_stamped(path, sha256, git_sha1)[0]


def _verified_stamped(path: Path, sha256: str | None, git_sha1: str | None) -> tuple[str, os.stat_result]:
    """The file's sha256 and the status of the very file hashed (`store.hashed_as_it_is`) when it
    matches the pins; `_Mismatch` otherwise."""
    digest, blob, hashed = store.hashed_as_it_is(path, git_sha1=True)
    if git_sha1 and git_sha1.lower() != blob:
        raise _Mismatch(f"checksum mismatch: pinned git blob id {git_sha1} != {blob}")
    return _pinned_sha256(digest, sha256), hashed


def _pinned_sha256(digest: str, sha256: str | None) -> str:
    """`digest` when it is the pinned sha256 (or nothing pins the sha256); `_Mismatch` otherwise."""
    if sha256 and sha256.lower() != digest:
        raise _Mismatch(f"checksum mismatch: pinned sha256 {sha256} != {digest}")
    return digest


# --------------------------------------------------------------------------------------------
# Tries
# --------------------------------------------------------------------------------------------

RETRY_AFTER_CAP_SECONDS = 120.0  # a server asking for a longer wait: give up saying when to rerun
TRANSIENT_HTTP = (408, 416, 429)  # besides 5xx: retried


def _transfer_with_retries(job: _Job) -> None:
    """Append to `job.part` until the whole file is there, retrying what retrying can fix (waiting
    as long as a Retry-After asks, up to `RETRY_AFTER_CAP_SECONDS`)."""
    last_error, connected = "unknown error", False
    for attempt in range(1, job.attempts + 1):
        wait = BACKOFF_SECONDS * attempt
        try:
            _transfer(job)
            return
        except _Interrupted as exc:
            connected, last_error = True, str(exc)
        except urllib.error.HTTPError as exc:
            connected = True
            if _already_whole(exc, job):
                return
            last_error = _retryable_http(exc, job)
            asked = _retry_after(exc, job)
            if asked > wait:
                info(f"{job.label}: {_host(job.url)} answered HTTP {exc.code} and asks to retry in {asked:.0f} s")
                wait = asked
        except NETWORK_ERRORS as exc:
            connected, last_error = _network_failure(exc)
        except OSError as exc:  # local disk trouble: retrying will not help
            raise _write_error(job.part, exc) from None
        if attempt < job.attempts:
            time.sleep(wait)
    raise _gave_up(job, last_error, connected)


def _network_failure(exc: BaseException) -> tuple[bool, str]:
    """(whether the host was reached, what went wrong). urllib wraps what fails while connecting
    in a URLError; a timeout raised as such came after the connection: the host did not answer."""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return True, f"no answer within {TIMEOUT_SECONDS:g} s after connecting"
    reason = getattr(exc, "reason", exc)
    return False, f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__


def _already_whole(exc: urllib.error.HTTPError, job: _Job) -> bool:
    """A 416 to a resume: True when the .part is already the whole file (else it is dropped)."""
    if exc.code != 416 or not job.part.exists():
        return False
    if _total_from_content_range(exc.headers.get("Content-Range")) == job.part.stat().st_size:
        job.sized = True
        return True
    job.part.unlink()
    return False


def _retryable_http(exc: urllib.error.HTTPError, job: _Job) -> str:
    """The reason to retry a 5xx/408/429/416; any other HTTP error is final (exit 4)."""
    if exc.code >= 500 or exc.code in TRANSIENT_HTTP:
        return "server refused to resume" if exc.code == 416 else f"HTTP {exc.code} {exc.reason}"
    where = exc.geturl() if exc.geturl() and exc.geturl() != job.url else job.url
    if 300 <= exc.code < 400:  # urllib's own text spans three lines
        raise ModelsError(f"cannot download {job.label}: {_host(job.url)} keeps redirecting it (in a loop, or "
                          f"more than {urllib.request.HTTPRedirectHandler.max_redirections} times), last from "
                          f"{_masked(where)}", hint=_http_hint(exc.code, job)) from None
    raise ModelsError(f"cannot download {job.label}: HTTP {exc.code} {exc.reason} from {_masked(where)}",
                      hint=_http_hint(exc.code, job)) from None


def _http_hint(code: int, job: _Job) -> str:
    """What to do about a final HTTP error: a mirror must serve the original paths; the original
    source no longer serving a pinned file is for virnucpro to fix."""
    if job.mirror is not None:
        return (f"the mirror {_masked(job.mirror)} must serve the original paths under its URL "
                f"(here {_masked(job.url)})")
    if code in (404, 410):
        return ("the source no longer serves this file: please report it (virnucpro's table of sources "
                "needs an update); meanwhile " + job.hint)
    return job.hint


def _retry_after(exc: urllib.error.HTTPError, job: _Job) -> float:
    """The seconds a 429/503's Retry-After asks to wait (seconds or an HTTP date; 0 without one).
    Longer than `RETRY_AFTER_CAP_SECONDS`: exit 4 saying when to rerun, the `.part` kept."""
    value = (exc.headers.get("Retry-After") or "").strip() if exc.headers else ""
    if not value:
        return 0.0
    if value.isascii() and value.isdigit():  # str.isdigit() also takes '²'
        seconds = float(value[:12])  # past the cap anyway; a 400-digit value overflowed the date
    else:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return 0.0
    seconds = max(seconds, 0.0)
    if seconds > RETRY_AFTER_CAP_SECONDS:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(time.time() + min(seconds, 1e10)))
        raise ModelsError(f"cannot download {job.label} now: {_host(job.url)} answered HTTP {exc.code} and "
                          f"asks to retry after {seconds:.0f} s (at {when})",
                          hint=f"rerun the same command after {when}{_kept(job.part)}") from None
    return seconds


def _host(url: str) -> str:
    """The host (and port) of `url`, for messages."""
    return urllib.parse.urlsplit(url).netloc.rpartition("@")[2] or url


def _kept(part: Path) -> str:
    """Where a partial download is kept, for messages ("" without one)."""
    return f" ({part.stat().st_size:,} bytes kept in {part}; it resumes)" if part.exists() else ""


def _gave_up(job: _Job, last_error: str, connected: bool) -> ModelsError:
    """Exit 4 after the last try, naming what could not be reached (the proxy, when one is used)."""
    proxy = _proxy_for(job.url)
    if not connected and proxy is not None:
        return ModelsError(f"cannot reach the proxy {_masked(proxy[1])} (from {proxy[0]}) to download "
                           f"{job.label} from {_host(job.url)}: {last_error}",
                           hint=f"check the proxy, or unset {proxy[0]} where {_host(job.url)} is reachable "
                                f"without it; else {job.hint}")
    if not connected and job.redirected_to:
        return ModelsError(f"cannot reach {_host(job.redirected_to)}, where {_host(job.url)} redirected the "
                           f"download of {job.label}: {last_error}",
                           hint=f"let this machine reach {_host(job.redirected_to)} as well as {_host(job.url)} "
                                f"(a firewall or proxy allow-list), or {job.hint}")
    if not connected and job.mirror:
        return ModelsError(f"cannot reach the mirror {_host(job.url)} to download {job.label}: {last_error}",
                           hint=f"check that the mirror is up and reachable from here, then rerun the same command; "
                                f"else {job.hint}")
    if not connected:
        return ModelsError(f"cannot reach {_host(job.url)} to download {job.label}: {last_error} (offline?)",
                           hint=job.hint)
    via = f" through the proxy {_masked(proxy[1])} (from {proxy[0]})" if proxy is not None else ""
    return ModelsError(f"download of {job.label} from {_masked(job.url)}{via} failed after {job.attempts} "
                       f"attempts: {last_error}; rerun the same command to resume{_kept(job.part)}")


def _proxy_for(url: str) -> tuple[str, str] | None:
    """(the variable that sets it, the proxy URL) of the proxy urllib uses for `url`, or None."""
    scheme = urllib.parse.urlsplit(url).scheme
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy or urllib.request.proxy_bypass(_host(url).rsplit(":", 1)[0].strip("[]")):
        return None
    name = next((n for n in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY") if os.environ.get(n)),
                f"{scheme}_proxy")
    return name, proxy


def _total_from_content_range(value: str | None) -> int | None:
    match = re.match(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+)", value or "", re.ASCII)
    return int(match.group(3)) if match else None


def _range_start(value: str | None) -> int | None:
    match = re.match(r"bytes\s+(\d+)-", value or "", re.ASCII)
    return int(match.group(1)) if match else None


# --------------------------------------------------------------------------------------------
# One HTTP request
# --------------------------------------------------------------------------------------------

class _Redirects(urllib.request.HTTPRedirectHandler):
    """Redirects are followed only to http(s): urllib would follow one to ftp:// and then blame
    the server that answered for what the FTP host did. Each one followed is told to `followed`, so
    that a host that cannot be reached is named as the one redirected to (a CDN a firewall blocks),
    not as the first host, which answered."""

    def __init__(self, followed: Callable[[str], None]):
        super().__init__()
        self.followed = followed

    def http_error_302(self, req, fp, code, msg, headers):
        """Checked before urllib's own handling, which refuses file:// and other schemes with an
        HTTPError naming the new URL as the one that answered."""
        location = headers.get("location") or headers.get("uri")
        newurl = urllib.parse.urljoin(req.full_url, location) if location else ""
        if location and urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise ModelsError(f"{_host(req.full_url)} redirected the download to {_masked(newurl)}, which is "
                              f"not an http(s) URL: virnucpro downloads over http(s) only",
                              hint="use a source or --mirror that serves the files over http(s)")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.followed(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _open(url: str, headers: dict[str, str], followed: Callable[[str], None] = lambda url: None):
    """The response to a GET of `url` (proxies from the environment, as urllib's default); each
    redirect followed is told to `followed`."""
    opener = urllib.request.build_opener(_Redirects(followed))
    return opener.open(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_SECONDS)


def _transfer(job: _Job) -> None:
    """One HTTP attempt appending to `job.part` (or restarting it); `_Interrupted` if it ends early,
    exit 4 (before writing) when the announced size is above the file's bound."""
    offset = _part_size(job.part) or 0
    headers = {"User-Agent": f"virnucpro/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    job.redirected_to = None

    def followed(url: str) -> None:
        job.redirected_to = url

    with _open(job.url, headers, followed) as response:
        offset = _resume_offset(response, job, offset)
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isascii() and length.isdigit() else None
        if getattr(response, "status", 200) == 206 and total is None:
            total = _total_from_content_range(response.headers.get("Content-Range"))
        job.sized = total is not None
        if total is not None:
            job.check(total, "announces")
        received = _receive(response, job, offset, total)
    if total is not None and received != total:
        raise _Interrupted(f"connection closed after {received:,} of {total:,} bytes")


def _resume_offset(response, job: _Job, offset: int) -> int:
    """Where this response's body starts in the file: `offset` on a matching 206, else 0."""
    if not offset:
        return 0
    if getattr(response, "status", 200) != 206:
        info(f"{job.label}: server does not resume; starting over")
        return 0
    if _range_start(response.headers.get("Content-Range")) != offset:
        job.part.unlink()
        raise _Interrupted(f"server answered a resume with the wrong range "
                           f"({response.headers.get('Content-Range')})")
    info(f"{job.label}: resuming at {offset:,} bytes")
    job.resumed = True
    return offset


def _receive(response, job: _Job, offset: int, total: int | None) -> int:
    """Write the body to `job.part` (appending after `offset`); returns the bytes the file now
    holds. Stops (exit 4, `.part` deleted) as soon as the file would pass its byte bound."""
    progress = Progress(f"download {job.label}", total=total or None, unit="bytes", every_seconds=10, done=offset)
    received = offset
    try:
        with _open_part(job.part, append=bool(offset)) as handle:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (http.client.HTTPException, OSError) as exc:  # network, not disk
                    raise _Interrupted(f"connection lost after {received:,} bytes "
                                       f"({type(exc).__name__})") from None
                if not chunk:
                    return received
                job.check(received + len(chunk), "sends at least")
                handle.write(chunk)
                received += len(chunk)
                progress.advance(len(chunk))
    finally:
        progress.close()
