"""DNABERT-S as a plain PyTorch module (no remote code), loading the Hugging Face folder.

Architecture (SPEC §3): embeddings ``LayerNorm(word + token_type[0])`` without position
embeddings; per layer a fused QKV projection, attention with a symmetric ALiBi bias, output
projection and post-LayerNorm, then a GeGLU MLP (``gelu(h[:, :I]) * h[:, I:]``, exact GELU) and a
second post-LayerNorm. The embedding of a sequence is the mean of the last hidden state over all
its tokens including [CLS] and [SEP] (what the original VirNucPro computes, one sequence at a
time). The pooler and the MLM head (``cls.*``) are never computed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from virnucpro.encoders import (FAST_COMPILED, REFERENCE_COMPILED, compiled, describe_load_error, describe_settled,
                                forward_on_path, key_mismatch, load_checked, random_probe, settle_path)
from virnucpro.encoders.batching import (TokenStream, check_token_ids, for_attention, pack, packed_attention,
                                         pooled_mean)
from virnucpro.console import info
from virnucpro.errors import ModelsError, VirnucproError, open_files_errno, open_files_limit_in_text
from virnucpro.models import store


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi head slopes; for a non-power-of-two count, the power-of-two series below it is
    completed by every other slope of the series twice as long."""

    def series(n: int) -> list[float]:
        first = 2.0 ** (-8.0 / n)
        return [first ** (k + 1) for k in range(n)]

    if n_heads & (n_heads - 1) == 0:
        return series(n_heads)
    lower = 2 ** int(math.floor(math.log2(n_heads)))
    return series(lower) + series(2 * lower)[0::2][: n_heads - lower]


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float):
        super().__init__()
        self.heads = heads
        self.intermediate = intermediate
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.gated = nn.Linear(hidden, 2 * intermediate, bias=False)
        self.mlp_out = nn.Linear(intermediate, hidden)
        self.mlp_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, fused: bool = False) -> torch.Tensor:
        """Reference path: x (R, T, hidden) rows, bias the (R, H, T, T) ALiBi + -inf mask. With
        `fused` the work after attention runs compiled on the rows' tokens (the fast path's graph)."""
        rows, width, hidden = x.shape
        qkv = self.qkv(x).view(rows, width, 3, self.heads, hidden // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        att = att.transpose(1, 2).reshape(rows, width, hidden)
        if fused:
            after = compiled.fused(_Layer.after_attention)
            tokens = att.reshape(-1, self.heads, hidden // self.heads)  # as the fast path hands it over
            return after(self, x.reshape(-1, hidden), tokens).view(rows, width, hidden)
        return self._mlp(self.attn_norm(x + self.attn_out(att)))

    def forward_packed(self, x: torch.Tensor, stream: TokenStream, alibi, fused: bool = False) -> torch.Tensor:
        """Fast path: x (N_tok, hidden) is the batch's token stream; ALiBi as a score_mod, no mask.
        With `fused` the work after attention runs compiled (encoders.compiled): same math."""
        tokens, hidden = x.shape
        q, k, v = self.qkv(x).view(tokens, 3, self.heads, hidden // self.heads).unbind(1)
        att = packed_attention(q, k, v, stream, score_mod=alibi)
        after = compiled.fused(_Layer.after_attention) if fused else _Layer.after_attention
        return after(self, x, att)

    def after_attention(self, x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """Fast path after attention: output projection, residual, post-norm, then the MLP block."""
        return self._mlp(self.attn_norm(x + self.attn_out(att.reshape(x.shape))))

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        h = self.gated(x)
        h = F.gelu(h[..., : self.intermediate]) * h[..., self.intermediate:]
        return self.mlp_norm(x + self.mlp_out(h))


class DnabertSModule(nn.Module):
    """The encoder part of DNABERT-S (embeddings + layers), nothing else."""

    def __init__(self, vocab: int, hidden: int, layers: int, heads: int, intermediate: int,
                 eps: float, type_vocab: int = 2):
        super().__init__()
        self.heads = heads
        self.word = nn.Embedding(vocab, hidden)
        self.token_type = nn.Embedding(type_vocab, hidden)
        self.emb_norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(_Layer(hidden, heads, intermediate, eps) for _ in range(layers))
        self.slopes = alibi_slopes(heads)

    def alibi(self, pos: torch.Tensor, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """(R, H, T, T) additive bias: -slope_h * |i - j| within a sequence, -inf elsewhere."""
        dist = (pos[:, :, None] - pos[:, None, :]).abs().to(torch.float32)
        slopes = torch.tensor(self.slopes, dtype=torch.float32, device=pos.device)
        bias = dist.unsqueeze(1) * (-slopes).view(1, -1, 1, 1)
        if mask is not None:
            bias = bias.masked_fill(~mask, float("-inf"))
        return bias.to(dtype)

    def forward(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None,
                fused: bool = False) -> torch.Tensor:
        x = self.emb_norm(self.word(ids) + self.token_type.weight[0])
        bias = self.alibi(pos, mask, x.dtype)
        for layer in self.layers:
            x = layer(x, bias, fused)
        return x

    def alibi_score_mod(self, device: torch.device):
        """Fast path's ALiBi: score - slope_h * |q - k| in fp32. In the stream each sequence is
        contiguous and other sequences are masked out, so stream distance = position distance."""
        slopes = torch.tensor(self.slopes, dtype=torch.float32, device=device)

        def alibi(score, b, h, q_idx, kv_idx):
            return score.to(torch.float32) - slopes[h] * (q_idx - kv_idx).abs()

        return alibi

    def forward_packed(self, ids: torch.Tensor, stream: TokenStream, fused: bool = False) -> torch.Tensor:
        """Fast path: the same math on a (N_tok,) token stream -> (N_tok, hidden); the block
        mask is built once here and shared by every layer."""
        x = self.emb_norm(self.word(ids) + self.token_type.weight[0])
        alibi = self.alibi_score_mod(x.device)
        stream = for_attention(stream, x, alibi)
        for layer in self.layers:
            x = layer.forward_packed(x, stream, alibi, fused)
        return x


# checkpoint key (after an optional "bert." prefix) -> our parameter name
_EMB_KEYS = {
    "embeddings.word_embeddings.weight": "word.weight",
    "embeddings.token_type_embeddings.weight": "token_type.weight",
    "embeddings.LayerNorm.weight": "emb_norm.weight",
    "embeddings.LayerNorm.bias": "emb_norm.bias",
}
_LAYER_KEYS = {
    "attention.self.Wqkv.weight": "qkv.weight",
    "attention.self.Wqkv.bias": "qkv.bias",
    "attention.output.dense.weight": "attn_out.weight",
    "attention.output.dense.bias": "attn_out.bias",
    "attention.output.LayerNorm.weight": "attn_norm.weight",
    "attention.output.LayerNorm.bias": "attn_norm.bias",
    "mlp.gated_layers.weight": "gated.weight",
    "mlp.wo.weight": "mlp_out.weight",
    "mlp.wo.bias": "mlp_out.bias",
    "mlp.layernorm.weight": "mlp_norm.weight",
    "mlp.layernorm.bias": "mlp_norm.bias",
}
# present in real checkpoints, never computed
_UNUSED_PREFIXES = ("cls.", "pooler.")
_UNUSED_KEYS = {"embeddings.position_ids", "embeddings.token_type_ids"}


# config.json keys the module is built from -> default (None: required); the bounds lie far above any
# BERT-style model and keep a nonsense value from building millions of layers before the shape check
_CONFIG_KEYS = {"vocab_size": None, "hidden_size": None, "num_hidden_layers": None, "num_attention_heads": None,
                "intermediate_size": None, "type_vocab_size": 2, "layer_norm_eps": 1e-12}
_MAX_SIZE = 1 << 20
_MAX_LAYERS = 1024


def _refetch(folder: Path) -> str:
    """How to put a DNABERT-S folder right: fetched again into the models folder that holds it."""
    return store.refetch_hint(folder.parent, "dnabert_s")


def _config(folder: Path) -> dict:
    """config.json's sizes, each checked for type and range, so that a damaged folder is exit 4
    naming the key and its value rather than a crash while building the module."""
    path = folder / "config.json"
    if not path.is_file():
        what = "is not a regular file" if os.path.lexists(path) else "is missing"
        raise ModelsError(f"DNABERT-S: {path} {what}", hint=_refetch(folder))
    try:
        with store.verified_name(path):
            cfg = json.loads(store.read_small_file(path, store.MANIFEST_MAX_BYTES))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: not JSON, not a small plain file
        _raise_if_at_the_limit(exc, path)
        why = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise ModelsError(f"DNABERT-S: {path} is not readable JSON ({why})", hint=_refetch(folder)) from None
    if not isinstance(cfg, dict):
        raise ModelsError(f"DNABERT-S: {path} holds a JSON {type(cfg).__name__}, not an object", hint=_refetch(folder))
    sizes = {key: _config_value(path, cfg, key, default) for key, default in _CONFIG_KEYS.items()}
    if sizes["hidden_size"] % sizes["num_attention_heads"]:
        raise ModelsError(f"DNABERT-S: {path}: hidden_size {sizes['hidden_size']} is not a multiple of "
                          f"num_attention_heads {sizes['num_attention_heads']}", hint=_refetch(folder))
    return sizes


def configured_width(folder: Path) -> int:
    """The vector width (hidden_size) config.json gives, checked as loading checks it and against the
    token embeddings' shape in the weights file; no weights read (a width the weights do not have
    would give an empty shard that predict then blames on the classifier)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelsError(f"DNABERT-S: model folder {folder} is missing", hint=_refetch(folder))
    cfg = _config(folder)
    weights, shape = _word_embedding_shape(folder)
    expected = (cfg["vocab_size"], cfg["hidden_size"])
    if shape != expected:
        what = f"lacks {WORD_EMBEDDINGS}" if shape is None else f"has {WORD_EMBEDDINGS} of shape {shape}"
        raise ModelsError(f"DNABERT-S: {weights} {what}, config.json implies {expected}", hint=_refetch(folder))
    return cfg["hidden_size"]


WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"


def _word_embedding_shape(folder: Path) -> tuple[Path, tuple[int, ...] | None]:
    """The weights file and the shape of its token embeddings (None: absent), from the safetensors
    header or a memory-mapped pytorch_model.bin: no weight is read."""
    st = folder / "model.safetensors"
    if not st.is_file():
        path, state = _weights(folder)
        key = next((k for k in state if _bare(k) == WORD_EMBEDDINGS), None)
        if key is not None and not isinstance(state[key], torch.Tensor):
            raise ModelsError(f"DNABERT-S: {path}: {key} holds a {type(state[key]).__name__}, not a tensor",
                              hint=_refetch(folder))
        return path, None if key is None else tuple(state[key].shape)
    try:
        from safetensors import safe_open
        with store.verified_name(st, utf8_only=True) as name, safe_open(name, framework="pt") as weights:
            key = next((k for k in weights.keys() if _bare(k) == WORD_EMBEDDINGS), None)
            return st, None if key is None else tuple(weights.get_slice(key).get_shape())
    except VirnucproError:
        raise  # ours, a stop signal's included: no fault of the file
    except Exception as exc:  # corrupt, truncated or not weights at all
        _raise_if_at_the_limit(exc, st)
        raise ModelsError(f"DNABERT-S: cannot read weights {st}: {describe_load_error(exc)}",
                          hint=_refetch(folder)) from exc


def _bare(key: str) -> str:
    """A checkpoint key without the optional "bert." prefix."""
    return key[len("bert."):] if key.startswith("bert.") else key


def _config_value(path: Path, cfg: dict, key: str, default: int | float | None) -> int | float:
    """One config.json value: a positive integer within bounds, or for layer_norm_eps a positive number."""
    if key not in cfg:
        if default is None:
            raise ModelsError(f"DNABERT-S: {path} lacks the key {key}", hint=_refetch(path.parent))
        return default
    value = cfg[key]
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key == "layer_norm_eps":
        if numeric and math.isfinite(value) and 0 < value < 1:
            return float(value)
        expected = "a positive number below 1"
    else:
        limit = _MAX_LAYERS if key == "num_hidden_layers" else _MAX_SIZE
        if numeric and isinstance(value, int) and 1 <= value <= limit:
            return value
        expected = f"an integer from 1 to {limit}"
    shown = json.dumps(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise ModelsError(f"DNABERT-S: {path}: {key} is {shown}, expected {expected}", hint=_refetch(path.parent))


def _weights(folder: Path) -> tuple[Path, dict]:
    """The weights file of the folder and its state dict: model.safetensors, else pytorch_model.bin (weights only)."""
    st, binfile = folder / "model.safetensors", folder / "pytorch_model.bin"
    try:
        if st.is_file():
            from safetensors.torch import load_file
            with store.verified_name(st, utf8_only=True) as name:
                return st, load_file(name, device="cpu")
        if binfile.is_file():
            with store.verified_name(binfile, utf8_only=True) as name:
                try:
                    state = torch.load(name, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
                    state = torch.load(name, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ValueError(f"holds a {type(state).__name__}, not a state dict")
            return binfile, state
    except VirnucproError:
        raise  # ours, a stop signal's included: no fault of the file
    except Exception as exc:  # corrupt, truncated or not weights at all
        path = st if st.is_file() else binfile
        _raise_if_at_the_limit(exc, path)
        raise ModelsError(f"DNABERT-S: cannot read weights {path}: {describe_load_error(exc)}",
                          hint=_refetch(folder)) from exc
    raise ModelsError(f"DNABERT-S: neither model.safetensors nor pytorch_model.bin in {folder}",
                      hint=_refetch(folder))


def _raise_if_at_the_limit(exc: BaseException, path: Path) -> None:
    """Raise EMFILE (or ENFILE) naming `path` when the limit on open files, not the file, made reading
    it fail: no fault of the models, so the CLI names the limit and its fix (`ulimit -n`, exit 10)
    instead of sending the user to fetch sound models again. Libraries say it their own way:
    tokenizers as "Too many open files (os error 24)", torch's file mapping as a RuntimeError ending
    "Too many open files (24)", and safetensors reports any failed open as "No such file or
    directory", so a file that a fresh open refuses with the limit counts too."""
    code = open_files_errno(exc)
    if code is None:
        code = open_files_limit_in_text(str(exc))
    if code is None:
        code = _limit_refusing(path)
    if code is not None:
        raise OSError(code, os.strerror(code), str(path)) from exc


def _limit_refusing(path: Path) -> int | None:
    """EMFILE or ENFILE when opening `path` now fails with it; None when it opens or fails otherwise."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
    except OSError as exc:
        return open_files_errno(exc)
    return None


def _map_state(path: Path, state: dict, n_layers: int) -> dict[str, torch.Tensor]:
    wanted = dict(_EMB_KEYS)
    for i in range(n_layers):
        for key, ours in _LAYER_KEYS.items():
            wanted[f"encoder.layer.{i}.{key}"] = f"layers.{i}.{ours}"
    mapped: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, tensor in state.items():
        bare = _bare(key)
        if bare in wanted:
            mapped[wanted[bare]] = tensor
        elif not (key.startswith(_UNUSED_PREFIXES) or bare.startswith(_UNUSED_PREFIXES)
                  or bare in _UNUSED_KEYS):
            unexpected.append(key)
    missing = [k for k, ours in wanted.items() if ours not in mapped]
    problems = key_mismatch(missing, unexpected)
    if problems:
        raise ModelsError(f"DNABERT-S: {path} does not match its config.json: {problems}")
    return mapped


def _tokenizer(folder: Path, vocab: int):
    """The folder's tokenizer.json, set as the original calls it (no truncation, no padding) and checked against `vocab`."""
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ModelsError(f"DNABERT-S: {path} is missing", hint=_refetch(folder))
    try:
        with store.verified_name(path, utf8_only=True) as name:
            tok = Tokenizer.from_file(name)
    except VirnucproError:
        raise
    except Exception as exc:
        _raise_if_at_the_limit(exc, path)
        raise ModelsError(f"DNABERT-S: {path} is not a valid tokenizer ({exc})") from exc
    # the original calls tokenizer(seq) without truncation or padding
    tok.no_truncation()
    tok.no_padding()
    cls_id, sep_id, pad_id = (tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    if cls_id is None or sep_id is None:
        raise ModelsError(f"DNABERT-S: {path} lacks the [CLS]/[SEP] tokens")
    probe = tok.encode("ACGT").ids
    if not probe or probe[0] != cls_id or probe[-1] != sep_id:
        raise ModelsError(f"DNABERT-S: {path} does not add [CLS] ... [SEP] around a sequence")
    if tok.get_vocab_size(with_added_tokens=True) > vocab:
        raise ModelsError(f"DNABERT-S: {path} has {tok.get_vocab_size(with_added_tokens=True)} tokens "
                          f"but the model's vocab_size is {vocab}")
    return tok, (pad_id if pad_id is not None else 0)


class DnabertSEncoder:
    """Loads a DNABERT-S folder and turns nucleotide sequences into pooled vectors."""

    name = "dnabert_s"

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype = torch.float32,
                 path: str = "auto", compile: bool | None = None):
        """Load the folder, then settle the attention path ('auto' | 'reference' | 'fast', compiled
        or not: see virnucpro.encoders.settle_path) in `self.path`, and what compiling took in
        `self.compile_seconds`."""
        self._load(Path(folder), device, dtype)
        probe = self.tokenize(random_probe(lambda rng, n: "".join(rng.choice(list("ACGT"), 5 * n)), self.device))
        self.path, self.compile_seconds, agreement = settle_path(
            "DNABERT-S", path, self.device, dtype, lambda attention: self._run(self.collate(probe), attention), compile)
        if self.path != "reference":
            info(describe_settled("DNABERT-S", self.path, self.compile_seconds, agreement))

    def _load(self, folder: Path, device: torch.device, dtype: torch.dtype) -> None:
        """Read config, weights and tokenizer, check them and place the module on the device."""
        if not folder.is_dir():
            raise ModelsError(f"DNABERT-S: model folder {folder} is missing",
                              hint=_refetch(folder))
        cfg = _config(folder)
        weights, state = _weights(folder)
        self.width = cfg["hidden_size"]
        self.vocab_size = cfg["vocab_size"]
        self.device = torch.device(device)
        self.dtype = dtype
        self.tokenizer, self.pad_id = _tokenizer(folder, self.vocab_size)
        with torch.device("meta"):
            module = DnabertSModule(self.vocab_size, self.width, cfg["num_hidden_layers"],
                                    cfg["num_attention_heads"], cfg["intermediate_size"],
                                    cfg["layer_norm_eps"], cfg["type_vocab_size"])
        mapped = _map_state(weights, state, cfg["num_hidden_layers"])
        load_checked(module, mapped, "DNABERT-S", weights, "config.json implies")
        self.module = module.to(device=self.device, dtype=dtype).eval().requires_grad_(False)

    def tokenize(self, sequences: list[str]) -> list[np.ndarray]:
        """Token ids (int64) of each sequence, with [CLS] ... [SEP], as the HF tokenizer gives."""
        return [np.asarray(e.ids, dtype=np.int64)
                for e in self.tokenizer.encode_batch(list(sequences), add_special_tokens=True)]

    def collate(self, tokens: Sequence[np.ndarray], packed: bool = True):
        """Host-side batch layout (thread-safe, no GPU work): what `forward` consumes."""
        check_token_ids(tokens, self.vocab_size, "DNABERT-S")
        batch, _ = pack(tokens, self.pad_id, self.device, lambda n: (0, n), packed=packed,
                        multiple_of=8 if self.device.type == "cuda" else 1)
        return batch

    def forward(self, batch) -> torch.Tensor:
        """Pooled vectors (N, width) float32, left on the model's device (the caller copies them
        to the host when it needs them, without blocking on a GPU); OOM propagates; a fast path
        that fails here falls back to a safer one (encoders.forward_on_path)."""
        return forward_on_path("DNABERT-S", self, batch)

    def _run(self, batch, path: str) -> torch.Tensor:
        """`forward` on the given path: reference rows + bias, or the fast token stream (each compiled or not)."""
        batch = batch.to(self.device)
        with torch.inference_mode():
            if path in ("fast", FAST_COMPILED):
                stream = batch.stream
                tokens = self.module.forward_packed(stream.flatten(batch.ids), stream, path == FAST_COMPILED)
                hidden = stream.unflatten(tokens, *batch.ids.shape)
            else:
                hidden = self.module(batch.ids, batch.pos, batch.attention_mask(), path == REFERENCE_COMPILED)
            return pooled_mean(hidden, batch)

    def embed(self, tokens: Sequence[np.ndarray], packed: bool = True) -> torch.Tensor:
        """Mean of the last hidden state over all tokens of each sequence -> (N, width) float32 CPU.

        All sequences go through one forward; with `packed` several short ones may share a row
        (block-diagonal attention), otherwise it is a padded batch. torch.cuda.OutOfMemoryError
        propagates to the caller, who retries with fewer sequences.
        """
        if len(tokens) == 0:
            return torch.empty((0, self.width), dtype=torch.float32)
        return self.forward(self.collate(tokens, packed)).cpu()
