"""Attention over packed rows without a dense (B, 1, L, L) mask: one causal SDPA call per example.

A packed row holds several examples that must not attend to each other. The dense path
(`tokenize.packed_attention_mask`) builds an additive L x L mask per row and attends over all of
it; its cost grows with L^2 whatever the examples' lengths. `segment_attention` runs
`scaled_dot_product_attention(is_causal=True)` on each example's own slice instead, so the cost is
the sum of the examples' squares (at 2048 tokens holding ~290-token examples: about 1/7), every
call takes SDPA's causal fast path on CPU and GPU, and no mask is materialised. Padding
positions get zeros (no label reads them).

Selected with `train.attention: segments`; registered with transformers' AttentionInterface under
ATTENTION_NAME, so `from_pretrained(attn_implementation=ATTENTION_NAME)` plugs it into Qwen2/Llama.
The model's forward receives the examples as `packed_segments` (row_segments of the batch's seq_ids).
"""

from __future__ import annotations

from typing import Any

ATTENTION_NAME = "socrates_segments"


def row_segments(seq_ids: Any) -> list[list[tuple[int, int]]]:
    """(B, L) example ids (0 = padding) -> per row, the [start, end) of each example, in order."""
    import torch

    out = []
    for ids in seq_ids.cpu():
        values, counts = torch.unique_consecutive(ids, return_counts=True)
        ends = counts.cumsum(0).tolist()
        starts = [0, *ends[:-1]]
        out.append([(s, e) for s, e, v in zip(starts, ends, values.tolist()) if v > 0])
    return out


def segment_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                      scaling: float | None = None, packed_segments: list[list[tuple[int, int]]] | None = None,
                      **kwargs: Any) -> tuple[Any, None]:
    """transformers attention function: query (B, Hq, L, D), key/value (B, Hkv, L, D) -> (B, L, Hq, D)."""
    import torch.nn.functional as F

    if packed_segments is None:
        raise ValueError(f"attn_implementation={ATTENTION_NAME!r} needs packed_segments=row_segments(seq_ids) in the forward call")
    batch, heads, length, dim = query.shape
    out = query.new_zeros(batch, length, heads, dim)
    gqa = key.shape[1] != heads
    p = dropout if module.training else 0.0
    for b, segments in enumerate(packed_segments):
        for start, end in segments:
            o = F.scaled_dot_product_attention(
                query[b : b + 1, :, start:end], key[b : b + 1, :, start:end], value[b : b + 1, :, start:end],
                dropout_p=p, is_causal=True, scale=scaling, enable_gqa=gqa,
            )
            out[b, start:end] = o[0].transpose(0, 1)
    return out, None


def register() -> str:
    """Register segment_attention with transformers (idempotent); returns its attn_implementation name."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, segment_attention)
    return ATTENTION_NAME
