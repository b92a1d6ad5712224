"""Batching shared by both encoders: length-grouped batches, row packing, masks and pooling.

Two levels:

* `plan_batches` (caller side) splits a shard into batches of similar token length whose padded
  size (``n_sequences * longest``) stays within a token budget. Because ORFs of one chunk size are
  nearly equal in length this wastes almost nothing, and it bounds the memory of one forward.
* `pack` (encoder side) lays one such batch out as rows of at most ``capacity`` tokens (default:
  the longest sequence of the batch), placing several short sequences in one row. Every token
  carries the slot of its sequence within the row and its position within that sequence, so
  attention is block-diagonal (a token sees only its own sequence), positions restart per
  sequence, and padding never reaches a real token. A plain padded batch is the special case of
  one sequence per row.

Pooling is a batched matrix product with a per-row weight matrix (deterministic, fp32), so in
fp32 a sequence's vector does not depend on which sequences share its batch or row (within 1e-5);
in fp16/bf16 the products' rounding does, by about 1e-3/1e-2 (docs/encoders.md).

The fast attention path (`packed_attention`) reads the same batch as one stream of its real tokens
(`TokenStream`: no padding, sequences back to back, `cu_seqlens`/`max_seqlen` marking where each
starts) and attends within each sequence without any explicit mask: a varlen flash kernel on a GPU
in fp16/bf16, otherwise FlexAttention with a document block mask built once per batch (compiled
on a GPU, eager on the CPU, where it serves the tests and the load-time self-check).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

import numpy as np
import torch


def plan_batches(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Group item indices into batches of similar length within a token budget.

    `lengths` are token counts including special tokens. Items are taken longest first; a batch
    is closed when adding the next item would make ``len(batch) * longest`` exceed `token_budget`
    (the padded size, which bounds the packed size too). An item longer than the budget gets a
    batch of its own. Every index appears exactly once; within a batch indices run from long to
    short, and batches run from long to short (an out-of-memory batch shows up first).
    """
    if token_budget < 1:
        raise ValueError(f"token_budget must be positive, got {token_budget}")
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        length = int(lengths[i])
        if current and max(longest, length) * (len(current) + 1) > token_budget:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, length)
    if current:
        batches.append(current)
    return batches


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit-decreasing packing of items into rows holding at most `capacity` tokens.

    An item longer than `capacity` gets a row of its own. Returns item indices per row.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    if not order:
        return []
    shortest = int(lengths[order[-1]])
    rows: list[list[int]] = []
    free: list[int] = []
    open_rows: list[int] = []  # rows that can still take the shortest item
    for i in order:
        length = int(lengths[i])
        placed = False
        for pos, r in enumerate(open_rows):
            if free[r] >= length:
                rows[r].append(i)
                free[r] -= length
                if free[r] < shortest:
                    open_rows.pop(pos)
                placed = True
                break
        if not placed:
            rows.append([i])
            free.append(capacity - length)
            if free[-1] >= shortest:
                open_rows.append(len(rows) - 1)
    return rows


@dataclass
class TokenStream:
    """The real tokens of a batch as one stream, sequence after sequence (rows in order).

    index (N_tok,) int64 position of each token in the flattened (R*T) row grid; doc (N_tok,) int32
    sequence number of each token; cu_seqlens (S+1,) int32 where each sequence starts (and the end);
    max_seqlen the longest sequence. `block_mask` is filled by `with_block_mask`, once per batch.
    """

    index: torch.Tensor
    doc: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    block_mask: object = None

    def to(self, device: torch.device) -> "TokenStream":
        """The same stream on `device` (non-blocking copies)."""
        return replace(self, index=to_device(self.index, device), doc=to_device(self.doc, device),
                       cu_seqlens=to_device(self.cu_seqlens, device))

    def flatten(self, rows: torch.Tensor) -> torch.Tensor:
        """(R, T, ...) row tensor -> (N_tok, ...) stream tensor."""
        return rows.reshape(-1, *rows.shape[2:]).index_select(0, self.index)

    def unflatten(self, tokens: torch.Tensor, rows: int, width: int) -> torch.Tensor:
        """(N_tok, D) stream tensor -> (R, T, D) rows, zeros on padding."""
        out = tokens.new_zeros(rows * width, tokens.shape[-1])
        return out.index_copy_(0, self.index, tokens).view(rows, width, -1)


def stream_layout(slot: np.ndarray, lengths_in_row_order: Sequence[int], pinned: bool) -> TokenStream:
    """Host-side stream of a packed layout: real tokens (slot >= 0) in row-major order."""
    lengths = np.asarray(lengths_in_row_order, dtype=np.int64)
    cu = np.zeros(len(lengths) + 1, dtype=np.int32)
    cu[1:] = np.cumsum(lengths)
    doc = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
    index = np.flatnonzero(slot.reshape(-1) >= 0).astype(np.int64)
    return TokenStream(index=_host(index, pinned), doc=_host(doc, pinned), cu_seqlens=_host(cu, pinned),
                       max_seqlen=int(lengths.max()))


@dataclass
class PackedBatch:
    """One batch laid out as rows; tensors live on the target device.

    ids (R, T) int64 token ids (padding = pad id); slot (R, T) int64 slot of the sequence within
    its row, -1 for padding; pos (R, T) int64 position within the sequence; pool (R, S, T) float32
    pooling weights (row s of pool[r] averages the tokens pooled for slot s); where (N, 2) int64
    (row, slot) of each input sequence in input order.
    """

    ids: torch.Tensor
    slot: torch.Tensor
    pos: torch.Tensor
    pool: torch.Tensor
    where: torch.Tensor
    one_per_row_no_pad: bool
    stream: Optional[TokenStream] = None

    def attention_mask(self) -> Optional[torch.Tensor]:
        """Boolean (R, 1, T, T) block-diagonal mask (True = may attend), or None when not needed.

        Padding tokens attend only to padding, so their rows never become all-masked (no NaN) and
        real tokens never see them.
        """
        if self.one_per_row_no_pad:
            return None
        return (self.slot[:, :, None] == self.slot[:, None, :]).unsqueeze(1)

    def to(self, device: torch.device) -> "PackedBatch":
        """The same batch on `device`, copied without blocking the host."""
        return PackedBatch(*(to_device(t, device) for t in (self.ids, self.slot, self.pos, self.pool, self.where)),
                           one_per_row_no_pad=self.one_per_row_no_pad,
                           stream=self.stream.to(device) if self.stream is not None else None)

    def gather(self, pooled: torch.Tensor) -> torch.Tensor:
        """(R, S, D) pooled slots -> (N, D) in input order."""
        return pooled[self.where[:, 0], self.where[:, 1]]


def pack(
    tokens: Sequence[np.ndarray],
    pad_id: int,
    device: torch.device,
    pool_range: Callable[[int], tuple[int, int]],
    packed: bool = True,
    capacity: Optional[int] = None,
    multiple_of: int = 1,
    token_scale: Optional[Callable[[np.ndarray], np.ndarray]] = None,
) -> tuple[PackedBatch, Optional[torch.Tensor]]:
    """Lay `tokens` out as rows (several sequences per row when `packed`, else one per row).

    Tensors stay on the host (page-locked when `device` is a GPU); `PackedBatch.to` moves them, so
    this work can run in a background thread while the GPU computes the previous batch.

    `pool_range(length) -> (start, stop)` gives the token positions averaged for a sequence of
    that many tokens. `token_scale(ids) -> float32 array` (optional) gives a per-token factor for
    one sequence (ESM-2 token dropout); it is returned as an (R, T) float32 tensor, 0 on padding.
    """
    lengths = [int(len(t)) for t in tokens]
    if not lengths:
        raise ValueError("empty batch")
    rows = _arrange_rows(lengths, packed, capacity)
    width = -(-max(sum(lengths[i] for i in row) for row in rows) // multiple_of) * multiple_of
    host = _HostLayout.empty(len(rows), max(len(row) for row in rows), width, len(lengths), pad_id,
                             with_scale=token_scale is not None)
    for r, row in enumerate(rows):
        offset = 0
        for s, i in enumerate(row):
            host.place(tokens[i], i, r, s, offset, pool_range, token_scale)
            offset += lengths[i]
    full = all(len(row) == 1 for row in rows) and all(lengths[row[0]] == width for row in rows)
    pinned = torch.device(device).type == "cuda"
    batch = PackedBatch(
        ids=_host(host.ids, pinned), slot=_host(host.slot, pinned), pos=_host(host.pos, pinned),
        pool=_host(host.pool, pinned), where=_host(host.where, pinned), one_per_row_no_pad=full,
        stream=stream_layout(host.slot, [lengths[i] for row in rows for i in row], pinned),
    )
    return batch, (_host(host.scale, pinned) if host.scale is not None else None)


def _arrange_rows(lengths: list[int], packed: bool, capacity: Optional[int]) -> list[list[int]]:
    """Sequence indexes per row: several per row when `packed`, else one per row, longest first."""
    if packed:
        longest = max(lengths)
        return pack_rows(lengths, max(capacity or longest, longest))
    return [[i] for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))]


@dataclass
class _HostLayout:
    """The numpy arrays of one batch while `pack` fills them, one sequence at a time."""

    ids: np.ndarray
    slot: np.ndarray
    pos: np.ndarray
    pool: np.ndarray
    where: np.ndarray
    scale: Optional[np.ndarray]

    @classmethod
    def empty(cls, n_rows: int, n_slots: int, width: int, n_sequences: int, pad_id: int,
              with_scale: bool) -> "_HostLayout":
        """All padding: pad ids, slot -1, nothing pooled."""
        return cls(ids=np.full((n_rows, width), pad_id, dtype=np.int64),
                   slot=np.full((n_rows, width), -1, dtype=np.int64),
                   pos=np.zeros((n_rows, width), dtype=np.int64),
                   pool=np.zeros((n_rows, n_slots, width), dtype=np.float32),
                   where=np.zeros((n_sequences, 2), dtype=np.int64),
                   scale=np.zeros((n_rows, width), dtype=np.float32) if with_scale else None)

    def place(self, tokens: np.ndarray, i: int, r: int, s: int, offset: int,
              pool_range: Callable[[int], tuple[int, int]],
              token_scale: Optional[Callable[[np.ndarray], np.ndarray]]) -> None:
        """Sequence `i` into row `r`, slot `s`, from column `offset`, with its pooling weights."""
        length = len(tokens)
        span = slice(offset, offset + length)
        self.ids[r, span] = tokens
        self.slot[r, span] = s
        self.pos[r, span] = np.arange(length)
        start, stop = pool_range(length)
        if stop <= start:
            raise ValueError(f"sequence {i} has nothing to pool ({length} tokens)")
        self.pool[r, s, offset + start:offset + stop] = 1.0 / (stop - start)
        if self.scale is not None:
            self.scale[r, span] = token_scale(self.ids[r, span])
        self.where[i] = (r, s)


def _host(array: np.ndarray, pinned: bool) -> torch.Tensor:
    """A CPU tensor, page-locked when it is bound for a GPU so the copy can be asynchronous."""
    tensor = torch.from_numpy(array)
    return tensor.pin_memory() if pinned else tensor


def to_device(tensor: Optional[torch.Tensor], device: torch.device) -> Optional[torch.Tensor]:
    """Non-blocking copy (from pinned memory) to the device; CPU tensors stay as they are."""
    if tensor is None or tensor.device == device:
        return tensor
    return tensor.to(device, non_blocking=True)


def pooled_mean(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """Masked means of `hidden` (R, T, D) per sequence, accumulated in fp32 -> (N, D) float32."""
    return batch.gather(torch.bmm(batch.pool, hidden.float()))


def check_token_ids(tokens: Sequence[np.ndarray], vocab_size: int, model: str) -> None:
    """Refuse ids outside the embedding table (on CUDA they would be a device-side assert)."""
    for i, t in enumerate(tokens):
        t = np.asarray(t)
        if t.ndim != 1 or t.size == 0:
            raise ValueError(f"{model}: token array {i} must be a non-empty 1-D array")
        if t.min() < 0 or t.max() >= vocab_size:
            raise ValueError(f"{model}: token array {i} has ids outside 0..{vocab_size - 1}")


def uses_varlen_kernel(x: torch.Tensor, score_mod: Optional[Callable] = None) -> bool:
    """Whether `packed_attention` on tensors like `x` takes the varlen flash kernel (which needs
    no block mask): on a GPU, in fp16/bf16, without a score_mod, with a torch that has it (2.10+;
    before, FlexAttention with the block mask does the same work)."""
    return (score_mod is None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)
            and _has_varlen_attention())


@functools.lru_cache(maxsize=1)
def _has_varlen_attention() -> bool:
    """Whether this torch has `torch.nn.attention.varlen` (added in torch 2.10)."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def for_attention(stream: TokenStream, x: torch.Tensor, score_mod: Optional[Callable] = None) -> TokenStream:
    """The stream ready for `packed_attention`: with its block mask unless the varlen kernel runs."""
    return stream if uses_varlen_kernel(x, score_mod) else with_block_mask(stream)


def with_block_mask(stream: TokenStream) -> TokenStream:
    """The stream with its FlexAttention document mask (a token sees only its own sequence),
    built once per batch and shared by every layer."""
    from torch.nn.attention.flex_attention import create_block_mask

    doc = stream.doc

    def same_sequence(b, h, q_idx, kv_idx):
        return doc[q_idx] == doc[kv_idx]

    n = int(doc.shape[0])
    mask = create_block_mask(same_sequence, None, None, n, n, device=doc.device, _compile=doc.is_cuda)
    return replace(stream, block_mask=mask)


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, stream: TokenStream,
                     score_mod: Optional[Callable] = None) -> torch.Tensor:
    """Attention within each sequence of a token stream: (N_tok, H, d) q, k, v -> (N_tok, H, d).

    Without a score_mod on a GPU in fp16/bf16 this is the varlen flash kernel (cu_seqlens, no
    mask); otherwise FlexAttention over the stream with the batch's document block mask."""
    if uses_varlen_kernel(q, score_mod):
        from torch.nn.attention.varlen import varlen_attn

        n = stream.max_seqlen
        return varlen_attn(q, k, v, stream.cu_seqlens, stream.cu_seqlens, n, n)
    heads_first = [t.transpose(0, 1).unsqueeze(0) for t in (q, k, v)]
    out = _flex(q.is_cuda)(*heads_first, score_mod=score_mod, block_mask=stream.block_mask)
    return out[0].transpose(0, 1)


@functools.lru_cache(maxsize=2)
def _flex(on_gpu: bool) -> Callable:
    """FlexAttention: compiled (fused kernel, any stream length) on a GPU; the eager version,
    which materialises the scores, on the CPU."""
    from torch.nn.attention.flex_attention import flex_attention

    if on_gpu:
        from virnucpro.encoders.compiled import quiet_unreadable_cache

        quiet_unreadable_cache()
        return torch.compile(flex_attention, dynamic=True)

    def eager(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return flex_attention(*args, **kwargs)

    return eager
