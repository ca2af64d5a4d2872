"""Samples that follow the prompt, not the batch: each prompt's draws come from a generator of its
own, seeded by (seed, prompt text, sample index).

transformers' sampling draws from torch's global generator, so a row's answer depends on which
rows share its batch (and batches follow timing): the same evaluation gave other answers for its
open-ended cells from run to run. `SeededSampler` is a logits processor for `generate` that warps
(temperature, top_p) and draws each row itself, leaving a single finite score for greedy decoding
to pick; vLLM gets the same per-prompt seed (`prompt_seed`) through its SamplingParams.
"""

from __future__ import annotations

import zlib
from typing import Any, Sequence


def prompt_seed(seed: int, text: str, index: int = 0) -> int:
    """The sampling seed of one prompt's index-th sample (stable across processes and runs)."""
    return (seed * 1_000_003 + zlib.crc32(text.encode()) + index * 7_919) % (2**31)


class SeededSampler:
    """A `generate` logits processor for rows = prompts x n (each prompt's n rows together): it returns
    scores where only the drawn token is finite, and with keep_scores each step's warped scores (for
    logprobs; a step is rows x vocabulary floats, so they are kept only when asked for)."""

    def __init__(self, texts: Sequence[str], n: int, temperature: float, top_p: float, seed: int = 0,
                 keep_scores: bool = False) -> None:
        self.temperature, self.top_p, self.keep_scores = temperature, top_p, keep_scores
        self.seeds = [prompt_seed(seed, text, index) for text in texts for index in range(n)]
        self.generators: list[Any] = []  # made on the scores' device at the first step (no copies back)
        self.warped: list[Any] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        z = scores.float() / self.temperature
        if self.top_p < 1.0:  # the smallest set of tokens holding top_p of the mass (at least one)
            probs, order = torch.sort(torch.softmax(z, dim=-1), dim=-1, descending=True)
            drop = (probs.cumsum(dim=-1) - probs) >= self.top_p
            z = z.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
        if self.keep_scores:
            self.warped.append(z)
        if not self.generators:
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        probs = torch.softmax(z, dim=-1)
        drawn = torch.cat([torch.multinomial(probs[row], 1, generator=g) for row, g in enumerate(self.generators)])
        return torch.full_like(scores, float("-inf")).scatter(-1, drawn[:, None], 0.0)
