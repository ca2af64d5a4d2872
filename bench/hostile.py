"""Hostile input against the running Serve app (issue 14): valid requests interleaved with bad,
oversized and malicious ones, four adapters cycling over an LRU of two (evictions under load).

Prints, per kind of request, how many were sent and the status codes they got; the 4xx and 5xx
totals; the p50/p99 latency of the valid requests alone and then while under attack (same
requests, same run); whether every valid request got its own answer (the distribution it gets
alone); whether the replica restarted (its pid, from /healthz); how much its memory grew over 60
more refused requests; and what GET /v1/models lists (never the broken adapters). Exits 1 when a
response was 5xx, a valid request failed or got another answer, the replica restarted, refused
requests left memory behind, or a broken adapter was listed.

    python bench/hostile.py                # ~30 s on 2 cores
    python bench/hostile.py --rounds 3 --clients 24

The model is the tiny random Qwen2 (built offline); the adapters are random LoRA weights, and seven
more adapter folders are broken as a careless operator leaves them (cut short, an empty config,
another rank, edited targets, a dangling link, another base): each must be a 422 that says why.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
import requests

from socrates_ray.config import TinyModelSection, load_config
from socrates_ray.models import ensure_tiny_model

TOKEN = "hostile-bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STIMULUS = "How fair is this proposal? Only return an integer from 1 to 7, where 1 means Not at all and 7 means Very, nothing else."
LIMIT = 400_000  # serve.max_body_bytes for the run: room for the parsing floods below


def make_adapter(model: Path, out: Path, seed: int) -> None:
    """A LoRA adapter with random (non-zero) weights, so each adapter answers differently."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model),
                                LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False))
    peft_model.save_pretrained(out)


def valid(i: int) -> tuple[str, dict]:
    """The i-th valid request: a distribution under one of five models (base + 4 adapters)."""
    adapter = ["base", "a0", "a1", "a2", "a3"][i % 5]
    return "valid", {"json": {"persona": {"age": 18 + i % 60, "gender": "Female"}, "stimulus": STIMULUS, "adapter": adapter}}


def chunked(size: int):
    yield b'{"stimulus": "'
    for _ in range(size // 1000):
        yield b"x" * 1000
    yield b'"}'


# kind -> (request keyword arguments, the status codes a correct server gives)
HOSTILE: dict[str, tuple[dict, set[int]]] = {
    "no token": ({"json": {"stimulus": STIMULUS}, "headers": {}}, {401}),
    "wrong token": ({"json": {"stimulus": STIMULUS}, "headers": {"Authorization": "Bearer nope"}}, {401}),
    "malformed JSON": ({"data": b"{not json"}, {400}),
    "wrong type": ({"json": {"stimulus": STIMULUS, "n": "many"}}, {400}),
    "NaN temperature": ({"data": b'{"stimulus": "x", "temperature": NaN}'}, {400}),
    "unknown field": ({"json": {"stimulus": STIMULUS, "unexpected": 1}}, {400}),
    "n over serve.max_n": ({"json": {"stimulus": STIMULUS, "mode": "sample", "n": 10_000}}, {400}),
    "prompt over the context": ({"json": {"stimulus": "word " * 3000 + STIMULUS}}, {400}),
    "body over the limit (Content-Length)": ({"data": b'{"stimulus": "' + b"x" * (LIMIT + 10) + b'"}'}, {413}),
    "body over the limit (chunked)": ({"data": "chunked"}, {413}),
    "scale-parsing flood (360 KB)": ({"json": {"stimulus": "Please return 1 for yes " * 15_000}}, {400}),
    "scale of 1e8 answers": ({"json": {"stimulus": "Only return an integer from 1 to 100000000, nothing else."}}, {400}),
    "scale of 1e25 answers": ({"json": {"stimulus": "Only return an integer from 1 to 10000000000000000000000000."}}, {400}),
    "temperature 1e-300 (sample)": ({"json": {"stimulus": STIMULUS, "mode": "sample", "temperature": 1e-300, "max_tokens": 2}}, {200}),
    "empty adapter name": ({"json": {"stimulus": STIMULUS, "adapter": ""}}, {400}),
    "path traversal": ({"json": {"stimulus": STIMULUS, "adapter": "../../etc"}}, {400}),
    "unknown adapter": ({"json": {"stimulus": STIMULUS, "adapter": "nobody"}}, {404}),
    "invalid UTF-8": ({"data": b'{"stimulus": "\xff\xfe"}'}, {400}),
    "5,000-digit integer": ({"data": ('{"stimulus": "x", "n": ' + "9" * 5000 + "}").encode()}, {400}),
    "chat, empty model": ({"path": "/v1/chat/completions", "json": {"model": "", "messages": [{"role": "user", "content": "hi"}]}}, {400}),
    # issue 42's round: persona fields, text that is not text, odd tokens, huge options, broken adapters
    "persona key misspelled (Age)": ({"json": {"persona": {"Age": 40}, "stimulus": STIMULUS}}, {400}),
    "persona age 'abc'": ({"json": {"persona": {"age": "abc"}, "stimulus": STIMULUS}}, {400}),
    "persona age 1e20": ({"json": {"persona": {"age": 1e20}, "stimulus": STIMULUS}}, {400}),
    "persona value an object": ({"json": {"persona": {"party_id": {"a": [1]}}, "stimulus": STIMULUS}}, {400}),
    "lone surrogate in the stimulus": ({"data": b'{"stimulus": "\\ud800 x"}'}, {400}),
    "lone surrogate in a persona value": ({"data": b'{"persona": {"gender": "\\udfff"}, "stimulus": "x"}'}, {400}),
    "lone surrogate in a chat message": ({"path": "/v1/chat/completions",
                                          "data": b'{"messages": [{"role": "user", "content": "\\ud800"}]}'}, {400}),
    "token with a latin-1 byte": ({"json": {"stimulus": STIMULUS}, "headers": {"Authorization": b"Bearer \xe9"}}, {401}),
    "token with UTF-8 bytes, /v1/models": ({"method": "get", "path": "/v1/models", "headers": {"Authorization": "Bearer été".encode()}}, {401}),
    "option of 10^15": ({"json": {"stimulus": STIMULUS, "options": [1, 10**15]}}, {400}),
    "1,001 distinct 12-digit options": ({"json": {"stimulus": STIMULUS, "options": "distinct"}}, {400}),
    "adapter cut short": ({"json": {"stimulus": STIMULUS, "adapter": "cut"}}, {422}),
    "adapter with an empty config": ({"json": {"stimulus": STIMULUS, "adapter": "empty-config"}}, {422}),
    "adapter config of another rank": ({"json": {"stimulus": STIMULUS, "adapter": "rank"}}, {422}),
    "adapter targets edited": ({"json": {"stimulus": STIMULUS, "adapter": "targets"}}, {422}),
    "adapter weights a dangling link": ({"json": {"stimulus": STIMULUS, "adapter": "dangling"}}, {422}),
    "adapter of another base (vocab)": ({"json": {"stimulus": STIMULUS, "adapter": "other-base"}}, {422}),
    "chat naming a broken adapter": ({"path": "/v1/chat/completions",
                                      "json": {"model": "rank", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}}, {422}),
    # issue 43's routes: streaming, top_logprobs, completions, many rows a request
    "streamed chat over the token limit": ({"path": "/v1/chat/completions", "json": {
        "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 10_000}}, {400}),
    "top_logprobs without logprobs": ({"path": "/v1/chat/completions", "json": {
        "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 5}}, {400}),
    "top_logprobs of 1,000": ({"path": "/v1/chat/completions", "json": {
        "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 1000}}, {400}),
    "completions: a prompt of token ids": ({"path": "/v1/completions", "json": {"prompt": [1, 2, 3]}}, {400}),
    "completions: 5,000 prompts": ({"path": "/v1/completions", "json": {"prompt": ["a"] * 5000}}, {400}),
    "completions: prompt over the context, streamed": ({"path": "/v1/completions", "json": {"prompt": "word " * 3000, "stream": True}}, {400}),
    "batch of 2,000 rows": ({"path": "/v1/predict/batch", "json": {"rows": [{"stimulus": "x"}] * 2000}}, {400, 413}),
    "batch naming a broken adapter": ({"path": "/v1/predict/batch", "json": {"rows": [{"stimulus": STIMULUS}], "adapter": "cut"}}, {422}),
}


def break_adapters(model: Path, folder: Path) -> None:
    """Broken copies of adapter a0, as a careless operator leaves them, and one trained on another base."""
    import shutil

    def copy(name: str) -> Path:
        shutil.copytree(folder / "a0", folder / name)
        return folder / name

    weights = copy("cut") / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    (copy("empty-config") / "adapter_config.json").write_text("")
    for name, change in (("rank", {"r": 16}), ("targets", {"target_modules": ["k_proj", "o_proj"]})):
        config = copy(name) / "adapter_config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), **change}))
    (copy("dangling") / "adapter_model.safetensors").unlink()
    (folder / "dangling" / "adapter_model.safetensors").symlink_to(folder / "nowhere")
    other = ensure_tiny_model(folder.parent / "other-tiny", TinyModelSection(vocab_size=500, tokenizer_corpus_rows=300), seed=1)
    make_adapter(other, folder / "other-base", seed=9)


def send(url: str, kind: str, kwargs: dict) -> tuple[str, int, float, dict | None]:
    kwargs = dict(kwargs)
    path, method = kwargs.pop("path", "/v1/predict"), kwargs.pop("method", "post")
    if kwargs.get("json", {}).get("options") == "distinct":  # each request its own long options: nothing may stay behind
        kwargs["json"] = {**kwargs["json"], "options": [random.randrange(10**11, 10**12) for _ in range(1001)]}
    extra = kwargs.pop("headers", None)  # the hostile kinds that send their own (or no) token
    headers = {"Content-Type": "application/json", **(AUTH if extra is None else extra)}
    if kwargs.get("data") == "chunked":
        kwargs["data"] = chunked(LIMIT * 3)
    start = time.perf_counter()
    try:
        r = requests.request(method, url + path, headers=headers, timeout=300, **kwargs)
        status, body = r.status_code, (r.json() if r.headers.get("content-type", "").startswith("application/json") else None)
    except requests.RequestException as err:  # a dropped connection counts as a server failure
        status, body = 599, {"error": str(err)}
    return kind, status, time.perf_counter() - start, body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--valid", type=int, default=120, help="valid requests per round")
    parser.add_argument("--rounds", type=int, default=2, help="times each hostile kind is sent per round")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--port", type=int, default=8126)
    args = parser.parse_args()
    import ray
    from ray import serve

    from socrates_ray.serve.app import build_app, serve_launch, start_serve

    work = Path(tempfile.mkdtemp(prefix="socrates_hostile_"))
    model = ensure_tiny_model(Path(tempfile.gettempdir()) / "socrates_bench_tiny", TinyModelSection())
    for i in range(4):
        make_adapter(model, work / "adapters" / f"a{i}", seed=i)
    break_adapters(model, work / "adapters")
    os.environ["SOCRATES_HOSTILE_TOKEN"] = TOKEN
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    cfg = load_config(None, [f"serve.port={args.port}", f"serve.adapters_dir={work / 'adapters'}", "serve.auth_token_env=SOCRATES_HOSTILE_TOKEN",
                             f"serve.max_body_bytes={LIMIT}", "serve.max_loaded_adapters=2", "serve.max_length=512",
                             "serve.max_n=8", "serve.max_tokens_limit=16", "serve.num_cpus=1", "serve.app_name=hostile"])
    url = start_serve(build_app(cfg, str(model)), serve_launch(cfg))
    before = requests.get(url + "/healthz", timeout=60).json()
    pid = before["replica_pid"]
    print(f"Serve app at {url}: tiny model, 4 adapters over serve.max_loaded_adapters=2, body limit {LIMIT:,} bytes, replica pid {pid}")

    with ThreadPoolExecutor(args.clients) as pool:
        alone = list(pool.map(lambda i: send(url, *valid(i)), range(args.valid)))
        mixed = [valid(i) for i in range(args.valid)] + [(k, v[0]) for k, v in HOSTILE.items() for _ in range(args.rounds)]
        order = list(range(len(mixed)))
        random.Random(0).shuffle(order)
        started = time.perf_counter()
        attacked = list(pool.map(lambda j: (j, send(url, *mixed[j])), order))
        wall = time.perf_counter() - started
        # refused requests must leave nothing behind: 60 more, each with its own 1,001 long options
        settled = requests.get(url + "/healthz", timeout=60).json()["rss_mib"]
        refused = list(pool.map(lambda _: send(url, "options", HOSTILE["1,001 distinct 12-digit options"][0]), range(60)))
    after = requests.get(url + "/healthz", timeout=60).json()
    growth = after["rss_mib"] - settled
    print(f"60 refused requests of 1,001 distinct long options: {Counter(r[1] for r in refused)}; replica memory "
          f"{settled:,.0f} -> {after['rss_mib']:,.0f} MiB ({growth:+,.0f} MiB)")
    listed = [m["id"] for m in requests.get(url + "/v1/models", headers=AUTH, timeout=60).json()["data"]]
    serve.shutdown()
    ray.shutdown()

    codes: dict[str, Counter] = defaultdict(Counter)
    wrong: list[str] = []
    latency: list[float] = []
    for j, (kind, status, seconds, body) in attacked:
        codes[kind][status] += 1
        if kind == "valid":
            latency.append(seconds)
            own = alone[j][3]
            if status != 200 or body is None or own is None or not np.allclose(body["probs"], own["probs"], atol=1e-4):
                wrong.append(f"valid request {j}: {status} {json.dumps(body)[:200]}")
        elif status not in HOSTILE[kind][1]:
            wrong.append(f"{kind}: {status} (expected {sorted(HOSTILE[kind][1])}) {json.dumps(body)[:200]}")
    width = max(map(len, codes))
    print(f"\n{'kind':<{width}}  sent  status codes")
    for kind in ["valid", *HOSTILE]:
        print(f"{kind:<{width}}  {sum(codes[kind].values()):>4}  " + ", ".join(f"{c}: {n}" for c, n in sorted(codes[kind].items())))
    statuses = Counter(s for c in codes.values() for s, n in c.items() for _ in range(n))
    fourxx = sum(n for s, n in statuses.items() if 400 <= s < 500)
    fivexx = sum(n for s, n in statuses.items() if s >= 500)
    base = [s for _, _, s, _ in alone]
    print(f"\n{len(attacked)} requests in {wall:.1f}s under attack: {fourxx} 4xx, {fivexx} 5xx; "
          f"valid requests answered 200 with their own distribution: {len(latency) - sum(w.startswith('valid') for w in wrong)}/{len(latency)}")
    print(f"valid latency alone: p50 {1000 * np.percentile(base, 50):.0f} ms, p99 {1000 * np.percentile(base, 99):.0f} ms; "
          f"under attack: p50 {1000 * np.percentile(latency, 50):.0f} ms, p99 {1000 * np.percentile(latency, 99):.0f} ms "
          f"({np.percentile(latency, 99) / np.percentile(base, 99):.2f}x)")
    restarted = after["replica_pid"] != pid
    print(f"replica restarted: {'YES' if restarted else 'no'} (pid {pid} -> {after['replica_pid']}); "
          f"adapters loaded at the end: {after['loaded_adapters']}; replica memory {before['rss_mib']:,.0f} -> "
          f"{after['rss_mib']:,.0f} MiB over the run")
    print(f"GET /v1/models after the run: {listed}")
    if growth > 60 or any(r[1] != 400 for r in refused):  # once 9.3 MiB a refused request
        wrong.append(f"refused requests: replica memory grew {growth:+,.0f} MiB over 60 of them")
    if listed != ["base", "a0", "a1", "a2", "a3"]:  # the broken adapters are never listed as nameable
        wrong.append(f"/v1/models lists {listed}")
    for line in wrong[:20]:
        print("  wrong:", line)
    return 1 if wrong or fivexx or restarted else 0


if __name__ == "__main__":
    sys.exit(main())
