"""Find and verify models in a models directory; describe them in its manifest.

Layout, written by `download` and `tiny` and read by `locate`:

    MODELS/manifest.json   {"format_version": 1, "models": {role: {"files": [...], "sha256": {...},
                            "source": ..., "revision": ..., "tiny": bool, "name": ..., "urls": {...}}}}
    MODELS/esm2_t36_3B_UR50D.pt (+ esm2_t36_3B_UR50D-contact-regression.pt, which fair-esm's own
           loader wants next to it), MODELS/DNABERT-S/, MODELS/300_model.pth, MODELS/500_model.pth

ESM-2's entry may also carry `"fp16": {"file", "sha256", "source_sha256"}`: a copy of the weights
in fp16 safetensors, mapped as the encoder loads them, derived from the `.pt` whose sha256 is
`source_sha256` (written by `download` or the first fp16 load; `trusted_fp16_copy` checks it).
It is never listed in `files` and never part of the model identity: the `.pt` is the source of truth.

A directory without manifest.json (or a manifest without a role) is read by those standard names,
so hand-staged copies work. A malformed manifest is exit 4 naming the file and the field, and so is
one that is not a plain file or is larger than `MANIFEST_MAX_BYTES`; so is a models file that
cannot be read (`reading`: a read, never the exit 10 of an output not written). A folder that is
a virnucpro command's output (its `.virnucpro.json` marker, or a manifest.json with fields but no
`models`) is exit 4 saying what it is. No hint ever suggests deleting a file virnucpro may not have
written; in a folder of tiny test models every hint is `models tiny DIR` (`fix_command`). A models
directory path whose `~user` cannot be expanded is a usage error (exit 2) naming where it came from.

A role is tiny (random test models, `virnucpro.models.tiny`) only when its manifest entry says
`"tiny": true` AND records the sha256 of every file of it that is read; every output made with it
then says "tiny". Every other role (marked not tiny, unmarked, hand-staged) must be the published
model: each of its files must match the pin of the file of that name in `virnucpro.models.pins`
(sha256, or git blob id for the classifiers), whatever the manifest says. So tiny models can never
pass as real ones; real ones marked tiny only make the outputs say "tiny".

Verification of every file:
- its sha256 against the manifest, when recorded, and its pin unless its role is tiny; hashes
  (and git blob ids) of big files are cached by (size, mtime, ctime, inode) in `MODELS/.sha256-cache.json` when
  the directory is writable, so `embed` on many shards does not re-read 6 GB each time
  (`models check` always re-hashes); a file is hashed through one handle, and a file replaced or
  written while it is hashed is hashed again as it is now, never cached under the other's stamp
  (`hashed_as_it_is`; one that keeps changing is exit 4);
- the pickles of the encoders' torch checkpoints (`.pt`, `.bin`) are disassembled, never run, and
  a file naming anything but tensor machinery (and ESM-2's `argparse.Namespace` settings) is
  refused: it could run code when loaded. Classifiers go through the restricted loader instead.

Model identity (`ModelSet.sha256[role]`, used in checkpoint keys and HDF5 attributes):
- esm2: sha256 of the weights `.pt` (the contact-regression file does not change embeddings);
- dnabert_s: sha256 of the text `"<file>\\t<sha256>\\n"` over the folder's config.json,
  model.safetensors, pytorch_model.bin and tokenizer.json (those present), sorted by file name;
- classifier_300 / classifier_500: sha256 of the file.
`recorded_identity` computes the same from the manifest's recorded sha256 alone (no file read):
`predict` compares it with the identity its embedding shards record, so results are never made from
embeddings of encoders the models folder no longer holds.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import pickletools
import re
import sys
import tempfile
import zipfile
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from stat import S_IMODE, S_ISBLK, S_ISCHR, S_ISDIR, S_ISFIFO, S_ISREG, S_ISSOCK, S_ISVTX
from typing import Iterable, Iterator

from virnucpro.console import Progress, info, warn
from virnucpro.errors import (shell_word, NAME_MAX_DEFAULT, PATH_MAX_DEFAULT, BadInputError, ModelsError, UsageError, VirnucproError,
                              InterruptedByUser, access_hint, check_stop, denied_folder, folder_refused, home_expanded, is_link_loop,
                              link_loop, name_too_long,
                              READ_STORAGE_ERRNOS, os_cause, path_too_long, printable, stop_signals_deferred)
from virnucpro.outdir import NO_FOLLOW, lock_holder, marker_kind, new_temporary_file, refuse_unless_regular, sync_folder
from virnucpro.models import pins

ROLES = ("esm2", "dnabert_s", "classifier_300", "classifier_500")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
HASH_CACHE = ".sha256-cache.json"
MANIFEST_MAX_BYTES = 16 * 1024 * 1024  # a manifest is a few kB; the hash cache is read with the same bound

#: Hand-staged layout (no manifest): role -> (required files, optional files). For dnabert_s one of
#: the two weight files is required.
STANDARD_FILES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "esm2": (("esm2_t36_3B_UR50D.pt",), ("esm2_t36_3B_UR50D-contact-regression.pt",)),
    "dnabert_s": (("DNABERT-S/config.json", "DNABERT-S/tokenizer.json"),
                  ("DNABERT-S/tokenizer_config.json", "DNABERT-S/special_tokens_map.json")),
    "classifier_300": (("300_model.pth",), ()),
    "classifier_500": (("500_model.pth",), ()),
}
DNABERT_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
DNABERT_IDENTITY_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json")
DNABERT_ALWAYS_READ = ("tokenizer.json",)  # beside config.json, which names the folder: read listed or not
#: Roles whose torch checkpoints the encoders load with torch's tensors-only unpickler.
ENCODER_ROLES = ("esm2", "dnabert_s")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
#: Globals an encoder checkpoint may name besides torch's tensor machinery (ESM-2's settings).
SETTINGS_GLOBALS = frozenset({"argparse.Namespace"})
#: A legacy (non-zip) torch file starts with five pickles: magic number, protocol, system
#: information, the object, the storage keys; the raw tensor data follows.
LEGACY_PICKLES = 5
_CACHE_MIN_BYTES = 64 * 1024 * 1024
HASH_CHUNK_BYTES = 8 * 1024 * 1024
HASH_PROGRESS_BYTES = 256 * 1024 * 1024  # a file this large is hashed with progress shown
STORAGE_READ_FAILURES = READ_STORAGE_ERRNOS  # the storage's fault, not the mode's
READ_FAILED_HINT = ("the storage failed to read it (see `dmesg`, or the state of the network file system): "
                    "rerun once it reads again, or copy the models to other storage")
HASH_TRIES = 3  # a file replaced or written while it is hashed is hashed again, at most this often in all
FP16_SUFFIX = ".fp16.safetensors"
FP16_PARENT_LEVELS = 3  # how far above an ESM-2 `.pt` its models directory may be
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
CHECK_ARGUMENT = "the DIR argument of `models check`"
TINY_ARGUMENT = "the DIR argument of `models tiny`"
WRITTEN_FOLDERS = ("--dest", TINY_ARGUMENT)  # the `where` of commands that write models into the folder
FOLDER_GIVEN = {CHECK_ARGUMENT: "`virnucpro models check DIR`", "--dest": "--dest DIR"}  # see `_folder_given`


# --------------------------------------------------------------------------------------------
# Model sets and where they live
# --------------------------------------------------------------------------------------------

@dataclass
class ModelSet:
    """Located, verified models. `paths[role]`: the `.pt` file, the DNABERT-S folder, the `.pth`."""

    directory: Path
    paths: dict[str, Path]
    sha256: dict[str, str]
    tiny: bool
    names: dict[str, str] = field(default_factory=dict)

    @property
    def esm2(self) -> Path:
        return self._path("esm2")

    @property
    def dnabert_s(self) -> Path:
        return self._path("dnabert_s")

    def classifier(self, chunk_size: int) -> Path:
        """The original classifier trained for this chunk size (300 or 500)."""
        role = f"classifier_{chunk_size}"
        if role not in ROLES:
            raise ModelsError(f"there is no original classifier for chunk size {chunk_size} (only "
                              f"{' and '.join(map(str, pins.CLASSIFIER_CHUNK_SIZES))})",
                              hint="pass your own with --classifier FILE")
        return self._path(role)

    def identity(self, roles: Iterable[str] | None = None) -> dict[str, dict[str, str]]:
        """`{role: {"name", "sha256"}}` — the `models` attribute of embedding shards."""
        return {role: {"name": self.names.get(role, role), "sha256": self.sha256[role]}
                for role in (roles or self.paths)}

    def _path(self, role: str) -> Path:
        if role not in self.paths:
            raise ModelsError(f"model {role} was not located in {self.directory}",
                              hint=fix_command(self.directory, [role]))
        return self.paths[role]


def model_checksums(identity: object) -> dict[str, str]:
    """`{role: sha256}` of a models identity (`ModelSet.identity`, as embedding shards record it):
    what tells models apart. Their names are the manifest's labels, which a hand-staged folder and a
    download spell differently for the same files."""
    if not isinstance(identity, dict):
        return {}
    return {role: str(entry.get("sha256", "")).lower() for role, entry in identity.items() if isinstance(entry, dict)}


class ModelsPathError(UsageError):
    """A models directory path that cannot be used as given (exit 2, a usage error)."""


def models_dir(explicit: Path | str | None = None, where: str = "--models") -> Path:
    """`explicit` > $VIRNUCPRO_MODELS > the user data directory. `where` names the option or
    argument `explicit` came from (--models, --dest, the DIR of `models check`), for messages."""
    if explicit:
        return _expanded(explicit, where)
    env = os.environ.get("VIRNUCPRO_MODELS")
    if env == "-":  # as for --models: it made a folder named '-' in the current one
        raise ModelsPathError("VIRNUCPRO_MODELS is '-', which is no models folder ('-' stands for standard input "
                              "or output)", hint="set it to the models folder's path (./- for a folder named '-')")
    if env:
        return _expanded(env, "VIRNUCPRO_MODELS")
    return _user_data_dir(where) / "models"


def _expanded(path: Path | str, where: str) -> Path:
    """`path` with `~`/`~user` expanded, made absolute; exit 2 when the home cannot be found or is
    not absolute (the folder would depend on the current one)."""
    try:
        return home_expanded(path).absolute()
    except RuntimeError:  # no such user, or no (absolute) home directory
        raise ModelsPathError(f"models directory {str(path)!r} (from {where}): the home directory "
                              f"of {str(path).split('/')[0]!r} cannot be determined",
                              hint=f"give the models directory as an absolute path, or ./{path} for a folder "
                                   "named so in this one") from None


def _user_data_dir(where: str = "--models") -> Path:
    """The platform's per-user data folder for virnucpro; exit 2 naming the way out when there is no
    home directory to put it in (no $HOME and a user id the password database does not know), in
    the words of the command that looked (`where`, see `models_dir`)."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    if os.path.isabs(xdg) and sys.platform != "darwin" and os.name != "nt":
        return Path(xdg) / "virnucpro"
    try:
        home = Path.home()
    except (RuntimeError, KeyError):
        raise ModelsPathError("no models directory given and the home directory (where the default one is) cannot "
                              "be determined: $HOME is not set and this user id has no password entry",
                              hint=f"give {_home_free_folder(where)} or set VIRNUCPRO_MODELS") from None
    if os.name != "nt" and not os.path.isabs(os.environ.get("HOME", "/")):  # Python reads HOME='' as /
        raise ModelsPathError(f"no models directory given and the home directory (where the default one is), "
                              f"{os.environ['HOME']!r} from $HOME, is not an absolute path",
                              hint=f"give {_home_free_folder(where)}, set VIRNUCPRO_MODELS, or set HOME to an "
                                   f"absolute path")
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "virnucpro"
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "virnucpro"
    return home / ".local" / "share" / "virnucpro"  # a relative XDG_DATA_HOME is ignored, as XDG says


def _home_free_folder(where: str) -> str:
    """The folder to give instead of the default one in the home directory (`_user_data_dir`)."""
    given = _folder_given(where)
    return "--models DIR (--dest DIR to download)" if where == "--models" else f"the models folder ({given})"


def _folder_given(where: str) -> str:
    """How a command is given its models folder, named by `where` (see `models_dir`), for hints:
    `models check` takes it as its DIR argument, `models download` as --dest, embed, run and
    predict as --models."""
    return FOLDER_GIVEN.get(where, "--models DIR")


def download_command(directory: Path, roles: Iterable[str] | None = None, mirror: str | None = None) -> str:
    """The command that fetches `roles` (all when several or none) into `directory` (from `mirror`,
    the --mirror a site downloads through, if any)."""
    roles = list(roles or [])
    command = f"virnucpro models download --dest {shell_word(str(directory))}"
    if len(roles) == 1:
        command += f" --only {roles[0]}"
    if mirror:
        command += f" --mirror {shell_word(mirror)}"
    return command


def tiny_command(directory: Path) -> str:
    """The command that writes the tiny test models into `directory` again."""
    return f"virnucpro models tiny {shell_word(str(directory))}"


def is_tiny_folder(directory: Path) -> bool:
    """Whether `directory` is a folder of tiny test models, as `models tiny` writes it: its manifest
    marks every role it lists tiny. The published models never go beside tiny ones (other widths;
    gigabytes into a test folder), so every hint for such a folder is `models tiny DIR` (which
    rewrites such a folder, and refuses one that mixes in other models). A folder without a sound
    manifest is not tiny."""
    try:
        roles = (read_manifest(Path(directory)) or {}).get("models") or {}
    except (ModelsError, OSError):
        return False
    known = [entry for role, entry in roles.items() if role in ROLES]  # roles of another version do not count
    return bool(known) and all(entry.get("tiny") is True for entry in known)


def fix_command(directory: Path, roles: Iterable[str] | None = None) -> str:
    """The command that puts `roles` right in `directory`: `models tiny DIR` in a folder of tiny
    test models, else `models download` (see `is_tiny_folder`)."""
    if is_tiny_folder(directory):
        return tiny_command(directory)
    return download_command(directory, roles)


def refetch_hint(directory: Path, role: str) -> str:
    """The hint for a damaged or missing model file of `role` in the models folder `directory`."""
    return f"put it right with `{fix_command(directory, [role])}` (`virnucpro models check` names every file that differs)"


def staging_hint(directory: Path, roles: Iterable[str] | None = None, mirror: str | None = None) -> str:
    """How to get models onto a machine that cannot download them (tiny test models need no
    download: they are written again)."""
    if is_tiny_folder(directory):
        return f"write the tiny test models again (no download needed): `{tiny_command(directory)}`"
    return (f"on a machine with internet access run `{download_command(directory, roles, mirror)}` "
            f"(or download into any directory and copy it here), then point runs at it with "
            f"--models DIR or VIRNUCPRO_MODELS=DIR")


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------

def read_manifest(directory: Path, where: str = "--models") -> dict | None:
    """The validated manifest of `directory`, or None without one; malformed is exit 4, and so is
    a folder that is the output of a virnucpro command (its marker, or another manifest) rather
    than a models folder (`where`: how the command was given the folder, see `models_dir`)."""
    _refuse_command_output(Path(directory), where)
    path = Path(directory) / MANIFEST
    if not os.path.lexists(path):
        return None
    try:
        with reading(path):  # a manifest this user may not read is no damaged one: its owner can fix it
            manifest = json.loads(read_small_file(path, MANIFEST_MAX_BYTES))
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        why = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise ModelsError(f"{path} is unreadable or not JSON: {why}",
                          hint=_manifest_hint(Path(directory))) from None
    _check_manifest(path, manifest, where)
    manifest.setdefault("models", {})
    return manifest


def read_small_file(path: Path, limit: int) -> str:
    """The text of the plain file at `path` (links followed) of at most `limit` bytes; ValueError
    saying why not for anything else (a FIFO is never waited on, /dev/zero never read whole)."""
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
        if not S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise ValueError("it is not a regular file")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"it is larger than {limit:,} bytes, far more than a manifest holds")
    return data.decode()


NEW_FOLDER_HINT = "`virnucpro models download --dest NEW_FOLDER`"


def _manifest_hint(directory: Path) -> str:
    """How to get past a bad models manifest. It may not be virnucpro's, so it is never to be
    deleted; and `models download`/`models tiny` into this folder would refuse it too."""
    return (f"move it out of {directory} to read the folder by standard file names "
            f"(esm2_t36_3B_UR50D.pt, DNABERT-S/, 300_model.pth, 500_model.pth), or download "
            f"the models into a new folder: {NEW_FOLDER_HINT}")


def _not_models_folder(message: str, where: str) -> VirnucproError:
    """Exit 4 for a folder that is not a models folder, saying what it is; the hint leaves it as it is
    and names the command's own way of giving the folder (`where`, see `_folder_given`). Exit 3 for
    a command that would write models into it (`models download --dest`, `models tiny`)."""
    if where in WRITTEN_FOLDERS:
        return BadInputError(message, hint="virnucpro writes models only into a new or empty folder, or one of "
                                           f"its models: give another (`{'models tiny' if where == TINY_ARGUMENT else 'models download --dest'} NEW_FOLDER`)")
    return ModelsError(message,
                       hint=f"give the folder that holds the models ({_folder_given(where)} or VIRNUCPRO_MODELS=DIR), "
                            f"or download them into a new folder: {NEW_FOLDER_HINT}")


def _refuse_command_output(directory: Path, where: str) -> None:
    """Exit 4 when `directory` holds the marker of a virnucpro output folder (prepare, run, predict):
    its files are that command's, not models."""
    kind = marker_kind(directory)
    if kind is None:
        return
    command = f"`virnucpro {kind}`" if kind.isidentifier() else "a virnucpro command"  # DAMAGED, or forged
    raise _not_models_folder(f"{directory} is the output of {command}, not a models folder", where)


def _refuse_other_manifest(path: Path, manifest: dict, where: str) -> None:
    """Exit 4 when the manifest has fields but no `models`: another manifest (a `virnucpro prepare`
    output copied without its marker, another program's), not one of a models folder."""
    others = sorted(key for key in manifest if key != "format_version")
    if "models" in manifest or not others:
        return
    shown = ", ".join(_shortened(str(key), 40) for key in others[:6]) + (", ..." if len(others) > 6 else "")
    owner = ("the output of `virnucpro prepare` or another command"
             if {"shards", "chunk_size"} <= set(others) else "another program's manifest")
    raise _not_models_folder(f"{path.parent} is not a models folder: its {MANIFEST} has no `models` but "
                             f"{shown} (it looks like {owner})", where)


def _malformed(path: Path, field_name: str, problem: str) -> ModelsError:
    """Exit 4 naming the manifest, the field and what is wrong with it."""
    return ModelsError(f"{path} is malformed: `{printable(field_name)}` {problem}",
                       hint=_manifest_hint(path.parent))


def _kind(value: object) -> str:
    """A JSON value's kind, for messages."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), f"a {type(value).__name__}")


def _check_manifest(path: Path, manifest: object, where: str) -> None:
    """Every field this code reads has the type the contract gives it, or exit 4 naming it (`where`:
    how the command was given the folder, for the hint when it is no models folder)."""
    if not isinstance(manifest, dict):
        raise _malformed(path, "(top level)", f"is {_kind(manifest)}, not an object")
    _refuse_other_manifest(path, manifest, where)
    version = manifest.get("format_version", FORMAT_VERSION)
    if type(version) is not int:  # `true` and `1.0` equal 1 in Python
        raise _malformed(path, "format_version", f"is {_kind(version)}, not a whole number")
    if version != FORMAT_VERSION:
        side = "a newer" if version > FORMAT_VERSION else "an older"
        raise ModelsError(f"{path} has format_version {version}: {side} virnucpro wrote it; this virnucpro reads "
                          f"version {FORMAT_VERSION}", hint=f"use the virnucpro version that wrote it, or download "
                                                            f"the models into a new folder: {NEW_FOLDER_HINT}")
    roles = manifest.get("models", {})
    if not isinstance(roles, dict):
        raise _malformed(path, "models", f"is {_kind(roles)}, not an object of roles")
    for role, entry in roles.items():
        _check_entry(path, f"models.{role}", entry)


def _check_entry(path: Path, where: str, entry: object) -> None:
    """One role's entry: files to read, their checksums, and the describing strings."""
    if not isinstance(entry, dict):
        raise _malformed(path, where, f"is {_kind(entry)}, not an object")
    files = entry.get("files")
    if not (isinstance(files, list) and files and all(isinstance(f, str) and f for f in files)):
        raise _malformed(path, f"{where}.files", f"is {_kind(files)}, not a non-empty list of file names")
    for rel in files:
        problem = _file_name_problem(rel)
        if problem is not None:
            raise _malformed(path, f"{where}.files", f"names {_shortened(rel)!r}, which {problem}")
    _check_mapping(path, f"{where}.sha256", entry.get("sha256", {}), _HEX64, "sha256 (64 hex digits)")
    _check_mapping(path, f"{where}.urls", entry.get("urls", {}), None, "URL")
    if "fp16" in entry:
        _check_fp16_record(path, f"{where}.fp16", entry["fp16"])
    if not isinstance(entry.get("tiny", False), bool):
        raise _malformed(path, f"{where}.tiny", f"is {_kind(entry['tiny'])}, not true or false")
    for key in ("name", "source", "revision"):
        if not isinstance(entry.get(key), (str, type(None))):
            raise _malformed(path, f"{where}.{key}", f"is {_kind(entry[key])}, not a string")


def _check_fp16_record(path: Path, where: str, record: object) -> None:
    """The record of ESM-2's fp16 copy: its file inside the folder and two sha256."""
    if not isinstance(record, dict):
        raise _malformed(path, where, f"is {_kind(record)}, not an object")
    name = record.get("file")
    if not isinstance(name, str) or not name or _file_name_problem(name) is not None:
        shown = _shortened(name) if isinstance(name, str) else name
        raise _malformed(path, f"{where}.file", f"is {shown!r}, not a file name inside the models directory")
    for key in ("sha256", "source_sha256"):
        if not (isinstance(record.get(key), str) and _HEX64.fullmatch(record[key])):
            raise _malformed(path, f"{where}.{key}", f"is {record.get(key)!r}, not a sha256 (64 hex digits)")


def _file_name_problem(rel: str) -> str | None:
    """Why `rel` cannot name a file inside the models directory, or None: checked here so that a
    hostile manifest is exit 4 naming the field, not an OS error when the file is looked up."""
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        return "is outside the models directory"
    try:
        encoded = os.fsencode(rel)
    except UnicodeEncodeError:
        return "is not a valid file name here"
    if b"\0" in encoded:
        return "holds a NUL character"
    if not rel.isprintable():  # none of ours does, and every message naming it would break
        return "holds a line break or another control character"
    if len(encoded) >= PATH_MAX_DEFAULT or any(len(part) > NAME_MAX_DEFAULT for part in encoded.split(b"/")):
        return "is too long for a file name"
    return None


def _shortened(text: str, limit: int = 80) -> str:
    """`text`, cut to `limit` characters for a message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _check_mapping(path: Path, where: str, value: object, pattern: re.Pattern | None, what: str) -> None:
    """An object from file names to strings (matching `pattern`, when given)."""
    if not isinstance(value, dict):
        raise _malformed(path, where, f"is {_kind(value)}, not an object mapping each file name to its {what}")
    for name, item in value.items():
        if not isinstance(item, str) or (pattern is not None and not pattern.fullmatch(item)):
            raise _malformed(path, f"{where}.{name}", f"is {item!r}, not a {what}")


def atomic_write_text(path: Path, text: str, like: Iterable[Path] = ()) -> None:
    """Write `path` whole or not at all, with the permissions of the first file of `like`, else of
    the file it replaces (`replaced_like`). A link (a models folder of links into shared storage) or
    anything but a file at `path` is not replaced: exit 3."""
    refuse_unless_regular(path, "a file virnucpro writes")
    with replaced_like(path, [*like, path]) as temporary:
        with open(temporary, "wb", opener=lambda name, flags: os.open(name, flags | NO_FOLLOW)) as handle:
            handle.write(text.encode())


def _encodable(text: str) -> bool:
    """Whether `text` is UTF-8 text (a name of bytes that are not UTF-8 holds lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@contextmanager
def utf8_name(path: Path, writing: bool = False, utf8_only: bool = False) -> Iterator[str]:
    """`path` as safetensors and tokenizers (Rust) take it: UTF-8 text. A path with bytes that are not
    UTF-8 (a folder named in Latin-1) goes by a descriptor under /proc/self/fd, whose name is ASCII:
    the file's own to read it, its folder's to write a file of ours (named by us) in it; elsewhere
    it stays as it is, which Python's own file functions (torch.load's, without mmap) take. `utf8_only`:
    the name goes to a library that takes UTF-8 text only (safetensors, tokenizers, torch's memory
    map), so without /proc (macOS) such a path is exit 4 saying so (their error read as a damaged
    weights file)."""
    text = str(path)
    if _encodable(text) or not os.path.isdir("/proc/self/fd"):
        if utf8_only and not _encodable(text):
            raise _out_of_reach(text)
        yield text
        return
    folder_flags = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY  # O_PATH: no read right needed
    fd = os.open(path.parent if writing else path, folder_flags if writing else os.O_RDONLY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}" if writing else f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _out_of_reach(text: str) -> ModelsError:
    return ModelsError(f"{printable(text)} is no UTF-8 text, which the model libraries (safetensors, tokenizers, "
                       "torch's memory map) need, and this system has no /proc/self/fd to reach it by",
                       "move or copy the models to a folder whose path is UTF-8 text, and give that folder")


def refuse_out_of_reach(paths: Iterable[Path]) -> None:
    """Exit 4 at start-up for models paths the libraries cannot take (see `utf8_name`: no UTF-8 text,
    and no /proc): they were refused only when the models loaded, after prepare (and a download).
    Nothing is opened: with /proc every path is reached."""
    if os.path.isdir("/proc/self/fd"):
        return
    for path in paths:
        if not _encodable(str(path)):
            raise _out_of_reach(str(path))


#: The version (`_version`) and sha256 of each models file this command hashed or found in the
#: hash cache, by absolute path (cleared as each command starts: `forget_verified`). Loaders read
#: through `verified_name`, and `embed` checks the encoders' files again once a shard is computed
#: (`refuse_changed_since_verified`): a file replaced during `run`'s hours of prepare, or written in
#: place while its memory-mapped weights are in use, would otherwise compute vectors that the
#: shards label with the sha256 of the file checked.
verified_stamps: dict[str, tuple[tuple[int, int, int], str]] = {}


def _version(stat: os.stat_result) -> tuple[int, int, int]:
    """What tells two versions of a file apart (`same_version`): inode, size and mtime; not its
    ctime, which a chmod, chown or another hard link changes, the bytes unchanged."""
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def remember_verified(path: Path, stat: os.stat_result, digest: str) -> None:
    """Record `stat` and `digest` as the status and sha256 of the verified version of `path`."""
    verified_stamps[os.path.abspath(path)] = (_version(stat), digest)


def verified_digest(path: Path) -> str | None:
    """The sha256 this command verified `path` with, while it is still that version (else None)."""
    version, digest = verified_stamps.get(os.path.abspath(path), (None, None))
    try:
        return digest if version is not None and _version(os.stat(path)) == version else None
    except OSError:
        return None


def forget_verified() -> None:
    verified_stamps.clear()


@contextmanager
def verified_name(path: Path, utf8_only: bool = False) -> Iterator[str]:
    """`path` for a loader (`utf8_name`, `utf8_only` as there), for a block that reads it: the file must be the version
    this command verified when the block starts, if it verified one, and the same file, unwritten,
    when the block ends; otherwise exit 4 (`_unchanged_file`)."""
    path = Path(path)
    verified = verified_stamps.get(os.path.abspath(path), (None,))[0]
    before = _unchanged_file(path, verified, "after virnucpro verified it")
    with utf8_name(path, utf8_only=utf8_only) as name:
        yield name
    _unchanged_file(path, _version(before), "while virnucpro read it")


def refuse_changed_since_verified(roots: Iterable[Path]) -> None:
    """Exit 4 when a file this command verified under `roots` (files or folders) is no longer that
    version (`_unchanged_file`)."""
    prefixes = [os.path.abspath(root) for root in roots]
    for name, (version, _digest) in list(verified_stamps.items()):
        if any(name == prefix or name.startswith(prefix + os.sep) for prefix in prefixes):
            _unchanged_file(Path(name), version, "after virnucpro verified it")


def _unchanged_file(path: Path, expected: tuple[int, int, int] | None, when: str) -> os.stat_result:
    """The status of `path` now, which must be the version `expected` (when given): a models file
    replaced or written meanwhile is exit 4, to be verified again by a rerun."""
    with reading(path):
        now = os.stat(path)
    if expected is not None and _version(now) != expected:
        raise ModelsError(f"{_shortened(str(path), 300)} changed {when}: it was replaced or written while this "
                          f"command ran", hint="rerun once whatever writes to the models folder is done: "
                                               "the files are then verified again")
    return now


@contextmanager
def replaced_like(path: Path, like: Iterable[Path], within: Path | None = None) -> Iterator[Path]:
    """`outdir.replaced_atomically` for a file of a models folder: a new temporary file beside `path`
    (or in the folder `within`, on the same file system: see `scratch_folder`) for the block to
    write, synced and renamed over `path` (a failed block leaves nothing), with the
    permission bits and group of the first of `like` that is a file: the file it replaces, or the
    one it is derived from (`_take_permissions`). In a folder shared by a group, one member's umask
    (077) would otherwise lock the others out of the manifest, the hash cache or the fp16 copy."""
    source = _first_file(like)  # now: `like` may name `path` itself, about to be replaced
    temporary = None
    try:
        with stop_signals_deferred():  # a stop between making the file and keeping its name would leave it
            temporary = _new_temporary(path, within)
        yield temporary
        _settle(temporary, source)
        os.replace(temporary, path)
    except BaseException:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def _new_temporary(path: Path, within: Path | None = None) -> Path:
    """A new empty file beside `path` (or in `within`), `.NAME.XXXXXXXX.tmp`, created exclusively,
    to write it in."""
    fd, name = new_temporary_file(path, within)
    os.close(fd)
    return name


def _temporary_pattern(name: str) -> re.Pattern:
    """The temporary names of ours for NAME (`_new_temporary`, `scratch_folder`): `.NAME.XXXXXXXX.tmp`."""
    return re.compile(re.escape(f".{name}.") + r"[a-z0-9_]{8}\.tmp")


#: What a library may leave in a scratch folder when its process is killed: safetensors (Rust's
#: `tempfile`) writes `.tmpXXXXXX` beside the file it is given, then renames it.
LIBRARY_TEMPORARY = re.compile(r"\.tmp[A-Za-z0-9]{6}")


@contextmanager
def scratch_folder(path: Path) -> Iterator[Path]:
    """A new private folder `.NAME.XXXXXXXX.tmp` beside `path` (NAME: its name) in which a library
    writes the file that then replaces `path` (`replaced_like(..., within=)`), so that whatever it
    makes beside that file (safetensors' `.tmpXXXXXX`) is in it too. Removed at the end of the block;
    one that a kill left is removed by the next writer of `path`, which holds the folder's lock
    (`remove_leftover_temporaries`)."""
    with stop_signals_deferred():  # a stop between making the folder and knowing its name would leave it
        folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        _open_as_its_parent(folder)
        yield folder
    finally:
        _remove_scratch(folder, path.name)


def _open_as_its_parent(folder: Path) -> None:
    """Give a scratch folder the permission bits of the models folder it is in (mkdtemp's are 0700):
    in a folder shared by a group, what a killed writer leaves in it can then be removed by any
    member who could have removed it beside the copy, not by its owner alone. Its owner (this
    writer) always keeps rwx: a member of a folder writable only through its group (root's, 0575)
    would otherwise make a folder it cannot write in."""
    os.chmod(folder, (S_IMODE(os.stat(folder.parent).st_mode) & 0o1777) | 0o700)


def remove_leftover_temporaries(path: Path) -> None:
    """Remove the temporary files and scratch folders of `path` (`.NAME.XXXXXXXX.tmp`) that a killed
    writer left beside it. Called by the next writer, holding the folder's lock (every writer of
    `path` does, so none of them is being written): they are ours by their names, and only files
    of our names are removed, never a link's target, nor anything else a scratch folder holds."""
    pattern = _temporary_pattern(path.name)
    try:
        names = [entry.name for entry in os.scandir(path.parent) if pattern.fullmatch(entry.name)]
    except OSError:
        return
    for name in names:
        leftover = path.parent / name
        if _lstat_kind(leftover) == "file":
            _unlink_quietly(leftover)
        elif _lstat_kind(leftover) == "folder":
            _remove_scratch(leftover, path.name)
        if os.path.lexists(leftover):
            _name_kept_leftover(leftover, _not_ours(leftover, path.name))


#: The leftovers named in a warning by this process (`_name_kept_leftover`): each is named once.
_kept_leftovers_named: set[Path] = set()


def _name_kept_leftover(leftover: Path, not_ours: list[str]) -> None:
    """Warn (once per process) of a killed writer's leftover that was kept: a scratch folder holding
    files virnucpro does not write (`not_ours`: named, never removed), or one this user could not
    remove (another user's, in a sticky folder or one of a group whose bits it lacks), naming its
    owner, so the space it holds is not lost unseen."""
    if leftover in _kept_leftovers_named:
        return
    _kept_leftovers_named.add(leftover)
    if not_ours:
        shown = ", ".join(repr(name) for name in not_ours[:3]) + (f" and {len(not_ours) - 3} more" if len(not_ours) > 3 else "")
        warn(f"{leftover}, a killed fp16 copy write's scratch folder, was kept: it holds {shown}, which virnucpro "
             "did not write; move that out, and the next fp16 load removes the folder")
        return
    warn(f"{leftover} was left by a killed fp16 copy write of user {_owner(leftover)}, and this user may "
         "not remove it: that user (or an administrator) can, with `rm -r`")


def _not_ours(leftover: Path, name: str) -> list[str]:
    """The entries of a scratch folder of `name` that are not of the names we and the library write."""
    ours = _temporary_pattern(name)
    try:
        return sorted(entry.name for entry in os.scandir(leftover)
                      if not ((ours.fullmatch(entry.name) or LIBRARY_TEMPORARY.fullmatch(entry.name))
                              and _lstat_kind(leftover / entry.name) == "file"))
    except OSError:
        return []  # a file, gone, or not this user's to open


def _remove_scratch(folder: Path, name: str) -> None:
    """Remove a scratch folder of `name` (`scratch_folder`): the files in it of the names we and the
    library write, then the folder itself when that emptied it (anything else in it is kept; so is
    what this user may not remove)."""
    ours = _temporary_pattern(name)
    try:
        entries = [entry.name for entry in os.scandir(folder)]
    except OSError:
        return  # gone, or not this user's to open
    for entry in entries:
        if (ours.fullmatch(entry) or LIBRARY_TEMPORARY.fullmatch(entry)) and _lstat_kind(folder / entry) == "file":
            _unlink_quietly(folder / entry)
    with suppress(OSError):
        folder.rmdir()


def _owner(path: Path) -> str:
    """The owner of `path`, by name when the system knows it."""
    import pwd

    try:
        uid = os.lstat(path).st_uid
    except OSError:
        return "unknown"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _lstat_kind(path: Path) -> str:
    """What is at `path` itself, never through a link: a regular "file", a "folder", or "other"."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "other"
    return "file" if S_ISREG(mode) else "folder" if S_ISDIR(mode) else "other"


def _unlink_quietly(path: Path) -> None:
    """Remove the file at `path`; one gone already, or not ours to remove, is left."""
    with suppress(OSError):
        path.unlink()


def _first_file(paths: Iterable[Path]) -> os.stat_result | None:
    """The status of the first of `paths` that is a regular file (through a link), or None."""
    for path in paths:
        try:
            found = os.stat(path)
        except OSError:
            continue
        if S_ISREG(found.st_mode):
            return found
    return None


def _settle(path: Path, source: os.stat_result | None) -> None:
    """Give the regular file at `path` its permissions (`_take_permissions`) and wait until it is on
    disk; never through a link."""
    fd = os.open(path, os.O_RDONLY | NO_FOLLOW)
    try:
        if not S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        _take_permissions(fd, source)
        os.fsync(fd)
    finally:
        os.close(fd)


def _take_permissions(fd: int, source: os.stat_result | None) -> None:
    """The read/write bits and the group of `source`, never wider: when this user may not give the
    file that group, its own group gets what others had. Without `source`, the mode it was created
    with (`outdir.new_temporary_file`: the umask's, or a default ACL's)."""
    if source is None:
        return
    mode = S_IMODE(source.st_mode) & 0o666
    if os.fstat(fd).st_gid != source.st_gid:
        try:
            os.fchown(fd, -1, source.st_gid)
        except OSError:
            mode = (mode & ~0o070) | ((mode & 0o007) << 3)
    os.fchmod(fd, mode)


def replace_refusal(path: Path) -> str | None:
    """Why this user cannot rename a new file over `path`, told without trying (None: it can, or
    nothing is there): in a sticky folder (chmod +t) only the owner of a file, or of the folder, may
    replace it. Asked before writing the gigabytes of the fp16 copy, not after."""
    try:
        folder, found = os.stat(path.parent), os.lstat(path)
    except OSError:
        return None
    if folder.st_mode & S_ISVTX and os.geteuid() not in (0, folder.st_uid, found.st_uid):
        return (f"{path} belongs to another user and {path.parent} is sticky (chmod +t), so only its "
                f"owner may replace it")
    return None


def write_manifest(directory: Path, manifest: dict) -> None:
    """Write the manifest with the current format version and the roles in their usual order (and
    the permissions of the manifest it replaces)."""
    manifest = {"format_version": FORMAT_VERSION, **{k: v for k, v in manifest.items()
                                                     if k != "format_version"}}
    manifest["models"] = {role: manifest["models"][role]
                          for role in sorted(manifest["models"], key=_role_order)}
    atomic_write_text(Path(directory) / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def _role_order(role: str) -> tuple[int, str]:
    """Known roles in their usual order, then any others by name."""
    return (ROLES.index(role) if role in ROLES else len(ROLES), role)


# --------------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------------

class ModelsReadError(ModelsError):
    """A models file that the storage (or its mode) would not let be read: no fault of the file."""


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Inside the block, an OSError is a models file that cannot be read: exit 4 naming it (and the
    folder on its way that cannot be entered, when that is the fault). Left to the CLI, a permission
    or I/O error would be taken for a failed write (exit 10)."""
    try:
        yield
    except OSError as exc:
        if name_too_long(exc):
            raise path_too_long(exc, Path(path)) from None
        where = Path(os.fsdecode(exc.filename)) if exc.filename else Path(path)
        folder = denied_folder(where) if isinstance(exc, PermissionError) else None
        if folder is not None:  # the file itself may be readable
            raise folder_refused(where, folder, ModelsError) from None
        hint = READ_FAILED_HINT if exc.errno in STORAGE_READ_FAILURES else access_hint(where, "r")
        raise ModelsReadError(f"cannot read {_shortened(str(where), 300)}: {exc.strerror or exc}", hint=hint) from None


def sha256_file(path: Path, git_sha1: bool = False) -> str | tuple[str, str]:
    """sha256 of a file (and, with `git_sha1`, its git blob id, as GitHub's tree lists it)."""
    with reading(path), open(path, "rb") as handle:
        digest, blob = _hashed_handle(handle, git_sha1)
    return (digest, blob) if blob is not None else digest


def _hashed_handle(handle, git_sha1: bool) -> tuple[str, str | None]:
    """(sha256, git blob id when `git_sha1`) of the open file, read from where it is to its end."""
    digest = hashlib.sha256()
    blob = None
    size = os.fstat(handle.fileno()).st_size
    if git_sha1:
        blob = hashlib.sha1()
        blob.update(b"blob %d\0" % size)
    with _hashing_progress(handle, size) as progress:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            if blob is not None:
                blob.update(chunk)
            progress.advance(len(chunk))
    return digest.hexdigest(), blob.hexdigest() if blob is not None else None


def _hashing_progress(handle, size: int):
    """Progress with an ETA while a large file is hashed (ESM-2's 11 GB take minutes on a network
    file system); nothing shown for a small one."""
    if size < HASH_PROGRESS_BYTES:
        return nullcontext(SimpleNamespace(advance=lambda n: None))
    return Progress(f"sha256 {Path(handle.name).name}", size, unit="bytes", done=handle.tell())


def hashed_as_it_is(path: Path, git_sha1: bool = False) -> tuple[str, str | None, os.stat_result]:
    """(sha256, git blob id when `git_sha1`, the status of the very file hashed), read through one
    handle and returned only when that file stayed at `path`, unchanged, all the while: its stamp
    before and after the read and the path's after it agree. A file replaced (`mv`, rsync, staging)
    or written while it was read would otherwise have one file's sha256 cached under the other's
    stamp, and every later run trust it. Such a file is hashed again as it is now, up to HASH_TRIES
    times; one that keeps changing is exit 4 naming it."""
    for _attempt in range(HASH_TRIES):
        with reading(path), open(path, "rb") as handle:
            before = os.fstat(handle.fileno())
            digest, blob = _hashed_handle(handle, git_sha1)
            after = os.fstat(handle.fileno())
        if _stamp(before) == _stamp(after) and _still_at(path, before):
            return digest, blob, before
    raise ModelsError(f"{path} changed while it was being verified (replaced or written each of the {HASH_TRIES} "
                      f"times virnucpro read it)", hint="wait for whatever writes it to finish, then rerun")


def _still_at(path: Path, hashed: os.stat_result) -> bool:
    """Whether `path` still names the file hashed as `hashed`, with the same stamp (see HashCache)."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False  # moved away: the next try names what is (not) there
    return _stamp(now) == _stamp(hashed)  # no st_dev: on overlayfs, fstat and stat may name other devices


def same_version(hashed: os.stat_result, now: os.stat_result) -> bool:
    """Whether `now` is the file hashed as `hashed`, unwritten since: the same file (inode), size and
    mtime. Its ctime may differ: renaming it into place or setting its mode changes that. Not its
    device: on overlayfs (a container's) `fstat` of a handle and `stat` of its path may differ there."""
    return _version(now) == _version(hashed)


def combined_sha256(file_hashes: dict[str, str]) -> str:
    """Deterministic identity of a set of files: sha256 of sorted `name\\tsha256\\n` lines."""
    text = "".join(f"{name}\t{file_hashes[name]}\n" for name in sorted(file_hashes))
    return hashlib.sha256(text.encode()).hexdigest()


def _stamp(stat: os.stat_result) -> dict[str, int]:
    """What identifies one version of a file without reading it (see HashCache)."""
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns, "inode": stat.st_ino}


#: The hashes of big files this process computed (or wrote), by absolute path and stat stamp, across
#: every HashCache: `run` checks the models up to three times (download check, setup, the fp16
#: copy's source), and in a folder it cannot write, whose cache file is never saved, each check
#: would read the 11 GB of ESM-2 again. A few entries, one per big models file.
remembered_hashes: dict[tuple, dict] = {}


def _remembered_key(path: Path, stat: os.stat_result) -> tuple:
    return (os.path.abspath(path), *_stamp(stat).values())


class HashCache:
    """sha256 of big files keyed by their stat stamp; best effort, never required.

    The stamp is (size, mtime_ns, ctime_ns, inode): any write to the file, or another file put in
    its place, changes the ctime or the inode even when the writer restores the mtime (`rsync -a`
    of other weights of the same size, `touch -r`), so a changed file is always hashed again. The
    stamp recorded is the one of the very file hashed, taken through its handle, never the path's
    afterwards (`hashed_as_it_is`). What one instance hashes, the others of the process know too
    (`remembered_hashes`).
    """

    def __init__(self, directory: Path, use: bool = True):
        self.path = Path(directory) / HASH_CACHE
        self.use = use
        self.entries: dict[str, dict] = {}
        self.dirty = False
        if _is_file(Path(directory), HASH_CACHE):  # an unsearchable folder is named, not this cache
            try:
                loaded = json.loads(read_small_file(self.path, MANIFEST_MAX_BYTES))
                self.entries = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError, RecursionError):
                self.entries = {}

    def sha256(self, directory: Path, rel: str) -> str:
        """The file's sha256, from the cache when the file is unchanged."""
        return self.digests(directory, rel)[0]

    def digests(self, directory: Path, rel: str, git_sha1: bool = False) -> tuple[str, str | None]:
        """(sha256, git blob id when `git_sha1`) of the file, from the cache when the file is
        unchanged; one read computes both."""
        path = Path(directory) / rel
        with reading(path):
            stat = path.stat()
        entry = self._known(rel, path, stat, git_sha1)
        if entry is not None:
            remember_verified(path, stat, entry["sha256"])
            return entry["sha256"], entry.get("git_sha1") if git_sha1 else None
        if stat.st_size >= HASH_PROGRESS_BYTES:
            info(f"computing sha256 of {path} ({stat.st_size / 1e9:.1f} GB)")
        digest, blob, hashed = hashed_as_it_is(path, git_sha1)
        remember_verified(path, hashed, digest)
        if hashed.st_size >= _CACHE_MIN_BYTES:
            self.record(rel, path, digest, hashed, blob)
        return digest, blob

    def _known(self, rel: str, path: Path, stat: os.stat_result, git_sha1: bool) -> dict | None:
        """The hashes of the file as it is now (with its git blob id when `git_sha1`), from the
        cache file or else from this process (then put in the cache file too), if allowed."""
        entry = self._cached(rel, stat)
        if entry is None and self.use and (entry := remembered_hashes.get(_remembered_key(path, stat))):
            self.entries[rel] = entry
            self.dirty = True
        if entry is not None and (not git_sha1 or isinstance(entry.get("git_sha1"), str)):
            return entry
        return None

    def _cached(self, rel: str, stat: os.stat_result) -> dict | None:
        """The cache entry of a file whose stamp is unchanged, if allowed and valid: only of a file
        as large as those the cache is for (a smaller one costs little to hash, and an entry the
        folder's files came with vouched for a classifier never hashed)."""
        entry = self.entries.get(rel)
        if (self.use and stat.st_size >= _CACHE_MIN_BYTES and isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and all(entry.get(name) == value for name, value in _stamp(stat).items())):
            return entry
        return None

    def record(self, rel: str, path: Path, digest: str, stat: os.stat_result, git_sha1: str | None = None) -> None:
        """Remember `digest` (and the git blob id, when known) for the file whose status `stat` the
        caller took of what it hashed or wrote (never the path's status now: another file may be
        there already, see `hashed_as_it_is`), here and for the whole process."""
        entry = {**_stamp(stat), "sha256": digest, **({"git_sha1": git_sha1} if git_sha1 else {})}
        self.entries[rel] = remembered_hashes[_remembered_key(path, stat)] = entry
        remember_verified(path, stat, digest)
        self.dirty = True

    def save(self) -> None:
        """Write the cache if it changed; a read-only directory just hashes again next time."""
        if not self.dirty:
            return
        try:  # the manifest's permissions: whoever may read the manifest may read its hashes
            atomic_write_text(self.path, json.dumps(self.entries, indent=1, sort_keys=True) + "\n",
                              like=[self.path.parent / MANIFEST])
        except InterruptedByUser:
            raise
        except (OSError, VirnucproError):
            pass  # read-only staged directory, or a link at its name: hash again next time
        self.dirty = False


# --------------------------------------------------------------------------------------------
# Code in weights files
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _tensor_globals() -> frozenset[str]:
    """What torch's tensors-only loader allows, plus ESM-2's settings object."""
    from torch import _weights_only_unpickler as unpickler

    return frozenset(unpickler._get_allowed_globals()) | SETTINGS_GLOBALS


def code_in_weights(path: Path) -> list[str]:
    """The globals other than tensor machinery that loading this torch checkpoint would import.

    The pickles are disassembled, never run: `data.pkl` of the zip format, or the pickles at the
    start of the legacy format (read up to where its raw tensor data begins, not the whole file).
    """
    from virnucpro.classifier import pickle_globals

    try:
        with reading(path):  # a read the storage (or the mode) refused: no damaged file to replace
            data = _pickle_bytes(path)
    except (zipfile.BadZipFile, EOFError, ValueError, KeyError, NotImplementedError, RuntimeError) as exc:
        cause = os_cause(exc)  # zipfile calls a failed read of the archive's end "not a zip file"
        if cause is not None and cause.errno in READ_STORAGE_ERRNOS:
            with reading(path):
                raise cause from None
        raise ModelsError(f"{path} is not a readable torch checkpoint ({type(exc).__name__}: {exc})",
                          hint="replace it: `virnucpro models download` fetches the original") from None
    allowed = _tensor_globals()
    return list(dict.fromkeys(g for g in pickle_globals(data) if g not in allowed))


def _pickle_bytes(path: Path) -> bytes:
    """The pickle part of a torch checkpoint, without reading its tensor data. A file without one
    (garbage, a zip without data.pkl) is ValueError, and so is a pickle part larger than the
    classifier loader's bound (`CLASSIFIER_MAX_BYTES`), since it is read into memory."""
    from virnucpro.classifier import CLASSIFIER_MAX_BYTES as limit

    with open(path, "rb") as handle:  # zipfile.is_zipfile took a failed read for "no zip archive"
        zipped = handle.read(4) == b"PK\x03\x04"
        if not zipped:
            handle.seek(0)
            end = _legacy_pickles_end(handle)
            handle.seek(0)
            data = handle.read(min(end, limit + 1))
    if zipped:
        data = _zip_pickles(path, limit)
    if len(data) > limit:
        raise ValueError(f"its pickle part is larger than {limit:,} bytes, far more than a checkpoint holds")
    if not data:
        raise ValueError("it holds no pickle (neither a torch zip archive with data.pkl nor a legacy torch "
                         "file): it is damaged")
    return data


def _zip_pickles(path: Path, limit: int) -> bytes:
    """The data.pkl members of a torch zip archive, read at most `limit` + 1 bytes in all (a small
    archive may inflate to gigabytes)."""
    with zipfile.ZipFile(path) as archive:
        data = b""
        for name in archive.namelist():
            if name == "data.pkl" or name.endswith("/data.pkl"):
                with archive.open(name) as member:
                    data += member.read(limit + 1 - len(data))
            if len(data) > limit:
                break
        return data


def _legacy_pickles_end(handle) -> int:
    """Offset where the leading pickles of a legacy torch file (or a plain pickle) end."""
    end = 0
    for _ in range(LEGACY_PICKLES):
        try:
            for _opcode in pickletools.genops(handle):
                pass
        except Exception:  # noqa: BLE001 - raw tensor data (or garbage) follows: stop here
            break
        end = handle.tell()
    return end


def refused_message(path: Path, offending: Iterable[str]) -> str:
    """The one message for a model file that could run code when loaded."""
    return (f"{path} refused: it holds objects other than tensors ({', '.join(offending)}); "
            f"loading it could run code")


# --------------------------------------------------------------------------------------------
# Locating
# --------------------------------------------------------------------------------------------

@dataclass
class RoleStatus:
    """What `scan` found for one role: its files, and what is missing, corrupt, not the published
    model or refused."""

    role: str
    path: Path | None = None
    files: list[str] = field(default_factory=list)         # present files, relative
    missing: list[str] = field(default_factory=list)
    bad: list[tuple[str, str, str]] = field(default_factory=list)  # (file, expected, actual)
    refused: list[tuple[str, list[str]]] = field(default_factory=list)  # (file, offending globals)
    not_plain: list[tuple[str, str]] = field(default_factory=list)  # (file, what is there instead)
    unpublished: list[tuple[str, str, str]] = field(default_factory=list)  # (file, pinned, actual)
    hashes: dict[str, str] = field(default_factory=dict)
    unrecorded: list[str] = field(default_factory=list)    # present, no sha256 in the manifest
    notes: list[str] = field(default_factory=list)
    marked_tiny: bool = False  # what the manifest says
    tiny: bool = False         # marked tiny and every file recorded: checked against the manifest only
    name: str = ""
    sha256: str = ""

    @property
    def wrong(self) -> bool:
        """A present file is corrupt, not the published one, holds code, or is no plain file."""
        return bool(self.bad or self.unpublished or self.refused or self.not_plain)

    @property
    def ok(self) -> bool:
        """Present, matching its checksums (and pins, unless tiny) and free of code."""
        return not self.missing and not self.wrong


def _main_path(role: str, files: list[str]) -> str | None:
    """What a role's path points at: the ESM-2 weights, the DNABERT-S folder, the classifier."""
    if role == "esm2":
        weights = [f for f in files if f.endswith(".pt") and not f.endswith("-contact-regression.pt")]
        return weights[0] if weights else None
    if role == "dnabert_s":
        configs = [f for f in files if Path(f).name == "config.json"]
        return str(Path(configs[0]).parent) if configs else None
    return files[0] if files else None


def _expected_files(directory: Path, role: str, entry: dict | None
                    ) -> tuple[list[str], list[str], dict[str, str]]:
    """(required files, optional files, recorded sha256 by file) from the manifest or by name."""
    if entry is not None:
        return (list(entry["files"]) + unlisted_reads(role, entry["files"]),
                unlisted_weights(directory, role, entry["files"]),
                {k: v.lower() for k, v in entry.get("sha256", {}).items()})
    required, optional = (list(x) for x in STANDARD_FILES[role])
    if role == "dnabert_s":
        weights = [f"DNABERT-S/{w}" for w in DNABERT_WEIGHTS if _is_file(directory, f"DNABERT-S/{w}")]
        required += weights or ["DNABERT-S/model.safetensors (or pytorch_model.bin)"]
    return required, optional, {}


def unlisted_reads(role: str, files: list[str]) -> list[str]:
    """Files the encoder reads whatever the manifest lists that it does not list (DNABERT-S's
    tokenizer.json beside its config.json): required and checked like listed ones, so that a
    tokenizer of other bytes is never read unverified, nor left out of the role's identity."""
    folder = _main_path(role, files) if role == "dnabert_s" else None
    if folder is None:
        return []
    return [rel for rel in [(Path(folder) / name).as_posix() for name in DNABERT_ALWAYS_READ] if rel not in files]


def unlisted_weights(directory: Path, role: str, files: list[str]) -> list[str]:
    """DNABERT-S weights in the listed folder that the manifest does not list: the encoder would
    read them (model.safetensors before pytorch_model.bin), so they are checked too."""
    folder = _main_path(role, files) if role == "dnabert_s" else None
    if folder is None:
        return []
    candidates = [(Path(folder) / name).as_posix() for name in DNABERT_WEIGHTS]
    return [rel for rel in candidates if rel not in files and _is_file(directory, rel)]


def _is_file(directory: Path, rel: str) -> bool:
    """Whether `rel` is a file of the models directory. A folder on its way that cannot be searched
    (no permission) is exit 4 naming that folder: the file itself may not even exist (naming
    pytorch_model.bin, which the manifest does not list, sent users looking for it)."""
    try:
        return (directory / rel).is_file()
    except PermissionError:
        folder = (directory / rel).parent
        raise ModelsError(f"cannot read the folder {_shortened(str(folder), 300)}: permission denied",
                          hint=access_hint(folder, "rx") + ", or move it away and rerun "
                               "`virnucpro models download`") from None


def _role_status(directory: Path, role: str, manifest: dict | None, cache: HashCache) -> RoleStatus:
    """Check every file of one role (see the module docstring) and find its path and identity."""
    entry = (manifest or {}).get("models", {}).get(role)
    required, optional, expected = _expected_files(directory, role, entry)
    present = [rel for rel in required + optional if _is_file(directory, rel)]
    status = RoleStatus(role, marked_tiny=bool((entry or {}).get("tiny", False)),
                        name=str((entry or {}).get("name") or ""),
                        unrecorded=[rel for rel in present if rel not in expected])
    status.tiny = status.marked_tiny and not status.unrecorded
    for rel in required + optional:
        odd = None if rel in present else _in_the_way(directory, rel)
        if rel in present:
            _check_file(directory, rel, status, expected.get(rel), cache)
        elif rel in required and odd:
            if odd not in status.not_plain:  # a role's files share a folder in the way
                status.not_plain.append(odd)
        elif rel in required:
            status.missing.append(rel)
        elif role == "esm2":
            status.notes.append(f"{rel} is {odd[1] if odd else 'absent'}: virnucpro does "
                                "not need it, fair-esm's own loader does")
    main = _main_path(role, required)
    if main is None:
        status.missing.append("(the manifest lists no weights for it)")
        return status
    status.path = directory / main
    status.name = status.name or (Path(main).stem if role == "esm2" else Path(main).name)
    if status.ok:
        status.sha256 = _identity(role, main, status.hashes)
    return status


def _in_the_way(directory: Path, rel: str) -> tuple[str, str] | None:
    """(what is in the way, in words) of a model file that is no plain file: the file's name holding
    something else, even through a link ("a FIFO, not a plain file"), or a folder on its way that is
    a file ("a file, not a folder") or a link; None when nothing is there.
    `models tiny` and `models download` never replace it, so it is never reported as missing (whose
    hint would name them alone)."""
    parts = Path(rel).parts
    for depth in range(1, len(parts)):
        folder = Path(*parts[:depth])
        if os.path.islink(directory / folder):
            lacking = f" without {Path(*parts[depth:])}" if os.path.isdir(directory / folder) else ""
            return str(folder), f"{_what_is_at(directory / folder)}{lacking}, which virnucpro never writes through"
        if os.path.lexists(directory / folder) and not os.path.isdir(directory / folder):
            return str(folder), f"{_what_is_at(directory / folder)}, not a folder"
    if not os.path.lexists(directory / rel):
        return None
    return rel, f"{_what_is_at(directory / rel)}, not a plain file"


def _what_is_at(path: Path) -> str:
    """What is at `path`, in words: "a file", "a link to /dev/zero (a device)"."""
    kind = _target_kind(path)
    try:
        return f"a link to {os.readlink(path)} ({kind})"
    except OSError:  # not a link (EINVAL), or gone meanwhile
        return kind


def _target_kind(path: Path) -> str:
    """What `path` leads to (through a link), in words."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "a missing path"
    kinds = [(S_ISDIR, "a folder"), (S_ISFIFO, "a FIFO"), (S_ISCHR, "a device"), (S_ISBLK, "a device"),
             (S_ISSOCK, "a socket"), (S_ISREG, "a file")]
    return next((words for test, words in kinds if test(mode)), "not a file")


def _check_file(directory: Path, rel: str, status: RoleStatus, expected: str | None,
                cache: HashCache) -> None:
    """Hash one present file against its record and, unless its role is tiny, its pin; for
    encoder checkpoints, look for code."""
    status.files.append(rel)
    pin = None if status.tiny else pins.pin_for(status.role, rel)
    digest, blob = cache.digests(directory, rel, git_sha1=bool(pin and pin.git_sha1))
    status.hashes[rel] = digest
    if expected is not None and expected != digest:
        status.bad.append((rel, expected, digest))
        return
    mismatch = None if status.tiny else _pin_mismatch(pin, digest, blob)
    if mismatch is not None:
        status.unpublished.append((rel, *mismatch))
        return
    if status.role in ENCODER_ROLES and rel.endswith(PICKLE_SUFFIXES):
        offending = code_in_weights(directory / rel)
        if offending:
            status.refused.append((rel, offending))


def _pin_mismatch(pin: pins.FileSource | None, digest: str, blob: str | None) -> tuple[str, str] | None:
    """(what the published file has, what this one has), or None when this one is it."""
    if pin is None or not (pin.sha256 or pin.git_sha1):
        return "", ""  # the published model has no (pinned) file of that name
    if pin.git_sha1 and pin.git_sha1.lower() != blob:
        return f"git blob id {pin.git_sha1}", f"git blob id {blob}"
    if pin.sha256 and pin.sha256.lower() != digest:
        return f"sha256 {pin.sha256}", f"sha256 {digest}"
    return None


def _identity(role: str, main: str, hashes: dict[str, str]) -> str:
    """The role's model identity (see the module docstring)."""
    if role == "dnabert_s":
        return combined_sha256({Path(f).name: hashes[f] for f in _identity_files(role, main, hashes)})
    return hashes[main]


def _identity_files(role: str, main: str, files: Iterable[str]) -> list[str]:
    """The files of `files` whose sha256 make the role's identity (`main`: see `_main_path`)."""
    if role == "dnabert_s":
        return [f for f in files if Path(f).parent == Path(main) and Path(f).name in DNABERT_IDENTITY_FILES]
    return [main]


def recorded_identity(directory: Path, role: str) -> str | None:
    """The identity of `role` (see the module docstring) that the manifest of `directory` records,
    computed from its recorded sha256 exactly as `locate` computes it from the files; None when the
    manifest cannot tell: no manifest (a hand-staged folder), no entry for the role, no weights
    listed, or a file of the identity without a recorded sha256. Never reads a model file: the
    pipeline's PREDICT is given the manifest and the classifier only. (Files the manifest does not
    list cannot change it: `locate` refuses any it would hash as not published.)"""
    return entry_identity(role, ((read_manifest(Path(directory)) or {}).get("models") or {}).get(role))


def entry_identity(role: str, entry: dict | None) -> str | None:
    """The identity of `role` that a manifest entry (its `files` and `sha256`) records; None when it
    cannot tell (see `recorded_identity`)."""
    main = _main_path(role, entry["files"]) if entry is not None else None
    if main is None:
        return None
    recorded = {rel: digest.lower() for rel, digest in entry.get("sha256", {}).items()}
    used = _identity_files(role, main, entry["files"] + unlisted_reads(role, entry["files"]))
    if not all(rel in recorded for rel in used):
        return None
    return _identity(role, main, recorded)


def published_identity(role: str) -> str:
    """The identity of `role`'s published model, computed from its pins as from a manifest entry."""
    files = pins.SOURCES[role].files
    return entry_identity(role, {"files": [spec.relpath for spec in files],
                                 "sha256": {spec.relpath: spec.sha256 for spec in files}})


def scan(directory: Path | None, roles: Iterable[str], full: bool = False, where: str = "--models"
         ) -> tuple[Path, list[RoleStatus]]:
    """The state of each role in the models directory (`full`: re-hash, ignoring the cache;
    `where`: the option or argument `directory` came from, see `models_dir`)."""
    roles = list(roles)
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ModelsError(f"unknown model role(s) {', '.join(unknown)}; roles are {', '.join(ROLES)}")
    directory = models_dir(directory, where)
    with reading(directory):
        if os.path.lexists(directory) and not directory.is_dir():
            raise _not_a_directory(directory, where)  # at once: before any work that needs the models
        if not directory.is_dir():
            return directory, [RoleStatus(role, missing=["(no models directory)"]) for role in roles]
        manifest = read_manifest(directory, where)
        cache = HashCache(directory, use=not full)
        try:
            statuses = [_role_status(directory, role, manifest, cache) for role in roles]
        finally:
            cache.save()
    return directory, statuses


def _not_a_directory(directory: Path, where: str = "--models") -> ModelsError:
    """Exit 4 for a models path that is a file (or a dangling link); the hint names the command's own
    way of giving the folder (`where`, see `_folder_given`)."""
    what = ("a loop of symbolic links" if is_link_loop(directory) else
            "a link to a missing path" if os.path.islink(directory) and not directory.exists() else "a file")
    return ModelsError(f"models directory {directory} is not a directory (it is {what})",
                       hint=f"give the folder that holds the models ({_folder_given(where)} or VIRNUCPRO_MODELS=DIR)")


def problems(directory: Path, statuses: list[RoleStatus]) -> ModelsError | None:
    """One error naming everything missing, corrupt, not published or refused, with the command
    that fixes it."""
    failing = [s for s in statuses if not s.ok]
    if not failing:
        return None
    if os.path.lexists(directory) and not directory.is_dir():
        return _not_a_directory(directory)
    if is_link_loop(directory):  # a loop on its way: "does not exist", and a download there, would mislead
        return link_loop(directory, "models directory", ModelsError)
    if not directory.is_dir():
        return _no_such_folder(directory, [s.role for s in statuses] if len(statuses) == 1 else None)
    missing = [s for s in failing if s.missing]
    lines = []
    if missing:
        busy = in_progress(directory, missing_text(missing))
        if busy is not None:  # a download's files are not all in place yet: another one would be refused
            return busy
        lines.append(f"models missing in {directory}: {missing_text(missing)}")
    for s in failing:
        lines += [f"checksum mismatch for {s.role}: {directory / rel} has sha256 {got}, the manifest "
                  f"records {want} (corrupt or replaced file)" for rel, want, got in s.bad]
        lines += _unpublished_lines(directory, s)
        lines += [f"{s.role}: " + refused_message(directory / rel, names) for rel, names in s.refused]
        lines += [f"{s.role}: {directory / rel} is {what}" for rel, what in s.not_plain]
    hint = _move_first(_foreign_files(directory, failing), fix_command(directory, [s.role for s in failing]))
    if any(s.unpublished for s in failing) and not is_tiny_folder(directory):
        hint += ("; for tests, `virnucpro models tiny DIR` writes tiny random models, which every "
                 "output marks as tiny")
    if any(s.unpublished and s.role.startswith("classifier") for s in failing):
        hint += ("; a classifier of your own (one you trained) is not put in the models folder: keep it "
                 "elsewhere and give it with --classifier FILE")
    error = ModelsError("\n".join(printable(line) for line in lines), hint=hint)
    error.multiline = True  # one problem per line
    return error


def _no_such_folder(directory: Path, roles: list[str] | None) -> ModelsError:
    """Exit 4 for a models folder that does not exist: its path quoted (a stray space shows), what
    names it when VIRNUCPRO_MODELS does, and whitespace at the ends of that value or of a folder
    name pointed out (never stripped: a folder name may end in a space)."""
    variable = _variable_naming(directory)
    origin = ("" if variable is None else " (from VIRNUCPRO_MODELS)" if variable == str(directory)
              else f" (VIRNUCPRO_MODELS={shell_word(variable)})")
    hint = download_command(directory, roles)
    blocker = _part_that_is_no_folder(directory)
    if blocker is not None:  # a download there fails too ("cannot create ...: Not a directory")
        hint = f"{blocker} on its way is {'a link to a missing path' if blocker.is_symlink() else 'a file'}: give the models folder's real path"
    elif variable is None and _is_default_folder(directory):  # nothing named it: maybe the models are elsewhere
        hint = (f"name the folder that holds the models (--models DIR, or VIRNUCPRO_MODELS=DIR; in a container, a "
                f"folder mounted into it), or download them into this default folder: {hint}")
    return ModelsError(f"models directory {shell_word(str(directory))}{origin} does not exist"
                       f"{_whitespace_note(directory, variable)}", hint=hint)


def _part_that_is_no_folder(directory: Path) -> Path | None:
    """The folder above `directory` that is a file or a link to a missing path, if one is."""
    for part in reversed(Path(directory).parents):
        try:
            if part.is_symlink() and not part.exists() or part.exists() and not part.is_dir():
                return part
        except OSError:
            return None
    return None


def _is_default_folder(directory: Path) -> bool:
    """Whether `directory` is the models folder used when none is named (`models_dir`)."""
    try:
        return directory == _user_data_dir() / "models"
    except ModelsPathError:
        return False


def _variable_naming(directory: Path) -> str | None:
    """The value of VIRNUCPRO_MODELS when it names `directory`, else None."""
    variable = os.environ.get("VIRNUCPRO_MODELS")
    try:
        return variable if variable and _expanded(variable, "VIRNUCPRO_MODELS") == directory else None
    except ModelsPathError:
        return None


def _whitespace_note(directory: Path, variable: str | None) -> str:
    """'; note: ...' when VIRNUCPRO_MODELS (`variable`) or a folder name on the path begins or
    ends with whitespace; '' otherwise."""
    if variable is not None and _edges(variable):
        return (f"; note: the value of VIRNUCPRO_MODELS {_edges(variable)} with whitespace, which is kept as "
                "part of the path")
    odd = [f"{name!r} {_edges(name)} with whitespace" for name in directory.parts if _edges(name)]
    return f"; note: the folder name {', '.join(odd)}" if odd else ""


def _edges(text: str) -> str:
    """Which ends of `text` are whitespace: 'begins', 'ends', 'begins and ends', or ''."""
    ends = [word for word, edge in (("begins", text[:1]), ("ends", text[-1:])) if edge.isspace()]
    return " and ".join(ends)


def missing_text(statuses: list[RoleStatus]) -> str:
    """The roles with files missing, and those files, for messages."""
    return "; ".join(f"{s.role} ({', '.join(s.missing)})" for s in statuses if s.missing)


def _foreign_files(directory: Path, failing: list[RoleStatus]) -> list[Path]:
    """Failing files that neither `models download` nor `models tiny` will replace: ones the
    manifest does not record (virnucpro did not write them, so they are never replaced) and ones
    the published model has no file of that name (a download never writes them)."""
    found = [rel for s in failing for rel, want, _got in s.unpublished if rel in s.unrecorded or not want]
    found += [rel for s in failing for rel, _names in s.refused if rel in s.unrecorded]
    found += [rel for s in failing for rel, _what in s.not_plain]  # never replaced by either command
    return [directory / rel for rel in dict.fromkeys(found)]


def _move_first(foreign: list[Path], command: str) -> str:
    """The fix hint: `command`, after moving away the files it would refuse to replace (so the
    hint never names a command that refuses the folder as it is)."""
    if not foreign:
        return command
    return (f"move {', '.join(shell_word(str(p)) for p in foreign)} out of the models folder "
            f"(virnucpro never replaces a file it did not write, nor one the published model lacks, "
            f"nor anything that is no plain file), "
            f"then run `{command}`")


def _unpublished_lines(directory: Path, s: RoleStatus) -> list[str]:
    """Why each file of a role that is not tiny is not the published model."""
    lines = [f"{s.role}: {directory / rel} is not the published model: "
             + (f"it has {got}, the published file has {want}" if want else
                f"the published {s.role} model has no file of that name") for rel, want, got in s.unpublished]
    if lines and s.marked_tiny:
        lines.insert(0, f"{s.role} is marked tiny, but the manifest records no sha256 for "
                        f"{', '.join(s.unrecorded)}: checked against the published model instead")
    return lines


def locate(directory: Path | None = None, roles: Iterable[str] = ROLES) -> ModelSet:
    """Find and verify the models for `roles`; `ModelsError` (exit 4) names what is missing,
    corrupt or refused and the exact command that fixes it. Never downloads."""
    directory, statuses = scan(directory, roles)
    problem = problems(directory, statuses)
    if problem is not None:
        raise problem
    return model_set(directory, statuses)


def model_set(directory: Path, statuses: list[RoleStatus]) -> ModelSet:
    """The `ModelSet` of roles that all checked out."""
    return ModelSet(directory=directory,
                    paths={s.role: s.path for s in statuses},
                    sha256={s.role: s.sha256 for s in statuses},
                    tiny=any(s.tiny for s in statuses),
                    names={s.role: s.name for s in statuses})


# --------------------------------------------------------------------------------------------
# ESM-2's fp16 copy (a derived file: never in `files`, never part of the model identity)
# --------------------------------------------------------------------------------------------

@dataclass
class Esm2Home:
    """Where an ESM-2 `.pt` lives: its models directory, its name there and its manifest entry."""

    directory: Path
    weights: str
    entry: dict

    @property
    def copy_name(self) -> str:
        """The fp16 copy's file name: the weights' name with `.fp16.safetensors`."""
        return str(Path(self.weights).with_suffix("")) + FP16_SUFFIX

    def writable(self) -> bool:
        """Whether this process may create files in the models directory."""
        return os.access(self.directory, os.W_OK)


def esm2_home(weights: Path) -> Esm2Home | None:
    """The models directory whose manifest lists `weights` as its esm2 weights (the folder of the
    file or one of its parents), or None (a hand-staged folder without a manifest entry). A
    manifest.json there that is not a readable virnucpro models manifest (a web app's) is ignored."""
    weights = Path(weights).absolute()
    for directory in list(weights.parents)[:FP16_PARENT_LEVELS]:
        try:
            entry = ((read_manifest(directory) or {}).get("models") or {}).get("esm2")
        except ModelsError:
            continue
        rel = weights.relative_to(directory).as_posix()
        if entry is not None and _main_path("esm2", entry["files"]) == rel:
            return Esm2Home(directory, rel, entry)
    return None


def trusted_fp16_copy(home: Esm2Home, cache: HashCache) -> tuple[Path | None, str]:
    """(the recorded fp16 copy, "") when it was derived from the `.pt` as it is now and its own
    sha256 holds; else (None, why not: "" when none is recorded). Hashes come from `cache`."""
    record = home.entry.get("fp16")
    if record is None:
        return None, ""
    path = home.directory / record["file"]
    if not path.is_file():
        return None, f"the fp16 copy {path} recorded in the manifest is missing"
    if unreadable_fp16_copy(home) is not None:
        return None, f"the fp16 copy {path} cannot be read by this user"
    source = cache.sha256(home.directory, home.weights)
    if source != record["source_sha256"].lower():
        return None, (f"the fp16 copy {path} was derived from another {home.weights} (sha256 "
                      f"{record['source_sha256']}, the file now has {source})")
    digest = cache.sha256(home.directory, record["file"])
    if digest != record["sha256"].lower():
        return None, f"the fp16 copy {path} has sha256 {digest}, the manifest records {record['sha256']} (corrupt)"
    return path, ""


def unreadable_fp16_copy(home: Esm2Home) -> Path | None:
    """The recorded fp16 copy when it is there but this user may not read it (another member of
    the group wrote it under a narrow umask), else None."""
    record = home.entry.get("fp16")
    path = home.directory / record["file"] if record else None
    return path if path is not None and path.is_file() and not os.access(path, os.R_OK) else None


def verified_source(home: Esm2Home, cache: HashCache) -> str | None:
    """The `.pt`'s sha256 when it matches the manifest's record of it (a copy may be derived from
    it), else None."""
    recorded = (home.entry.get("sha256") or {}).get(home.weights)
    digest = cache.sha256(home.directory, home.weights)
    return digest if recorded is not None and recorded.lower() == digest else None


def record_fp16_copy(home: Esm2Home, digest: str, source_sha256: str) -> bool:
    """Record the fp16 copy under role esm2 in the manifest (the caller holds the folder lock);
    False when the manifest no longer lists the `.pt` it came from (changed meanwhile)."""
    manifest = read_manifest(home.directory) or {"models": {}}
    entry = manifest["models"].get("esm2")
    if entry is None or _main_path("esm2", entry["files"]) != home.weights:
        return False
    entry["fp16"] = {"file": home.copy_name, "sha256": digest, "source_sha256": source_sha256}
    write_manifest(home.directory, manifest)
    home.entry = entry
    return True


# --------------------------------------------------------------------------------------------
# models check
# --------------------------------------------------------------------------------------------

def check(directory: Path | None = None) -> None:
    """`virnucpro models check`: presence and full checksums of every role, on stderr.

    Raises `ModelsError` (exit 4) when anything is missing, corrupt, not the published model (a
    role that is not tiny) or refused (code in an encoder checkpoint, or a classifier the
    restricted loader refuses).
    """
    directory, statuses = scan(directory, ROLES, full=True, where=CHECK_ARGUMENT)
    refuse_out_of_reach([directory])  # "verified" would promise models embed cannot load
    _note_fp16_copy(statuses)
    info(f"models directory: {shell_word(str(directory))}"
         + ("" if (directory / MANIFEST).is_file() else " (no manifest.json: standard file names)"))
    refused = [message for s in statuses if (message := _report_role(s)) is not None]
    if any(s.tiny for s in statuses if not s.missing):
        warn("these are tiny random models for tests: their predictions mean nothing")
    problem = problems(directory, statuses)
    if problem is not None:
        raise in_progress(directory, rerun=f"`virnucpro models check {shell_word(str(directory))}`") or problem
    if refused:
        raise ModelsError("classifier refused by the restricted loader: " + "; ".join(refused),
                          hint=fix_command(directory))
    info("all models present and verified")


def _note_fp16_copy(statuses: list[RoleStatus]) -> None:
    """ESM-2's recorded fp16 copy hashed again too, as a note on the role (a derived file: it never
    fails the check). Its hash is then in the cache for the fp16 runs, which would otherwise each
    read its gigabytes again in a folder they cannot write (after a `chmod`, say)."""
    esm = next((s for s in statuses if s.role == "esm2" and s.ok), None)
    home = esm2_home(esm.path) if esm is not None else None
    if home is None or "fp16" not in home.entry:
        return
    rel, cache = home.entry["fp16"]["file"], HashCache(home.directory)
    try:
        if _is_file(home.directory, rel) and unreadable_fp16_copy(home) is None:
            digest, _blob, hashed = hashed_as_it_is(home.directory / rel)
            cache.record(rel, home.directory / rel, digest, hashed)
        copy, problem = trusted_fp16_copy(home, cache)
    except ModelsError as exc:
        copy, problem = None, exc.message
    finally:
        cache.save()
    esm.notes.append(f"fp16 copy {rel}: " + ("verified; fp16 runs load it" if copy else
                                            f"not used ({problem}); fp16 runs load the .pt"))


def in_progress(directory: Path, missing: str = "", rerun: str = "the same command") -> ModelsError | None:
    """Exit 4 saying that another command is writing the folder now, naming it, when one holds its
    lock: a `models download` or `models tiny` whose files are not all in place yet, or an embed
    writing ESM-2's fp16 copy (the lock does not say which), and the usual hint (a download) would
    be refused while it runs (`missing`: what was found missing, if anything; `rerun`: the command
    to run once it is done). None when nobody holds it."""
    holder = lock_holder(directory)
    if holder is None:
        return None
    found = f"models missing in {directory}: {missing}; " if missing else ""
    return ModelsError(f"{found}a virnucpro command is writing models into {directory} now ({holder}): a "
                       "models download or models tiny in progress, whose files are not all in place yet, "
                       "or ESM-2's fp16 copy being written",
                       hint=f"wait for it to finish, then rerun {rerun}; files still missing then are named "
                            "with their fix")


def _report_role(s: RoleStatus) -> str | None:
    """Print one role's state and files; returns the restricted loader's refusal, if any."""
    if s.missing:
        info(f"  {s.role:<15} MISSING  {', '.join(s.missing)}")
        _report_not_plain(s)
        return None
    refusal = _classifier_refusal(s) if s.ok and s.role.startswith("classifier_") else None
    state = "BAD" if s.bad or s.unpublished or s.not_plain else "REFUSED" if s.refused or refusal else "ok"
    info(f"  {s.role:<15} {state:<8} {s.path}" + (" [tiny test model]" if s.tiny else ""))
    for rel in s.files:
        info(f"      {rel}  sha256 {s.hashes[rel]}  ({_file_mark(s, rel)})")
    for rel, want, _got in s.bad:
        info(f"      {rel}: manifest records {want}")
    for rel, want, _got in s.unpublished:
        info(f"      {rel}: " + (f"the published file has {want}" if want else "no such published file"))
    _report_not_plain(s)
    for note in s.notes:
        info(f"      note: {note}")
    return refusal


def _report_not_plain(s: RoleStatus) -> None:
    """One line per file of the role that is there but no plain file, or per folder in the way of
    one (see `_in_the_way`)."""
    for rel, what in s.not_plain:
        info(f"      {rel}: {what} (NOT PLAIN)")


def _file_mark(s: RoleStatus, rel: str) -> str:
    """One file's verdict in `models check`."""
    if any(rel == bad[0] for bad in s.bad):
        return "MISMATCH"
    if any(rel == other[0] for other in s.unpublished):
        return "NOT PUBLISHED"
    if any(rel == refused[0] for refused in s.refused):
        return "REFUSED"
    return "verified: manifest" if s.tiny else "verified: pin"


def _classifier_refusal(s: RoleStatus) -> str | None:
    """The restricted loader's verdict on a classifier (noted on success, returned on refusal)."""
    from virnucpro.classifier import load_classifier

    try:
        width = load_classifier(s.path).input_dim
    except ModelsReadError:
        raise  # the storage's fault, with its own fix: no refusal, and no other file to fetch
    except ModelsError as exc:
        return f"{s.role}: {exc.message}"
    s.notes.append(f"restricted loader: MLPClassifier, input width {width}")
    return None
