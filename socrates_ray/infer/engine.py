"""What an inference engine answers, and what every engine's answers are shaped with.

An engine holds one base model plus LoRA adapters loaded by name and answers two primitive calls:

- `option_logprobs(prompts, options, adapter)`: log P(option text + end of turn | prompt) for every
  option of every prompt (exact scoring: no sampling noise, multi-token options included);
- `generate(prefixes, n, temperature, top_p, max_new_tokens, adapter, logprobs)`: sampled
  continuations of already-templated prefixes (logprobs: True for the chosen tokens' log-probabilities,
  k for the k most likely tokens at each step too).

Two engines implement them: `TransformersEngine` (transformers_engine.py, the reference) and
`VllmEngine` (vllm_engine.py). Everything built on the primitives is a plain function here, the same
for both: `distributions` (option log-probabilities shaped by temperature and top_p) and
`sample_answers` (the paper's protocol: sample, parse the first integer). The Serve replica, the
batch simulation and the screening call these and never ask which engine they hold.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from socrates_ray.data.tokenize import Encoder
from socrates_ray.errors import SocratesError

PAPER_TEMPERATURE = 0.6
PAPER_TOP_P = 0.9
PAPER_MAX_NEW_TOKENS = 32
# The highest temperature applied to an option distribution (20: uniform to 3 decimals): the
# bound of calibrate's fit and the most the Serve app's distribution mode accepts.
MAX_DISTRIBUTION_TEMPERATURE = 20.0
# Temperatures below this decode greedily, as 0 does: dividing logits by 1e-300 overflows to inf
# and the sampler fails on the NaN probabilities (a Serve request with temperature 1e-300 did).
GREEDY_BELOW = 1e-3
_FIRST_INTEGER = re.compile(r"-?\d[\d,]*")


class ScoreError(SocratesError, ValueError):
    """A request the engine cannot serve (too long, unknown adapter, bad options)."""


class ContextOverflow(ScoreError):
    """One prompt (with its options or new tokens) longer than the model's context: a fault of that
    row alone, which a batch job skips and counts instead of stopping."""


# The Serve app's error code for a ContextOverflow (OpenAI's name for it): an HTTP client skips that row.
CONTEXT_CODE = "context_length_exceeded"


class InferenceEngine(Protocol):
    """A base model + adapters by name (None = the base model), as the two engines implement it."""

    tokenizer: Any
    encoder: Encoder
    context: int  # the longest input + output in tokens
    device: str
    adapters: dict[str, str]  # loaded adapter name -> folder

    def load_adapter(self, name: str, path: str) -> None: ...

    def unload_adapter(self, name: str) -> None: ...

    def option_logprobs(self, prompts: Sequence[str], options: Sequence[Sequence[int]], adapter: str | None = None) -> list[np.ndarray]: ...

    def generate(
        self, prefixes: Sequence[str], n: int = 1, temperature: float = PAPER_TEMPERATURE, top_p: float = PAPER_TOP_P,
        max_new_tokens: int = PAPER_MAX_NEW_TOKENS, adapter: str | None = None, logprobs: bool | int = False,
    ) -> list[list[dict[str, Any]]]: ...


def parse_first_integer(text: str) -> int | None:
    """The first integer in a generated answer ("I'd say 5." -> 5, "1,000" -> 1000), else None."""
    match = _FIRST_INTEGER.search(text)
    if match is None:
        return None
    digits = match.group(0).replace(",", "")
    try:
        return int(digits)
    except ValueError:
        return None


def shape_distribution(logprobs: np.ndarray, temperature: float = 1.0, top_p: float = 1.0) -> np.ndarray:
    """Option log-probabilities -> probabilities: renormalised over the options, sharpened or
    flattened by temperature, then cut to the smallest top set holding top_p of the mass."""
    if temperature < GREEDY_BELOW:
        probs = np.zeros_like(logprobs, dtype=np.float64)
        probs[int(np.argmax(logprobs))] = 1.0
        return probs
    z = np.asarray(logprobs, dtype=np.float64) / temperature
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, top_p - 1e-12) + 1)]
        cut = np.zeros_like(probs)
        cut[keep] = probs[keep]
        probs = cut / cut.sum()
    return probs


def distributions(
    engine: InferenceEngine, prompts: Sequence[str], options: Sequence[Sequence[int]], adapter: str | None = None,
    temperature: float = 1.0, top_p: float = 1.0,
) -> list[np.ndarray]:
    """The model's probability of every option, per prompt (each sums to 1)."""
    return [shape_distribution(lp, temperature, top_p) for lp in engine.option_logprobs(prompts, options, adapter)]


def sample_answers(
    engine: InferenceEngine, prompts: Sequence[str], n: int = 1, temperature: float = PAPER_TEMPERATURE,
    top_p: float = PAPER_TOP_P, max_new_tokens: int = PAPER_MAX_NEW_TOKENS, adapter: str | None = None,
) -> list[list[int | None]]:
    """The paper's protocol: sample, parse the first integer (None when there is none)."""
    prefixes = [engine.encoder.prefix_text(p) for p in prompts]
    outs = engine.generate(prefixes, n, temperature, top_p, max_new_tokens, adapter)
    return [[parse_first_integer(o["text"]) for o in row] for row in outs]


class OptionIds:
    """An option's token ids as it follows a prompt, cached: a study asks the same scale many times.
    Only short options are kept, and at most MAX_ENTRIES of them, so requests with many distinct
    long options (refused or not) never grow a replica's memory."""

    MAX_TEXT = 24
    MAX_ENTRIES = 65536

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, text: str) -> list[int]:
        if (ids := self.cache.get(text)) is not None:
            return ids
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(text) <= self.MAX_TEXT and len(self.cache) < self.MAX_ENTRIES:
            self.cache[text] = ids
        return ids


def encode_prefixes(tokenizer: Any, prefixes: Sequence[str], max_new_tokens: int, context: int) -> list[list[int]]:
    """Token ids of already-templated prefixes; refused when one cannot fit max_new_tokens more."""
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prefixes]
    for ids in encoded:
        if len(ids) + max_new_tokens > context:
            raise ContextOverflow(f"prompt of {len(ids)} tokens + max_tokens {max_new_tokens} exceeds the model's context of {context}")
    return encoded


def top_count(logprobs: bool | int | None) -> int | None:
    """`generate`'s logprobs argument as how many alternatives to keep per token: None = no log-probabilities;
    False/None -> None, True -> 0 (the chosen tokens only), k -> the k most likely tokens too."""
    if logprobs is None or logprobs is False:
        return None
    return 0 if logprobs is True else int(logprobs)


def completion(tokenizer: Any, eot: int, tokens: list[int], logprob_at: Callable[[int, int], float] | None = None,
               top_at: Callable[[int], list[tuple[int, float]]] | None = None) -> dict[str, Any]:
    """One generated continuation as `generate` returns it: text up to the end of turn, its token ids and
    length, finish_reason and, when logprob_at(step, token) is given, each kept token's log-probability,
    with top_at(step) the most likely (token, log-probability) pairs at each step as "top"."""
    stop = eot in tokens
    kept = tokens[: tokens.index(eot)] if stop else tokens
    item: dict[str, Any] = {
        "text": tokenizer.decode(kept, skip_special_tokens=True),
        "tokens": len(kept),
        "token_ids": kept,
        "finish_reason": "stop" if stop else "length",
    }
    if logprob_at is not None:
        item["logprobs"] = [
            {"token": tokenizer.decode([t]), "logprob": float(logprob_at(j, t)),
             **({"top": [(tokenizer.decode([a]), float(lp)) for a, lp in top_at(j)]} if top_at is not None else {})}
            for j, t in enumerate(kept)
        ]
    return item


def unknown_adapter(name: str) -> ScoreError:
    return ScoreError(f"unknown adapter {name!r}: load it first (load_adapter)")
