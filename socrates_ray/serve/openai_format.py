"""OpenAI's response shapes for the Serve app's /v1/chat/completions and /v1/completions: whole responses,
streamed chunks (server-sent events, as OpenAI's and vLLM's servers send them) and log-probabilities.

Pure functions of what the engine returned (`infer.engine.completion` dicts: text, token_ids,
finish_reason, logprobs with "top"); app.py validates requests and calls the engine.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from typing import Any, Iterator, Sequence

NO_LOGPROB = -9999.0  # what a probability of 0 is sent as (JSON has no -inf; vLLM's server sends the same)


def _logprob(value: float) -> float:
    return value if math.isfinite(value) else NO_LOGPROB


def chat_logprob_entry(token: str, logprob: float, top: Sequence[tuple[str, float]]) -> dict[str, Any]:
    return {"token": token, "logprob": _logprob(logprob), "bytes": list(token.encode()),
            "top_logprobs": [{"token": t, "logprob": _logprob(lp), "bytes": list(t.encode())} for t, lp in top]}


def option_top(options: Sequence[int], probs: Sequence[float], k: int) -> list[tuple[str, float]]:
    """An exact option distribution as top_logprobs entries: the k likeliest options, each whole option's
    text with the log of its probability."""
    ranked = sorted(zip(options, probs), key=lambda x: -x[1])[:k]
    return [(str(o), math.log(p) if p > 0 else NO_LOGPROB) for o, p in ranked]


def chat_choice_logprobs(out: dict[str, Any], first_top: list[tuple[str, float]] | None = None) -> dict[str, Any]:
    """A choice's "logprobs" ({"content": [...]}); first_top replaces the first token's top_logprobs
    (the answer's exact option distribution)."""
    content = []
    for j, t in enumerate(out["logprobs"]):
        top = first_top if j == 0 and first_top is not None else t.get("top", [])
        content.append(chat_logprob_entry(t["token"], t["logprob"], top))
    return {"content": content}


def _usage(prompt_tokens: int, outs: Sequence[dict[str, Any]]) -> dict[str, int]:
    completion = sum(o["tokens"] for o in outs)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def chat_response(model: str, outs: Sequence[dict[str, Any]], prompt_tokens: int, logprobs: bool,
                  first_top: list[tuple[str, float]] | None = None) -> dict[str, Any]:
    choices = []
    for i, o in enumerate(outs):
        choices.append({"index": i, "message": {"role": "assistant", "content": o["text"]}, "finish_reason": o["finish_reason"],
                        "logprobs": chat_choice_logprobs(o, first_top) if logprobs else None})
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": _usage(prompt_tokens, outs)}


def pieces(tokenizer: Any, token_ids: Sequence[int]) -> list[str]:
    """Each token's share of the decoded text, so the pieces join to exactly the completion's text
    (a token that ends inside a multi-byte character gives "" and the next one the whole character)."""
    out, before = [], ""
    for j in range(1, len(token_ids) + 1):
        text = tokenizer.decode(list(token_ids[:j]), skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an unfinished character: wait for its last byte
            out.append("")
            continue
        out.append(text[len(before):])
        before = text
    return out


def chat_chunks(model: str, outs: Sequence[dict[str, Any]], tokenizer: Any, prompt_tokens: int, logprobs: bool,
                include_usage: bool, first_top: list[tuple[str, float]] | None = None) -> Iterator[dict[str, Any]]:
    """A chat completion as OpenAI streams it: per choice a role chunk, a chunk per token (with its
    logprobs), a last chunk with the finish reason; then, when asked, a usage chunk with no choices."""
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    for i, o in enumerate(outs):
        yield {**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]}
        entries = chat_choice_logprobs(o, first_top)["content"] if logprobs else None
        for j, piece in enumerate(pieces(tokenizer, o["token_ids"])):
            yield {**head, "choices": [{"index": i, "delta": {"content": piece}, "finish_reason": None,
                                        "logprobs": {"content": [entries[j]]} if entries else None}]}
        yield {**head, "choices": [{"index": i, "delta": {}, "logprobs": None, "finish_reason": o["finish_reason"]}]}
    if include_usage:
        yield {**head, "choices": [], "usage": _usage(prompt_tokens, outs)}


def completion_logprobs(out: dict[str, Any], texts: list[str], start: int = 0) -> dict[str, Any]:
    """The legacy completions "logprobs" object: tokens, token_logprobs, top_logprobs ({token: logprob}
    per step) and text_offset (where each token starts, counted from the start of the prompt);
    `texts`: the completion's pieces()."""
    offsets, at = [], start
    for piece in texts:
        offsets.append(at)
        at += len(piece)
    return {"tokens": [t["token"] for t in out["logprobs"]],
            "token_logprobs": [_logprob(t["logprob"]) for t in out["logprobs"]],
            "top_logprobs": [{tok: _logprob(lp) for tok, lp in t.get("top", [])} for t in out["logprobs"]],
            "text_offset": offsets}


def completion_response(model: str, outs: Sequence[Sequence[dict[str, Any]]], prompts: Sequence[str], tokenizer: Any,
                        prompt_tokens: int, logprobs: bool) -> dict[str, Any]:
    """outs: per prompt its n completions; choice index = prompt index x n + sample index."""
    choices = []
    for p, row in enumerate(outs):
        for o in row:
            choices.append({"index": len(choices), "text": o["text"], "finish_reason": o["finish_reason"],
                            "logprobs": completion_logprobs(o, pieces(tokenizer, o["token_ids"]), len(prompts[p])) if logprobs else None})
    flat = [o for row in outs for o in row]
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": _usage(prompt_tokens, flat)}


def completion_chunks(model: str, outs: Sequence[Sequence[dict[str, Any]]], prompts: Sequence[str], tokenizer: Any,
                      prompt_tokens: int, logprobs: bool, include_usage: bool) -> Iterator[dict[str, Any]]:
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": model}
    index = 0
    for p, row in enumerate(outs):
        for o in row:
            texts = pieces(tokenizer, o["token_ids"])
            whole = completion_logprobs(o, texts, len(prompts[p])) if logprobs else None
            for j, piece in enumerate(texts):
                step = {key: [values[j]] for key, values in whole.items()} if whole else None
                yield {**head, "choices": [{"index": index, "text": piece, "logprobs": step, "finish_reason": None}]}
            yield {**head, "choices": [{"index": index, "text": "", "logprobs": None, "finish_reason": o["finish_reason"]}]}
            index += 1
    if include_usage:
        yield {**head, "choices": [], "usage": _usage(prompt_tokens, [o for row in outs for o in row])}


def sse(chunks: Iterator[dict[str, Any]]) -> Iterator[str]:
    """Server-sent events: one `data:` line per chunk, then `data: [DONE]`."""
    for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"
