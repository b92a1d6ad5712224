"""ESM-2 as a plain PyTorch module, loading fair-esm checkpoints of any size.

Same math as fair-esm's `esm.model.esm2.ESM2` up to the final layer norm: token embedding with
the token-dropout rescale (x 0.88 / (1 - fraction of <mask> tokens); x 0.88 without masks),
pre-LayerNorm layers with rotary self-attention (fp32 angles, cos and sin even when the weights
are fp16/bf16) and an exact-erf GELU MLP, then `emb_layer_norm_after`. The LM head and the
contact head are never computed. The embedding of a protein is the mean of the last layer over
residues 1..min(1024, L) (no BOS/EOS/padding), as the original VirNucPro computes it from
`repr_layers=[36]` on the whole, untruncated sequence.
"""

from __future__ import annotations

import argparse
import json
import numbers
import os
import re
import shutil
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn

from virnucpro.encoders import (FAST_COMPILED, compiled, describe_load_error, describe_settled, forward_on_path,
                                key_mismatch, load_checked, random_probe, settle_path)
from virnucpro.encoders.batching import (TokenStream, check_token_ids, for_attention, pack, packed_attention,
                                         pooled_mean, to_device)
from virnucpro.console import info, warn
from virnucpro.errors import shell_word, InterruptedByUser, ModelsError, VirnucproError, open_file_limit
from virnucpro.models import store
from virnucpro.outdir import folder_lock, is_regular

# fair-esm's "ESM-1b" alphabet (used by every ESM-2 model): specials, 27 standard tokens, one
# filler to a multiple of 8, then <mask>.
_STANDARD = "LAGVSERTIDPKQNFYMHWCXBUZO.-"
TOKENS = ["<cls>", "<pad>", "<eos>", "<unk>", *_STANDARD, "<null_1>", "<mask>"]
TOKEN_ID = {t: i for i, t in enumerate(TOKENS)}
CLS, PAD, EOS, MASK = (TOKEN_ID[t] for t in ("<cls>", "<pad>", "<eos>", "<mask>"))
_LOOKUP = np.full(256, -1, dtype=np.int64)
for _i, _t in enumerate(TOKENS):
    if len(_t) == 1:
        _LOOKUP[ord(_t)] = _i
_SPECIAL = re.compile(r"(<[^<>\s]+>)")

MAX_POOLED_RESIDUES = 1024  # the original's truncation_seq_length (pooling only)
_TOKEN_DROPOUT_TRAIN = 0.15 * 0.8


def encode_protein(seq: str) -> np.ndarray:
    """<cls> + residues + <eos>, as fair-esm's batch converter (no truncation) encodes them.

    Special tokens written in the text (e.g. ``<mask>``) become that token; whitespace is
    dropped; any other character unknown to the alphabet is an error (fair-esm raises KeyError).
    """
    if "<" in seq or any(c.isspace() for c in seq):
        parts: list[int] = []
        for k, piece in enumerate(_SPECIAL.split(seq)):
            if k % 2:  # a "<...>" token
                if piece not in TOKEN_ID:
                    raise ValueError(f"unknown ESM token {piece!r}")
                parts.append(TOKEN_ID[piece])
            elif piece.strip():
                parts.extend(encode_protein("".join(piece.split()))[1:-1].tolist())
        body = np.asarray(parts, dtype=np.int64)
    else:
        raw = np.frombuffer(seq.encode("latin-1", errors="replace"), dtype=np.uint8)
        body = _LOOKUP[raw]
        if (body < 0).any():
            bad = seq[int(np.flatnonzero(body < 0)[0])]
            raise ValueError(f"character {bad!r} is not in the ESM alphabet")
    out = np.empty(len(body) + 2, dtype=np.int64)
    out[0], out[-1] = CLS, EOS
    out[1:-1] = body
    return out


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding computed in fp32, returned in x's dtype."""
    x32 = x.float()
    return (x32 * cos + _rotate_half(x32) * sin).to(x.dtype)


class _Layer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_out = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        """Reference path: x (R, T, dim) rows, block-diagonal bool mask (None: one sequence per row)."""
        rows, width, dim = x.shape
        qkv = self.qkv(self.attn_norm(x)).view(rows, width, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        att = F.scaled_dot_product_attention(_rotary(q, cos, sin), _rotary(k, cos, sin), v, attn_mask=mask)
        return self._mlp(x + self.attn_out(att.transpose(1, 2).reshape(rows, width, dim)))

    def forward_packed(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       stream: TokenStream, fused: bool = False) -> torch.Tensor:
        """Fast path: x (N_tok, dim) is the batch's token stream; attention without a mask. With
        `fused` the work around attention runs compiled (encoders.compiled): same math."""
        before, after = _Layer.attention_inputs, _Layer.after_attention
        if fused:
            before, after = compiled.fused(before), compiled.fused(after)
        return after(self, x, packed_attention(*before(self, x, cos, sin), stream))

    def attention_inputs(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple:
        """Fast path up to attention: norm, q/k/v projection, fp32 rotary -> q, k, v (N_tok, H, d)."""
        tokens, dim = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(tokens, 3, self.heads, dim // self.heads).unbind(1)
        return _rotary(q, cos, sin), _rotary(k, cos, sin), v.contiguous()

    def after_attention(self, x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """Fast path after attention: output projection, residual, then the MLP block."""
        return self._mlp(x + self.attn_out(att.reshape(x.shape)))

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.mlp_norm(x))))


class Esm2Module(nn.Module):
    """ESM-2 trunk: embeddings, layers, final layer norm (no LM or contact head)."""

    def __init__(self, layers: int, dim: int, heads: int, vocab: int = len(TOKENS)):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(_Layer(dim, heads) for _ in range(layers))
        self.final_norm = nn.LayerNorm(dim)

    def rotary(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (R, 1, T, head_dim) for (R, T) positions, (N, 1, head_dim) for a
        stream's (N,) positions; always fp32."""
        inv_freq = 1.0 / (10000 ** (torch.arange(0, self.head_dim, 2, device=pos.device,
                                                  dtype=torch.float32) / self.head_dim))
        angles = pos.to(torch.float32).unsqueeze(-1) * inv_freq
        angles = torch.cat((angles, angles), dim=-1).unsqueeze(1)
        return angles.cos(), angles.sin()

    def forward(self, ids: torch.Tensor, pos: torch.Tensor, scale: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        x = self.embed(ids) * scale.unsqueeze(-1).to(self.embed.weight.dtype)
        cos, sin = self.rotary(pos)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.final_norm(x)

    def forward_packed(self, ids: torch.Tensor, pos: torch.Tensor, scale: torch.Tensor,
                       stream: TokenStream, fused: bool = False) -> torch.Tensor:
        """Fast path: the same math on a (N_tok,) token stream -> (N_tok, dim)."""
        x = self.embed(ids) * scale.unsqueeze(-1).to(self.embed.weight.dtype)
        cos, sin = self.rotary(pos)
        stream = for_attention(stream, x)
        for layer in self.layers:
            x = layer.forward_packed(x, cos, sin, stream, fused)
        return self.final_norm(x)


_LAYER_KEYS = {
    "self_attn_layer_norm.weight": "attn_norm.weight",
    "self_attn_layer_norm.bias": "attn_norm.bias",
    "self_attn.out_proj.weight": "attn_out.weight",
    "self_attn.out_proj.bias": "attn_out.bias",
    "final_layer_norm.weight": "mlp_norm.weight",
    "final_layer_norm.bias": "mlp_norm.bias",
    "fc1.weight": "fc1.weight",
    "fc1.bias": "fc1.bias",
    "fc2.weight": "fc2.weight",
    "fc2.bias": "fc2.bias",
}
_QKV = ("q_proj", "k_proj", "v_proj")
_UNUSED_PREFIXES = ("lm_head.", "contact_head.")


def _field(cfg, *names):
    for name in names:
        value = cfg.get(name) if isinstance(cfg, Mapping) else getattr(cfg, name, None)
        if value is not None:
            return value
    return None


def _read_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise ModelsError(f"ESM-2: checkpoint {path} is missing",
                          hint=store.refetch_hint(path.parent, "esm2"))
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), store.verified_name(path, utf8_only=True) as name:
            try:
                data = torch.load(name, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc) and "zip" not in str(exc):
                    raise
                data = torch.load(name, map_location="cpu", weights_only=True)
    except VirnucproError:
        raise  # ours, a stop signal's included: no fault of the file
    except Exception as exc:
        if open_file_limit(exc):
            raise  # no fault of the weights: the CLI names the limit
        raise ModelsError(f"ESM-2: cannot read checkpoint {path}: {describe_load_error(exc)}",
                          hint=store.refetch_hint(path.parent, "esm2")) from exc
    return data


def _architecture(path: Path, data: Mapping, state: Mapping) -> tuple[int, int, int, bool]:
    """(layers, width, heads, token dropout) from the checkpoint's cfg or args, bounded and checked against its weights."""
    cfg = None
    if isinstance(data.get("cfg"), Mapping) and data["cfg"].get("model") is not None:
        cfg = data["cfg"]["model"]
    elif data.get("args") is not None:
        cfg = data["args"]
    if cfg is None:
        raise ModelsError(f"ESM-2: {path} has neither cfg['model'] nor args")
    heads = _field(cfg, "encoder_attention_heads", "attention_heads")
    if heads is None:
        raise ModelsError(f"ESM-2: {path}: configuration lacks the number of attention heads")
    heads = _bounded(path, "attention heads", heads, MAX_SIZE)
    emb = state.get("embed_tokens.weight")
    if not isinstance(emb, torch.Tensor):
        what = "missing key" if emb is None else f"a {type(emb).__name__}, not a tensor, under"
        raise ModelsError(f"ESM-2: {path}: {what} embed_tokens.weight")
    found_layers = {int(m.group(1)) for k in state for m in [re.match(r"layers\.(\d+)\.", k)] if m}
    layers = _field(cfg, "encoder_layers", "layers")
    dim = _field(cfg, "encoder_embed_dim", "embed_dim")
    layers = _bounded(path, "layers", len(found_layers) if layers is None else layers, MAX_LAYERS)
    dim = _bounded(path, "embed dim", int(emb.shape[1]) if dim is None else dim, MAX_SIZE)
    token_dropout = _field(cfg, "token_dropout")
    token_dropout = True if token_dropout is None else bool(token_dropout)
    if tuple(emb.shape) != (len(TOKENS), dim):
        raise ModelsError(f"ESM-2: {path}: embed_tokens.weight has shape {tuple(emb.shape)}, "
                          f"expected ({len(TOKENS)}, {dim}) for the ESM-2 alphabet and embed dim")
    if dim % heads or (dim // heads) % 2:
        raise ModelsError(f"ESM-2: {path}: embed dim {dim} does not split into {heads} heads "
                          f"of even size")
    return layers, dim, heads, token_dropout


# bounds far above any ESM-2 (esm2_t48_15B: 48 layers, 5120 dims, 40 heads): a nonsense number in a
# checkpoint's settings is exit 4 naming it, not millions of layers looked up before the shape check
MAX_LAYERS = 1024
MAX_SIZE = 1 << 20


def _bounded(path: Path, what: str, value: object, limit: int) -> int:
    """A whole number of the checkpoint's settings from 1 to `limit`, or exit 4 naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= limit:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ModelsError(f"ESM-2: {path}: its settings give {what} {shown}, expected a whole number from 1 "
                          f"to {limit}", hint=store.refetch_hint(path.parent, "esm2"))
    return int(value)


def _map_state(path: Path, state: Mapping, layers: int) -> dict[str, torch.Tensor]:
    """fair-esm's state_dict keys mapped to our encoder's; a missing or left-over key is exit 4 naming the file."""
    mapped: dict[str, torch.Tensor] = {}
    consumed = set()

    def take(key: str) -> torch.Tensor | None:
        if key in state:
            consumed.add(key)
            return state[key]
        return None

    missing = []
    for ours, theirs in (("embed.weight", "embed_tokens.weight"),
                         ("final_norm.weight", "emb_layer_norm_after.weight"),
                         ("final_norm.bias", "emb_layer_norm_after.bias")):
        t = take(theirs)
        if t is None:
            missing.append(theirs)
        else:
            mapped[ours] = t
    for i in range(layers):
        pre = f"layers.{i}."
        for theirs, ours in _LAYER_KEYS.items():
            t = take(pre + theirs)
            if t is None:
                missing.append(pre + theirs)
            else:
                mapped[f"layers.{i}.{ours}"] = t
        for kind in ("weight", "bias"):
            parts = [take(f"{pre}self_attn.{p}.{kind}") for p in _QKV]
            if any(p is None for p in parts):
                missing.extend(f"{pre}self_attn.{p}.{kind}" for p, t in zip(_QKV, parts) if t is None)
            else:
                mapped[f"layers.{i}.qkv.{kind}"] = torch.cat(parts, dim=0)
        take(pre + "self_attn.rot_emb.inv_freq")  # recomputed in fp32
    unexpected = [k for k in state if k not in consumed and not k.startswith(_UNUSED_PREFIXES)]
    problems = key_mismatch(missing, unexpected)
    if problems:
        raise ModelsError(f"ESM-2: {path} does not match an ESM-2 with {layers} layers: {problems}")
    return mapped


def _strip_prefixes(state: Mapping) -> dict:
    # fair-esm's own upgrade: drop "encoder.sentence_encoder." then "encoder."
    pattern = re.compile(r"^(encoder\.sentence_encoder\.|encoder\.)")
    return {pattern.sub("", k): v for k, v in state.items()}


def configured_width(path: Path) -> int:
    """The vector width (embed dim) of a fair-esm checkpoint, from its settings checked against the shape
    of its token embeddings; the weights are memory-mapped by torch.load, not read."""
    data = _read_checkpoint(Path(path))
    return _architecture(Path(path), data, _fair_esm_state(Path(path), data))[1]


def _fair_esm_state(path: Path, data: Mapping) -> dict:
    """The state dict of a fair-esm checkpoint, its keys without fair-esm's prefixes."""
    if not isinstance(data, Mapping) or not isinstance(data.get("model"), Mapping):
        raise ModelsError(f"ESM-2: {path} is not a fair-esm checkpoint (no 'model' state dict)")
    return _strip_prefixes(data["model"])


def _checked_mapping(path: Path, data: Mapping) -> tuple[tuple[int, int, int, bool], dict[str, torch.Tensor]]:
    """((layers, dim, heads, token_dropout), our state dict) of a fair-esm checkpoint, checked."""
    state = _fair_esm_state(path, data)
    architecture = _architecture(path, data, state)
    return architecture, _map_state(path, state, architecture[0])


# --- the fp16 copy: what the encoder loads at fp16, derived once from the verified .pt ---------

FP16_FORMAT = "virnucpro-esm2-fp16/1"  # a copy of another format is not used (the .pt is loaded)
_ARCHITECTURE_KEYS = ("layers", "dim", "heads", "token_dropout")
_told: set[str] = set()  # messages already said in this process


def _say_once(message: str) -> None:
    """A note about the fp16 copy, said once per process."""
    if message not in _told:
        _told.add(message)
        info(message)


def write_fp16_copy(home: store.Esm2Home, source_sha256: str) -> Path:
    """Write the fp16 copy of `home`'s verified .pt (mapped, q/k/v concatenated: what the module
    loads) atomically, with the .pt's permissions, and record it in the manifest (a copy that cannot
    be recorded is removed: `_recorded`). The caller holds the models folder lock. A file at the
    copy's name that the manifest does not record as the copy is never replaced."""
    from safetensors.torch import save_file

    target = home.directory / home.copy_name
    _refuse_unrecorded(home, target)
    weights = home.directory / home.weights
    info(f"ESM-2: writing its fp16 copy {target} from {weights.name} ({weights.stat().st_size / 1e9:.1f} GB; "
         f"once per models folder: later fp16 loads read it directly)")
    started = time.monotonic()
    before = os.stat(weights)
    architecture, mapped = _checked_mapping(weights, _read_checkpoint(weights))
    tensors = {key: value.to(torch.float16).contiguous() for key, value in mapped.items()}
    _refuse_written_while_copied(weights, before)
    # one metadata key: safetensors writes several in a random order, and the copy should not vary
    metadata = {"virnucpro": json.dumps({"format": FP16_FORMAT, "source_sha256": source_sha256,
                                         **dict(zip(_ARCHITECTURE_KEYS, architecture))}, sort_keys=True)}
    # safetensors writes the file by name (its gigabytes as bytes, `write_atomically`, would be held
    # twice), and a file of its own beside it: both in a scratch folder a kill leaves to the next writer
    with store.scratch_folder(target) as scratch, store.replaced_like(target, [weights], within=scratch) as temporary:
        with store.utf8_name(temporary, writing=True) as name:
            save_file(tensors, name, metadata=metadata)
        digest, _blob, hashed = store.hashed_as_it_is(temporary)
        _refuse_unrecorded(home, target)
    _recorded(home, target, digest, hashed, source_sha256)
    info(f"ESM-2: fp16 copy written in {time.monotonic() - started:.1f} s")
    return target


def _refuse_written_while_copied(weights: Path, before: os.stat_result) -> None:
    """Exit 4 when the .pt was written or replaced while its bytes were read for the copy (they are
    read lazily, from a memory map, after the load that was verified returned): a copy of other
    bytes would be trusted for good. Its ctime too, which a writer cannot set back."""
    now = os.stat(weights)
    if (now.st_ino, now.st_size, now.st_mtime_ns, now.st_ctime_ns) != \
            (before.st_ino, before.st_size, before.st_mtime_ns, before.st_ctime_ns):
        raise ModelsError(f"{weights} changed while its fp16 copy was being made, so no copy was written",
                          hint="rerun once whatever writes to the models folder is done")


def _recorded(home: store.Esm2Home, target: Path, digest: str, hashed: os.stat_result, source_sha256: str) -> None:
    """Record the copy just written at `target` (`hashed`: the status of the file hashed) in the hash
    cache and the manifest. When the manifest cannot take it (another user's in a sticky folder,
    changed meanwhile) the copy is removed: it is ours, and left unrecorded it would be in the way of
    every later copy. Another file put at `target` meanwhile is neither recorded nor removed."""
    written = target.stat()
    if not store.same_version(hashed, written):
        raise ModelsError(f"the fp16 copy {target} changed while it was being written (another file was put "
                          f"in its place), so it was not recorded",
                          hint="wait for whatever writes it to finish, then rerun")
    cache = store.HashCache(home.directory)
    cache.record(home.copy_name, target, digest, written)
    cache.save()
    try:
        recorded = store.record_fp16_copy(home, digest, source_sha256)
    except BaseException:
        _remove_if_same(target, written)
        raise
    if not recorded:
        _remove_if_same(target, written)
        raise ModelsError(f"the models manifest changed while the fp16 copy {target} was written, so it "
                          f"could not be recorded; the copy was removed")


def _remove_if_same(path: Path, written: os.stat_result) -> None:
    """Remove `path` when it is still the file we wrote (`written`), never another one."""
    try:
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) == (written.st_dev, written.st_ino):
            path.unlink()
    except OSError:
        pass  # gone already, or not ours to remove


def _refuse_unrecorded(home: store.Esm2Home, target: Path) -> None:
    """Exit 4 when something is at the copy's name that the manifest does not record as the copy
    (the user's file, a link): virnucpro replaces only the copy it wrote, recorded, or unrecorded
    because its writer was killed between putting it in place and recording it."""
    recorded = (home.entry.get("fp16") or {}).get("file") == home.copy_name
    if os.path.lexists(target) and not recorded and not _written_by_virnucpro(target):
        raise ModelsError(f"{target} is in the way of ESM-2's fp16 copy: the models manifest does "
                          f"not record it as the copy virnucpro wrote, so it is left as it is",
                          hint="move it away; the next fp16 load or `virnucpro models download` "
                               "writes the copy")


def _written_by_virnucpro(path: Path) -> bool:
    """Whether `path` is a plain file that virnucpro wrote as an fp16 copy (its safetensors header
    carries our metadata); anything unreadable, or no safetensors file at all, is not."""
    from safetensors import safe_open

    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with store.utf8_name(path) as name, safe_open(name, framework="pt") as handle:
            metadata = json.loads((handle.metadata() or {}).get("virnucpro", "{}"))
    except InterruptedByUser:
        raise
    except Exception:  # noqa: BLE001 - safetensors raises its own error type for a file of another kind
        return False
    return isinstance(metadata, dict) and metadata.get("format") == FP16_FORMAT


def ensure_fp16_copy(home: store.Esm2Home) -> tuple[Path | None, str]:
    """(the trusted fp16 copy, "") — written now when absent or untrusted; (None, why) when the
    .pt does not match its manifest record. The caller holds the models folder lock, so what an
    earlier writer of the copy that was killed left is removed first."""
    store.remove_leftover_temporaries(home.directory / home.copy_name)
    cache = store.HashCache(home.directory)
    try:
        copy, problem = store.trusted_fp16_copy(home, cache)
        source = None if copy else store.verified_source(home, cache)
    finally:
        cache.save()
    if copy is not None:
        return copy, ""
    if source is None:
        return None, f"{home.directory / home.weights} does not match its sha256 in the manifest"
    refusal = _cannot_record(home) or _no_room_for_copy(home)
    if refusal is not None:
        return None, refusal
    if problem:
        warn(f"ESM-2: {problem}; writing it again")
    return write_fp16_copy(home, source), ""


COPY_SPACE_MARGIN = 256 * 2**20  # what writing the copy leaves free at the least


def _no_room_for_copy(home: store.Esm2Home) -> str | None:
    """Why the fp16 copy is not written now: its file system has less free space than the copy
    takes (at most the .pt's size) and a margin. Written anyway, it would fill the disk on every fp16
    load, leaving other writers there (the run's own outputs too) a full disk for a moment."""
    needed = (home.directory / home.weights).stat().st_size + COPY_SPACE_MARGIN
    free = shutil.disk_usage(home.directory).free
    if free >= needed:
        return None
    return (f"{home.directory} has {free / 1e9:.2f} GB free, and the copy needs about {needed / 1e9:.2f} GB "
            f"(the .pt's size and {COPY_SPACE_MARGIN >> 20} MB to spare)")


def _cannot_record(home: store.Esm2Home) -> str | None:
    """Why a copy written now could not be recorded or put in place (None: it can), told before
    its gigabytes are written: a manifest that is not a file (a folder of links into shared
    storage), or one (or an old copy) that another user owns in a sticky folder."""
    manifest = home.directory / store.MANIFEST
    if not is_regular(manifest):
        return f"{manifest} is not a file virnucpro may replace (a link?)"
    refusal = store.replace_refusal(manifest) or store.replace_refusal(home.directory / home.copy_name)
    if refusal is not None:
        return f"{refusal}; that owner can write the copy once with {_copy_writer(home.directory)}"
    return None


def _copy_writer(directory: Path) -> str:
    """What writes ESM-2's fp16 copy in the models folder `directory`, for a hint: `models download`
    for the published models; for tiny test models (which `models download` refuses, and which
    `models tiny` writes without a copy) an fp16 run on them, which writes the copy first."""
    if store.is_tiny_folder(directory):
        return (f"an fp16 run on these tiny test models, e.g. `virnucpro run FASTA --models "
                f"{shell_word(str(directory))} --precision fp16 --outdir OUT`")
    return f"`{store.download_command(directory, ['esm2'])}`"


def _fp16_copy_for(checkpoint: Path) -> Path | None:
    """The trusted fp16 copy of `checkpoint`, written first when the models folder is writable;
    None (said once, with how to create it) when the .pt has to be loaded instead."""
    home = store.esm2_home(checkpoint)
    if home is None:
        return None  # hand-staged without a manifest entry: nothing to record a copy in
    unreadable = store.unreadable_fp16_copy(home)
    if unreadable is not None:  # another user's: never replaced from here
        _say_once(f"ESM-2: loading {checkpoint} at fp16; the fp16 copy {unreadable} cannot be read by "
                  f"this user, so it is not used: its owner can make it readable like the .pt with "
                  f"`chmod --reference={shell_word(str(checkpoint))} {shell_word(str(unreadable))}`")
        return None
    cache = store.HashCache(home.directory)
    copy, problem = store.trusted_fp16_copy(home, cache)
    cache.save()
    if copy is not None:
        return copy
    if not home.writable():
        _say_once(f"ESM-2: loading {checkpoint} at fp16"
                  f"{' (' + problem + ')' if problem else ''}; the models folder is read-only, so "
                  f"no fp16 copy for a fast load can be written: create it once where the folder is "
                  f"writable with {_copy_writer(home.directory)}")
        return None
    return _write_under_lock(home)


def _write_under_lock(home: store.Esm2Home) -> Path | None:
    """`ensure_fp16_copy` holding the folder lock; None when another command holds it or the
    copy cannot be written (said once: the .pt is loaded instead)."""
    try:
        with folder_lock(home.directory, "models folder"):
            home = store.esm2_home(home.directory / home.weights) or home  # as it is under the lock
            copy, problem = ensure_fp16_copy(home)
    except InterruptedByUser:
        raise  # a stop is no failure to write the copy: the command stops now, not after loading the .pt
    except (VirnucproError, OSError, SafetensorError) as exc:
        problem = f"{exc.message}; {exc.hint}" if isinstance(exc, VirnucproError) and exc.hint else \
            exc.message if isinstance(exc, VirnucproError) else f"{type(exc).__name__}: {exc}"
        copy = None
    if copy is None:
        _say_once(f"ESM-2: loading {home.directory / home.weights} at fp16; no fp16 copy "
                  f"written ({problem})")
    return copy


def _read_fp16_copy(path: Path, device) -> tuple[tuple[int, int, int, bool], dict[str, torch.Tensor]]:
    """The architecture and the tensors of a verified fp16 copy, read straight onto `device`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with store.verified_name(path, utf8_only=True) as name, safe_open(name, framework="pt") as handle:
        metadata = json.loads((handle.metadata() or {}).get("virnucpro", "{}"))
    if metadata.get("format") != FP16_FORMAT:
        raise ModelsError(f"it is not a {FP16_FORMAT} copy")
    layers, dim, heads, token_dropout = (metadata[key] for key in _ARCHITECTURE_KEYS)
    architecture = (_bounded(path, "layers", layers, MAX_LAYERS), _bounded(path, "embed dim", dim, MAX_SIZE),
                    _bounded(path, "attention heads", heads, MAX_SIZE), bool(token_dropout))
    with store.verified_name(path, utf8_only=True) as name:
        return architecture, load_file(name, device=str(torch.device(device)))


def _read_trusted_copy(copy: Path, device) -> tuple | None:
    """`_read_fp16_copy`, or None (said once) when a verified copy still cannot be used (written
    by another virnucpro version): the .pt is loaded instead, never a failed run."""
    try:
        return _read_fp16_copy(copy, device)
    except (ModelsError, KeyError, TypeError, ValueError, OSError, RecursionError, AttributeError,
            SafetensorError) as exc:
        why = exc.message if isinstance(exc, ModelsError) else f"{type(exc).__name__}: {exc}"
        _say_once(f"ESM-2: fp16 copy {copy} not used ({why}); loading the .pt. Delete the copy: "
                  f"the next fp16 load writes it again")
        return None


class Esm2Encoder:
    """Loads a fair-esm ESM-2 checkpoint and turns proteins into pooled vectors."""

    name = "esm2"

    def __init__(self, checkpoint: Path, device: torch.device, dtype: torch.dtype = torch.float32,
                 path: str = "auto", compile: bool | None = None):
        """At fp16 the weights come from the verified fp16 copy when there is one (written on
        first use); otherwise, and at fp32/bf16, from the .pt. `path` and `compile`: see _build."""
        checkpoint = Path(checkpoint)
        copy = _fp16_copy_for(checkpoint) if dtype == torch.float16 else None
        weights = _read_trusted_copy(copy, device) if copy is not None else None
        self.loaded_from = checkpoint if weights is None else copy
        if weights is None:
            weights = _checked_mapping(checkpoint, _read_checkpoint(checkpoint))
        self._build(self.loaded_from, weights, device, dtype, path, compile)

    @classmethod
    def from_checkpoint_data(cls, data: Mapping, device: torch.device, dtype: torch.dtype = torch.float32,
                             label: str = "<memory>", path: str = "auto",
                             compile: bool | None = None) -> "Esm2Encoder":
        """Build from an already loaded fair-esm checkpoint dict (benchmarks, tests)."""
        self = cls.__new__(cls)
        self.loaded_from = Path(label)
        self._build(Path(label), _checked_mapping(Path(label), data), device, dtype, path, compile)
        return self

    def _build(self, checkpoint: Path, weights: tuple, device, dtype: torch.dtype, attention: str,
               compile: bool | None) -> None:
        """Place the checked weights on the device, then settle the attention path
        ('auto' | 'reference' | 'fast', compiled or not: see virnucpro.encoders.settle_path) in
        `self.path`, and what compiling took in `self.compile_seconds`."""
        self._load_module(checkpoint, *weights, device, dtype)
        probe = self.tokenize(random_probe(lambda rng, n: "".join(rng.choice(list(_STANDARD[:20]), n)), self.device))
        self.path, self.compile_seconds, agreement = settle_path(
            "ESM-2", attention, self.device, dtype, lambda path: self._run(self.collate(probe), path), compile)
        if self.path != "reference":
            info(describe_settled("ESM-2", self.path, self.compile_seconds, agreement))

    def _load_module(self, path: Path, architecture: tuple[int, int, int, bool], mapped: dict,
                     device, dtype: torch.dtype) -> None:
        """Check the weights against the architecture and place the module on the device."""
        layers, dim, heads, token_dropout = architecture
        with torch.device("meta"):
            module = Esm2Module(layers, dim, heads)
        load_checked(module, mapped, "ESM-2", path, "expected")
        self.device = torch.device(device)
        self.dtype = dtype
        self.width = dim
        self.num_layers = layers
        self.token_dropout = token_dropout
        self.module = module.to(device=self.device, dtype=dtype).eval().requires_grad_(False)

    def tokenize(self, sequences: list[str]) -> list[np.ndarray]:
        """<cls> + residues + <eos> ids (int64) per protein."""
        return [encode_protein(s) for s in sequences]

    def _token_scale(self, ids: np.ndarray) -> np.ndarray:
        scale = np.ones(len(ids), dtype=np.float32)
        if self.token_dropout:
            masked = ids == MASK
            scale[:] = (1.0 - _TOKEN_DROPOUT_TRAIN) / (1.0 - masked.sum() / len(ids))
            scale[masked] = 0.0
        return scale

    def collate(self, tokens: Sequence[np.ndarray], packed: bool = True) -> tuple:
        """Host-side batch layout (thread-safe, no GPU work): what `forward` consumes."""
        check_token_ids(tokens, len(TOKENS), "ESM-2")
        return pack(tokens, PAD, self.device, lambda n: (1, 1 + min(MAX_POOLED_RESIDUES, n - 2)),
                    packed=packed, multiple_of=8 if self.device.type == "cuda" else 1,
                    token_scale=self._token_scale)

    def forward(self, collated: tuple) -> torch.Tensor:
        """Pooled vectors (N, width) float32, left on the model's device (the caller copies them
        to the host when it needs them, without blocking on a GPU); OOM propagates; a fast path
        that fails here falls back to a safer one (encoders.forward_on_path)."""
        return forward_on_path("ESM-2", self, collated)

    def _run(self, collated: tuple, path: str) -> torch.Tensor:
        """`forward` on the given path: reference rows + mask, or the fast token stream (compiled or not)."""
        batch, scale = collated
        batch, scale = batch.to(self.device), to_device(scale, self.device)
        with torch.inference_mode():
            if path in ("fast", FAST_COMPILED):
                stream = batch.stream
                tokens = self.module.forward_packed(stream.flatten(batch.ids), stream.flatten(batch.pos),
                                                    stream.flatten(scale), stream, path == FAST_COMPILED)
                hidden = stream.unflatten(tokens, *batch.ids.shape)
            else:
                hidden = self.module(batch.ids, batch.pos, scale, batch.attention_mask())
            return pooled_mean(hidden, batch)

    def embed(self, tokens: Sequence[np.ndarray], packed: bool = True) -> torch.Tensor:
        """Mean of the last layer over residues 1..min(1024, L) -> (N, width) float32 on CPU.

        One forward for all; with `packed` several short proteins may share a row (block-diagonal
        attention, rotary positions restarting per protein), otherwise a padded batch.
        torch.cuda.OutOfMemoryError propagates to the caller.
        """
        if len(tokens) == 0:
            return torch.empty((0, self.width), dtype=torch.float32)
        return self.forward(self.collate(tokens, packed)).cpu()
