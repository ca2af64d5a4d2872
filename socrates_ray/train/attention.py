"""Attention over packed rows without a dense (B, 1, L, L) mask: one causal SDPA call per example.

A packed row holds several examples that must not attend to each other. The dense path
(`tokenize.packed_attention_mask`) builds an additive L x L mask per row and attends over all of
it; its cost grows with L^2 whatever the examples' lengths. `segment_attention` runs
`scaled_dot_product_attention(is_causal=True)` on each example's own slice instead, so the cost is
the sum of the examples' squares (at 2048 tokens holding ~290-token examples: about 1/7), every
call takes SDPA's causal fast path on CPU and GPU, and no mask is materialised. Padding
positions get zeros (no label reads them). An example after a shared prefix (ingest.layout
shared_prefix) attends to the prefix and then to itself causally, with a mask of its own size.

Selected with `train.attention: segments`; registered with transformers' AttentionInterface under
ATTENTION_NAME, so `from_pretrained(attn_implementation=ATTENTION_NAME)` plugs it into Qwen2/Llama.
The model's forward receives the examples as `packed_segments` (row_segments of the batch's seq_ids).

`train.attention: varlen` (CUDA) does the same in one kernel call per layer: the batch's tokens are
one (B*L, H, D) stream cut into its examples (and padding runs) by cumulative lengths, and
torch's `varlen_attn` (flash attention, in the pinned torch; bf16/fp16 on CUDA only) attends within
each cut, causally. No Python loop over examples, no mask; registered as VARLEN_NAME and given
`packed_cu_seqlens` / `packed_max_length` (varlen_arguments of the batch's seq_ids).
"""

from __future__ import annotations

from typing import Any

ATTENTION_NAME = "socrates_segments"
VARLEN_NAME = "socrates_varlen"


def row_segments(seq_ids: Any) -> list[list[tuple[int, int, int, int]]]:
    """(B, L) example ids (0 = padding) -> per row, each run of equal ids in order as (start, end,
    prefix_start, prefix_end): [start, end) the run, [prefix_start, prefix_end) the shared prefix it
    also reads (an example after a prefix run of ingest.layout shared_prefix; data/tokenize.py),
    empty (prefix_start == prefix_end) for prefix runs and examples without one."""
    import torch

    out = []
    for ids in seq_ids.cpu():
        values, counts = torch.unique_consecutive(ids, return_counts=True)
        ends = counts.cumsum(0).tolist()
        starts = [0, *ends[:-1]]
        row, prefix = [], None
        for s, e, v in zip(starts, ends, values.tolist()):
            if v < 0:
                prefix = (s, e)
                row.append((s, e, s, s))
            elif v > 0:
                row.append((s, e, *(prefix or (s, s))))
        out.append(row)
    return out


def segment_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                      scaling: float | None = None, packed_segments: list[list[tuple[int, int, int, int]]] | None = None,
                      **kwargs: Any) -> tuple[Any, None]:
    """transformers attention function: query (B, Hq, L, D), key/value (B, Hkv, L, D) -> (B, L, Hq, D)."""
    import torch
    import torch.nn.functional as F

    if packed_segments is None:
        raise ValueError(f"attn_implementation={ATTENTION_NAME!r} needs packed_segments=row_segments(seq_ids) in the forward call")
    batch, heads, length, dim = query.shape
    out = query.new_zeros(batch, length, heads, dim)
    gqa = key.shape[1] != heads
    p = dropout if module.training else 0.0
    for b, segments in enumerate(packed_segments):
        for start, end, prefix_start, prefix_end in segments:
            q, k, v = (t[b : b + 1, :, start:end] for t in (query, key, value))
            if prefix_end > prefix_start:  # the shared prefix, whole, then this example causally
                shared = prefix_end - prefix_start
                k, v = (torch.cat([t[b : b + 1, :, prefix_start:prefix_end], own], dim=2) for t, own in ((key, k), (value, v)))
                mask = torch.ones(end - start, shared + end - start, dtype=torch.bool, device=query.device)
                mask[:, shared:] = torch.ones(end - start, end - start, dtype=torch.bool, device=query.device).tril()
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=scaling, enable_gqa=gqa)
            else:
                o = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True, scale=scaling, enable_gqa=gqa)
            out[b, start:end] = o[0].transpose(0, 1)
    return out, None


def varlen_arguments(seq_ids: Any, device: Any = None) -> dict[str, Any]:
    """(B, L) example ids (0 = padding) -> the forward kwargs of varlen_attention: the int32
    cumulative lengths of the runs of equal ids over the flattened batch, a new run at every row
    start (so an example never spans two rows and a padding run is a sequence of its own), and the
    longest run."""
    import torch

    ids = seq_ids.cpu()
    if bool((ids < 0).any()):
        raise ValueError("train.attention=varlen cannot read a shared prefix (ingest.layout shared_prefix): each flash "
                         "varlen sequence sees only itself; use train.attention=segments or dense with that layout")
    rows, length = ids.shape
    flat = ids.reshape(-1)
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1]
    starts[::length] = True
    cu = torch.cat([starts.nonzero().squeeze(-1), torch.tensor([flat.numel()])]).to(torch.int32)
    return {"packed_cu_seqlens": cu.to(device) if device is not None else cu, "packed_max_length": int((cu[1:] - cu[:-1]).max())}


def _flash_varlen(*args: Any, **kwargs: Any) -> Any:
    """torch's varlen_attn (CUDA); a module-level hook so CPU tests can put a reference in its place."""
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn(*args, **kwargs)


VARLEN_KERNEL = _flash_varlen


def varlen_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                     scaling: float | None = None, packed_cu_seqlens: Any = None, packed_max_length: int | None = None,
                     **kwargs: Any) -> tuple[Any, None]:
    """transformers attention function: query (B, Hq, L, D), key/value (B, Hkv, L, D) -> (B, L, Hq, D)."""
    if packed_cu_seqlens is None or packed_max_length is None:
        raise ValueError(f"attn_implementation={VARLEN_NAME!r} needs **varlen_arguments(seq_ids) in the forward call")
    if dropout and module.training:
        raise ValueError(f"attn_implementation={VARLEN_NAME!r} has no attention dropout (got {dropout}); use train.attention=segments")
    batch, heads, length, dim = query.shape
    q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (query, key, value))
    out = VARLEN_KERNEL(q, k, v, packed_cu_seqlens, packed_cu_seqlens, packed_max_length, packed_max_length,
                        scale=scaling, window_size=(-1, 0), enable_gqa=key.shape[1] != heads)
    return out.view(batch, length, heads, dim), None


def register(attention: str = "segments") -> str:
    """Register the attention function of train.attention `segments` or `varlen` with transformers
    (idempotent); returns its attn_implementation name."""
    from transformers import AttentionInterface

    name, function = {"segments": (ATTENTION_NAME, segment_attention), "varlen": (VARLEN_NAME, varlen_attention)}[attention]
    AttentionInterface.register(name, function)
    return name
