"""The models directory (CONTRACTS.md "Models directory"): find, verify, download and fake models.

Layout, written by `download` and `make_tiny` and read by `locate`:

    MODELS/manifest.json   {"format_version": 1, "models": {role: {"files": [...], "sha256": {...},
                            "source": ..., "revision": ..., "tiny": bool, "name": ..., "urls": {...}}}}
    MODELS/esm2_t36_3B_UR50D.pt (+ esm2_t36_3B_UR50D-contact-regression.pt, which fair-esm's own
           loader wants next to it), MODELS/DNABERT-S/, MODELS/300_model.pth, MODELS/500_model.pth

A directory without manifest.json (or a manifest without a role) is read by those standard names,
so hand-staged copies work. Every file is hashed (sha256) and compared with the manifest; hashes of
big files are cached by (size, mtime) in `MODELS/.sha256-cache.json` when the directory is writable,
so `embed` on many shards does not re-read 6 GB each time (`models check` always re-hashes).

Model identity (`ModelSet.sha256[role]`, used in checkpoint keys and HDF5 attributes):
- esm2: sha256 of the weights `.pt` (the contact-regression file does not change embeddings);
- dnabert_s: sha256 of the text `"<file>\\t<sha256>\\n"` over the folder's config.json,
  model.safetensors, pytorch_model.bin and tokenizer.json (those present), sorted by file name;
- classifier_300 / classifier_500: sha256 of the file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from virnucpro import __version__

from virnucpro.console import info, warn
from virnucpro.errors import BadInputError, ModelsError

ROLES = ("esm2", "dnabert_s", "classifier_300", "classifier_500")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
HASH_CACHE = ".sha256-cache.json"

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
_CACHE_MIN_BYTES = 64 * 1024 * 1024


def _file_mode() -> int:
    """The mode a plain `open()` would give a new file (mkstemp would give 0600: unreadable to
    the other users of a shared models directory)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# --------------------------------------------------------------------------------------------
# Model sets
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
            raise ModelsError(f"there is no original classifier for chunk size {chunk_size} "
                              f"(only 300 and 500)", hint="pass your own with --classifier FILE")
        return self._path(role)

    def identity(self, roles: Iterable[str] | None = None) -> dict[str, dict[str, str]]:
        """`{role: {"name", "sha256"}}` — the `models` attribute of embedding shards."""
        return {role: {"name": self.names.get(role, role), "sha256": self.sha256[role]}
                for role in (roles or self.paths)}

    def _path(self, role: str) -> Path:
        if role not in self.paths:
            raise ModelsError(f"model {role} was not located in {self.directory}",
                              hint=_download_command(self.directory, [role]))
        return self.paths[role]


def models_dir(explicit: Path | str | None = None) -> Path:
    """`explicit` (--models/--dest) > $VIRNUCPRO_MODELS > the user data directory."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    env = os.environ.get("VIRNUCPRO_MODELS")
    if env:
        return Path(env).expanduser().absolute()
    return _user_data_dir() / "models"


def _user_data_dir() -> Path:
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "virnucpro"
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "virnucpro"
    return Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share") / "virnucpro"


def _download_command(directory: Path, roles: Iterable[str] | None = None) -> str:
    roles = list(roles or [])
    command = f"virnucpro models download --dest {shlex.quote(str(directory))}"
    if len(roles) == 1:
        command += f" --only {roles[0]}"
    return command


def _staging_hint(directory: Path, roles: Iterable[str] | None = None) -> str:
    return (f"on a machine with internet access run `{_download_command(directory, roles)}` "
            f"(or download into any directory and copy it here), then point runs at it with "
            f"--models DIR or VIRNUCPRO_MODELS=DIR")


# --------------------------------------------------------------------------------------------
# Manifest and hashing
# --------------------------------------------------------------------------------------------

def read_manifest(directory: Path) -> dict | None:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelsError(f"{path} is unreadable or not JSON: {exc}",
                          hint=f"delete it to read the directory by standard file names, or "
                               f"`{_download_command(Path(directory))}`") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("models", {}), dict):
        raise ModelsError(f"{path} does not have the models-manifest layout")
    if manifest.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise ModelsError(f"{path} has format_version {manifest.get('format_version')}; this "
                          f"virnucpro reads version {FORMAT_VERSION}")
    manifest.setdefault("models", {})
    return manifest


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(directory: Path, manifest: dict) -> None:
    manifest = {"format_version": FORMAT_VERSION, **{k: v for k, v in manifest.items()
                                                     if k != "format_version"}}
    manifest["models"] = {role: manifest["models"][role]
                          for role in sorted(manifest["models"], key=_role_order)}
    _atomic_write_text(Path(directory) / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def _role_order(role: str) -> tuple[int, str]:
    return (ROLES.index(role) if role in ROLES else len(ROLES), role)


def sha256_file(path: Path, git_sha1: bool = False) -> str | tuple[str, str]:
    """sha256 of a file (and, with `git_sha1`, its git blob id, as GitHub's tree lists it)."""
    digest = hashlib.sha256()
    blob = None
    if git_sha1:
        blob = hashlib.sha1()
        blob.update(b"blob %d\0" % Path(path).stat().st_size)
    with open(path, "rb") as handle:
        while chunk := handle.read(8 * 1024 * 1024):
            digest.update(chunk)
            if blob is not None:
                blob.update(chunk)
    return (digest.hexdigest(), blob.hexdigest()) if blob is not None else digest.hexdigest()


def combined_sha256(file_hashes: dict[str, str]) -> str:
    """Deterministic identity of a set of files: sha256 of sorted `name\\tsha256\\n` lines."""
    text = "".join(f"{name}\t{file_hashes[name]}\n" for name in sorted(file_hashes))
    return hashlib.sha256(text.encode()).hexdigest()


class _HashCache:
    """sha256 of big files keyed by (size, mtime_ns); best effort, never required."""

    def __init__(self, directory: Path, use: bool = True):
        self.path = Path(directory) / HASH_CACHE
        self.use = use
        self.entries: dict[str, dict] = {}
        self.dirty = False
        if self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text())
                self.entries = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                self.entries = {}

    def sha256(self, directory: Path, rel: str) -> str:
        path = Path(directory) / rel
        stat = path.stat()
        entry = self.entries.get(rel)
        if (self.use and isinstance(entry, dict) and entry.get("size") == stat.st_size
                and entry.get("mtime_ns") == stat.st_mtime_ns and isinstance(entry.get("sha256"), str)):
            return entry["sha256"]
        if stat.st_size > 256 * 1024 * 1024:
            info(f"computing sha256 of {path} ({stat.st_size / 1e9:.1f} GB)")
        digest = sha256_file(path)
        if stat.st_size >= _CACHE_MIN_BYTES:
            self.record(rel, path, digest)
        return digest

    def record(self, rel: str, path: Path, digest: str) -> None:
        stat = path.stat()
        self.entries[rel] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            _atomic_write_text(self.path, json.dumps(self.entries, indent=1, sort_keys=True) + "\n")
        except OSError:
            pass  # read-only staged directory: hash again next time
        self.dirty = False


# --------------------------------------------------------------------------------------------
# Locating
# --------------------------------------------------------------------------------------------

@dataclass
class RoleStatus:
    role: str
    path: Path | None = None
    files: list[str] = field(default_factory=list)         # present files, relative
    missing: list[str] = field(default_factory=list)
    bad: list[tuple[str, str, str]] = field(default_factory=list)  # (file, expected, actual)
    hashes: dict[str, str] = field(default_factory=dict)
    unverified: list[str] = field(default_factory=list)    # present, no recorded checksum
    notes: list[str] = field(default_factory=list)
    tiny: bool = False
    name: str = ""
    sha256: str = ""
    from_manifest: bool = False

    @property
    def ok(self) -> bool:
        return not self.missing and not self.bad


def _main_path(role: str, files: list[str]) -> str | None:
    if role == "esm2":
        weights = [f for f in files if f.endswith(".pt") and not f.endswith("-contact-regression.pt")]
        return weights[0] if weights else None
    if role == "dnabert_s":
        configs = [f for f in files if Path(f).name == "config.json"]
        return str(Path(configs[0]).parent) if configs else None
    return files[0] if files else None


def _role_status(directory: Path, role: str, manifest: dict | None, cache: _HashCache) -> RoleStatus:
    status = RoleStatus(role)
    entry = (manifest or {}).get("models", {}).get(role)
    optional: list[str] = []
    expected: dict[str, str] = {}
    if isinstance(entry, dict) and isinstance(entry.get("files"), list) and entry["files"]:
        status.from_manifest = True
        required = [str(f) for f in entry["files"]]
        for rel in required:
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise ModelsError(f"{directory / MANIFEST}: file {rel!r} of {role} is not inside the "
                                  f"models directory")
        expected = {k: v for k, v in (entry.get("sha256") or {}).items() if isinstance(v, str)}
        status.tiny = bool(entry.get("tiny", False))
        status.name = str(entry.get("name") or "")
    else:
        required, opt = (list(x) for x in STANDARD_FILES[role])
        optional = opt
        if role == "dnabert_s":
            weights = [f"DNABERT-S/{w}" for w in DNABERT_WEIGHTS if (directory / "DNABERT-S" / w).is_file()]
            required += weights or ["DNABERT-S/model.safetensors (or pytorch_model.bin)"]
    for rel in required + optional:
        path = directory / rel
        if not path.is_file():
            if rel in required:
                status.missing.append(rel)
            elif role == "esm2":
                status.notes.append(f"{rel} is absent: virnucpro does not need it, fair-esm's own "
                                    f"loader does")
            continue
        status.files.append(rel)
        digest = cache.sha256(directory, rel)
        status.hashes[rel] = digest
        if rel in expected:
            if expected[rel].lower() != digest:
                status.bad.append((rel, expected[rel], digest))
        else:
            status.unverified.append(rel)
    main = _main_path(role, required)
    if main is None:
        status.missing.append("(the manifest lists no weights for it)")
    else:
        status.path = directory / main
        if not status.name:
            status.name = Path(main).stem if role == "esm2" else Path(main).name
    if status.ok and main is not None:
        if role == "dnabert_s":
            identity = {Path(f).name: h for f, h in status.hashes.items()
                        if Path(f).parent == Path(main) and Path(f).name in DNABERT_IDENTITY_FILES}
            status.sha256 = combined_sha256(identity)
        else:
            status.sha256 = status.hashes[main]
    return status


def _scan(directory: Path | None, roles: Iterable[str], full: bool = False
          ) -> tuple[Path, list[RoleStatus]]:
    roles = list(roles)
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ModelsError(f"unknown model role(s) {', '.join(unknown)}; roles are {', '.join(ROLES)}")
    directory = models_dir(directory)
    if not directory.is_dir():
        return directory, [RoleStatus(role, missing=["(no models directory)"]) for role in roles]
    manifest = read_manifest(directory)
    cache = _HashCache(directory, use=not full)
    try:
        statuses = [_role_status(directory, role, manifest, cache) for role in roles]
    finally:
        cache.save()
    return directory, statuses


def _problems(directory: Path, statuses: list[RoleStatus]) -> ModelsError | None:
    missing = [s for s in statuses if s.missing]
    bad = [s for s in statuses if s.bad]
    if not missing and not bad:
        return None
    if not directory.is_dir():
        return ModelsError(f"models directory {directory} does not exist",
                           hint=_download_command(directory, [s.role for s in statuses]
                                                  if len(statuses) == 1 else None))
    lines = []
    if missing:
        lines.append(f"models missing in {directory}: " + "; ".join(
            f"{s.role} ({', '.join(s.missing)})" for s in missing))
    for s in bad:
        for rel, want, got in s.bad:
            lines.append(f"checksum mismatch for {s.role}: {directory / rel} has sha256 {got}, "
                         f"the manifest records {want} (corrupt or replaced file)")
    roles = [s.role for s in missing + bad]
    return ModelsError("\n".join(lines), hint=_download_command(directory, list(dict.fromkeys(roles))))


def locate(directory: Path | None = None, roles: Iterable[str] = ROLES) -> ModelSet:
    """Find and verify the models for `roles`; `ModelsError` (exit 4) names what is missing or
    corrupt and the exact command that fixes it. Never downloads."""
    directory, statuses = _scan(directory, roles)
    problem = _problems(directory, statuses)
    if problem is not None:
        raise problem
    return ModelSet(directory=directory,
                    paths={s.role: s.path for s in statuses},
                    sha256={s.role: s.sha256 for s in statuses},
                    tiny=any(s.tiny for s in statuses),
                    names={s.role: s.name for s in statuses})


def _env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def ensure(directory: Path | None = None, roles: Iterable[str] = ROLES, offline: bool = False
           ) -> ModelSet:
    """`locate`, downloading missing roles first unless offline (`--offline` or HF_HUB_OFFLINE=1).

    A present file with a wrong checksum is never replaced silently: that is an error to look at.
    """
    roles = list(roles)
    directory, statuses = _scan(directory, roles)
    missing = [s.role for s in statuses if s.missing]
    if any(s.bad for s in statuses):
        raise _problems(directory, statuses)  # type: ignore[misc]
    if missing:
        if offline or _env_offline():
            why = "--offline" if offline else "HF_HUB_OFFLINE=1"
            raise ModelsError(f"models missing in {directory}: {', '.join(missing)}; not "
                              f"downloading ({why})", hint=_staging_hint(directory, missing))
        from virnucpro.download import download_roles

        download_roles(directory, missing, mirror=None)
    return locate(directory, roles)


def download(dest: Path | None = None, only: str | None = None, mirror: str | None = None) -> None:
    """`virnucpro models download`: see `virnucpro.download.download`."""
    from virnucpro.download import download as _download

    _download(dest=dest, only=only, mirror=mirror)


def check(directory: Path | None = None) -> None:
    """`virnucpro models check`: presence and full checksums of every role, on stderr.

    Raises `ModelsError` (exit 4) when anything is missing, corrupt or (classifiers) refused by the
    restricted loader.
    """
    directory, statuses = _scan(directory, ROLES, full=True)
    info(f"models directory: {directory}"
         + ("" if (directory / MANIFEST).is_file() else " (no manifest.json: standard file names)"))
    refused: list[str] = []
    for s in statuses:
        if s.missing:
            info(f"  {s.role:<15} MISSING  {', '.join(s.missing)}")
            continue
        state = "BAD" if s.bad else "ok"
        if s.ok and s.role.startswith("classifier_"):
            from virnucpro.classifier import load_classifier

            try:
                width = load_classifier(s.path).input_dim
                s.notes.append(f"restricted loader: MLPClassifier, input width {width}")
            except ModelsError as exc:
                state = "REFUSED"
                refused.append(f"{s.role}: {exc.message}")
        tiny = " [tiny test model]" if s.tiny else ""
        info(f"  {s.role:<15} {state:<8} {s.path}{tiny}")
        for rel in s.files:
            mark = ("MISMATCH" if any(rel == b[0] for b in s.bad)
                    else "unrecorded" if rel in s.unverified else "verified")
            info(f"      {rel}  sha256 {s.hashes[rel]}  ({mark})")
        for rel, want, _got in s.bad:
            info(f"      {rel}: manifest records {want}")
        for note in s.notes:
            info(f"      note: {note}")
    if any(s.tiny for s in statuses if not s.missing):
        warn("these are tiny random models for tests: their predictions mean nothing")
    problem = _problems(directory, statuses)
    if problem is not None:
        raise problem
    if refused:
        raise ModelsError("classifier refused by the restricted loader: " + "; ".join(refused),
                          hint=_download_command(directory))
    info("all models present and verified")


# --------------------------------------------------------------------------------------------
# Tiny models
# --------------------------------------------------------------------------------------------

TINY_SEED = 20240917
TINY_ESM = {"layers": 2, "embed_dim": 32, "heads": 4}
TINY_DNABERT = {"hidden_size": 48, "num_attention_heads": 12, "num_hidden_layers": 2,
                "intermediate_size": 96, "vocab_size": 64}
TINY_FILES = {
    "esm2": ["esm2_tiny.pt", "esm2_tiny-contact-regression.pt"],
    "dnabert_s": ["DNABERT-S-tiny/config.json", "DNABERT-S-tiny/model.safetensors",
                  "DNABERT-S-tiny/tokenizer.json", "DNABERT-S-tiny/tokenizer_config.json",
                  "DNABERT-S-tiny/special_tokens_map.json"],
    "classifier_300": ["300_model_tiny.pth"],
    "classifier_500": ["500_model_tiny.pth"],
}
DNABERT_SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")


def _esm_checkpoint_key(key: str) -> str:
    """fair-esm state_dict name -> the name in the published fairseq checkpoint."""
    if key.startswith("lm_head."):
        return "encoder." + key
    return "encoder.sentence_encoder." + key


def _tiny_esm(directory: Path, generator) -> None:
    import torch
    from esm.data import Alphabet
    from esm.model.esm2 import ESM2

    model = ESM2(num_layers=TINY_ESM["layers"], embed_dim=TINY_ESM["embed_dim"],
                 attention_heads=TINY_ESM["heads"], alphabet=Alphabet.from_architecture("ESM-1b"),
                 token_dropout=True)
    weights, regression = {}, {}
    embed = None
    for key, value in model.state_dict().items():
        if key.endswith("rot_emb.inv_freq"):
            tensor = value.clone()  # the real checkpoint stores the standard frequencies
        elif key == "lm_head.weight":
            continue  # tied to embed_tokens.weight, filled below
        else:
            tensor = _random_like(key, tuple(value.shape), generator)
        if key == "embed_tokens.weight":
            embed = tensor
        if key.startswith("contact_head."):
            regression[key] = tensor
        else:
            weights[_esm_checkpoint_key(key)] = tensor
    weights[_esm_checkpoint_key("lm_head.weight")] = embed.clone()
    d, heads = TINY_ESM["embed_dim"], TINY_ESM["heads"]
    cfg = argparse.Namespace(
        _name="ESM2", arch="esm2", encoder_layers=TINY_ESM["layers"], encoder_embed_dim=d,
        encoder_ffn_embed_dim=4 * d, encoder_attention_heads=heads, token_dropout=True,
        dropout=0.0, attention_dropout=0.0, max_positions=1024, note="virnucpro tiny random model")
    torch.save({"model": weights, "cfg": {"model": cfg}}, str(directory / TINY_FILES["esm2"][0]))
    torch.save({"model": regression}, str(directory / TINY_FILES["esm2"][1]))


def _random_like(key: str, shape: tuple[int, ...], generator):
    """Seeded random weights spread enough that different inputs give visibly different outputs."""
    import torch

    name = key.rsplit(".", 1)[-1]
    is_norm = "norm" in key.lower() or "LayerNorm" in key
    if name == "weight" and is_norm:
        return 1.0 + 0.1 * torch.randn(shape, generator=generator)
    if name == "bias" or len(shape) == 1:
        return 0.1 * torch.randn(shape, generator=generator)
    fan_in = shape[-1] if len(shape) > 1 else 1
    std = 1.0 if "embed" in key.lower() else fan_in ** -0.5
    return std * torch.randn(shape, generator=generator)


def _tiny_dnabert_config() -> dict:
    """The real DNABERT-S config.json keys, with the sizes shrunk."""
    return {
        "_name_or_path": "zhihan1996/DNABERT-2-117M",
        "alibi_starting_size": 512,
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_bert.BertConfig",
            "AutoModel": "bert_layers.BertModel",
            "AutoModelForMaskedLM": "bert_layers.BertForMaskedLM",
            "AutoModelForSequenceClassification": "bert_layers.BertForSequenceClassification",
        },
        "classifier_dropout": None,
        "gradient_checkpointing": False,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": TINY_DNABERT["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": TINY_DNABERT["intermediate_size"],
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": TINY_DNABERT["num_attention_heads"],
        "num_hidden_layers": TINY_DNABERT["num_hidden_layers"],
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "transformers_version": "4.28.0",
        "type_vocab_size": 2,
        "use_cache": True,
        "vocab_size": TINY_DNABERT["vocab_size"],
    }


def dnabert_key_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of a DNABERT-S `BertModel` state_dict for this config."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (v, h),
        "embeddings.token_type_embeddings.weight": (config["type_vocab_size"], h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }
    for n in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        shapes.update({
            p + "attention.self.Wqkv.weight": (3 * h, h),
            p + "attention.self.Wqkv.bias": (3 * h,),
            p + "attention.output.dense.weight": (h, h),
            p + "attention.output.dense.bias": (h,),
            p + "attention.output.LayerNorm.weight": (h,),
            p + "attention.output.LayerNorm.bias": (h,),
            p + "mlp.gated_layers.weight": (2 * i, h),
            p + "mlp.wo.weight": (h, i),
            p + "mlp.wo.bias": (h,),
            p + "mlp.layernorm.weight": (h,),
            p + "mlp.layernorm.bias": (h,),
        })
    shapes["pooler.dense.weight"] = (h, h)
    shapes["pooler.dense.bias"] = (h,)
    return shapes


def _tiny_tokenizer(vocab_size: int, seed: int):
    import random

    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    rng = random.Random(seed)
    corpus = ["".join(rng.choice("ACGT") if rng.random() > 0.02 else "N"
                      for _ in range(rng.randint(60, 400))) for _ in range(300)]
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(DNABERT_SPECIAL_TOKENS),
                                  show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    ids = {tok: tokenizer.token_to_id(tok) for tok in DNABERT_SPECIAL_TOKENS}
    assert list(ids.values()) == [0, 1, 2, 3, 4], ids
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    return tokenizer


def _tiny_dnabert(folder: Path, generator) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = _tiny_dnabert_config()
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tensors = {key: _random_like(key, shape, generator).contiguous()
               for key, shape in dnabert_key_shapes(config).items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(folder / "model.safetensors", _file_mode())
    tokenizer = _tiny_tokenizer(config["vocab_size"], TINY_SEED)
    tokenizer.save(str(folder / "tokenizer.json"))
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
               "cls_token": "[CLS]", "mask_token": "[MASK]"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**special, "model_max_length": 1000000000000000019884624838656,
         "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": True},
        indent=2) + "\n")


def _tiny_classifier(path: Path, input_dim: int, generator) -> None:
    import torch

    from virnucpro.classifier import MLPClassifier, save_original_way

    model = MLPClassifier(input_dim, 512, 2)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(1000)
            elif name == "bn1.weight":
                tensor.copy_(1.0 + 0.1 * torch.randn(tensor.shape, generator=generator))
            elif name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif tensor.is_floating_point():
                tensor.copy_(_random_like(f"mlp.{name}", tuple(tensor.shape), generator))
    save_original_way(model.eval(), path)


def _refuse_other_models(directory: Path) -> None:
    """Tiny models go only into a new or empty folder, or one of tiny models: never over real models
    or other files, whose roles the manifest would silently repoint (exit 3)."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise BadInputError(f"{directory} is a file, not a models folder", "give a new or empty folder")
    if not any(directory.iterdir()):
        return
    manifest = read_manifest(directory)
    roles = (manifest or {}).get("models") or {}
    if roles and all(isinstance(entry, dict) and entry.get("tiny") for entry in roles.values()):
        return
    kept = [role for role, entry in roles.items() if not (isinstance(entry, dict) and entry.get("tiny"))]
    what = f"models that are not tiny ({', '.join(kept)})" if kept else "files that are not tiny models"
    raise BadInputError(f"{directory} holds {what}: `models tiny` would repoint them to random test models",
                        "give a new or empty folder for the tiny models")


def make_tiny(directory: Path) -> None:
    """`virnucpro models tiny DIR`: seeded random models in the real on-disk formats and key names.

    ESM-2 (2 layers, width 32) as a fair-esm `.pt` plus its contact-regression file, DNABERT-S
    (2 layers, width 48, 12 heads) as a Hugging Face folder with a BPE tokenizer trained on random
    DNA, and both classifiers pickled the original way with input width 48 + 32 = 80.
    The manifest marks every role `"tiny": true`. Deterministic: same bytes on every run.
    """
    import torch

    directory = Path(directory).expanduser().absolute()
    _refuse_other_models(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelsError(f"cannot create models directory {directory}: {exc}") from None
    generator = torch.Generator().manual_seed(TINY_SEED)
    _tiny_esm(directory, generator)
    _tiny_dnabert(directory / "DNABERT-S-tiny", generator)
    width = TINY_DNABERT["hidden_size"] + TINY_ESM["embed_dim"]
    _tiny_classifier(directory / TINY_FILES["classifier_300"][0], width, generator)
    _tiny_classifier(directory / TINY_FILES["classifier_500"][0], width, generator)

    manifest = read_manifest(directory) or {"models": {}}
    cache = _HashCache(directory)
    names = {"esm2": "esm2_tiny", "dnabert_s": "DNABERT-S-tiny",
             "classifier_300": "300_model_tiny.pth", "classifier_500": "500_model_tiny.pth"}
    for role in ROLES:
        files = TINY_FILES[role]
        manifest["models"][role] = {
            "files": files,
            "sha256": {rel: cache.sha256(directory, rel) for rel in files},
            "source": f"virnucpro models tiny (seed {TINY_SEED})",
            "revision": __version__,
            "tiny": True,
            "name": names[role],
        }
    write_manifest(directory, manifest)
    info(f"tiny random models written to {directory} (for tests only; predictions mean nothing)")
