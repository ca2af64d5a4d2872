"""Serving benchmark: throughput with dynamic batching vs one request at a time, under 32
concurrent clients, with p50/p99 latency; both measured in this run on the same tiny model.

    python bench/serve.py                  # ~2 minutes on 2 cores
    python bench/serve.py --requests 512 --batch 32
    python bench/serve.py --gpus 1         # one replica on a GPU (the default where CUDA is visible),
                                           # with a ~0.4B model (24 x 896) unless --layers/--hidden say otherwise
    python bench/serve.py --engine both    # model.engine transformers vs vllm, batched, same model and clients
                                           # (vLLM batches in its engine, step by step: "engine requests a step"
                                           # counts its requests, e.g. a prompt and each option's context)

The model is random (built offline from a config, its tokenizer trained on synthetic prompts), so
nothing is downloaded; on a GPU it runs in bf16, on CPU in fp32.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
import requests

from socrates_ray.config import TinyModelSection, load_config
from socrates_ray.models import ensure_tiny_model

STIMULUS = "How fair is this proposal? Only return an integer from 1 to 7, where 1 means Not at all and 7 means Very, nothing else."


def load(url: str, clients: int, total: int, mode: str, max_tokens: int) -> dict[str, float]:
    def one(i: int) -> float:
        t = time.perf_counter()
        body = {"persona": {"age": 18 + i % 60, "gender": "Female"}, "stimulus": STIMULUS, "mode": mode,
                "max_tokens": max_tokens, "temperature": 0.6, "top_p": 0.9}
        r = requests.post(url + "/v1/predict", json=body, timeout=600)
        r.raise_for_status()
        return time.perf_counter() - t

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(clients)))  # warm-up
        before = requests.get(url + "/healthz", timeout=60).json()
        start = time.perf_counter()
        latencies = list(pool.map(one, range(total)))
        wall = time.perf_counter() - start
        after = requests.get(url + "/healthz", timeout=60).json()
    batches = after["batches"] - before["batches"]
    return {"rps": total / wall, "p50_ms": 1000 * float(np.percentile(latencies, 50)), "p99_ms": 1000 * float(np.percentile(latencies, 99)),
            "mean_batch": (after["batched_requests"] - before["batched_requests"]) / max(1, batches), "device": after["device"],
            "busy": (after["model_seconds"] - before["model_seconds"]) / wall,
            "ms_per_batch": 1000 * (after["model_seconds"] - before["model_seconds"]) / max(1, batches)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32, help="serve.max_batch_size of the batched deployment")
    parser.add_argument("--batch-wait", type=float, default=0.05,
                        help="serve.batch_wait_timeout_s of the batched deployment (0.05: batches fill; see ServeSection)")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs for the replica: 0 or 1 (default: 1 if CUDA is visible)")
    parser.add_argument("--hidden", type=int, default=None,
                        help="model width (default 512 on CPU, 896 on a GPU): big enough that the model, not HTTP, is the cost")
    parser.add_argument("--layers", type=int, default=None, help="model depth (default 8 on CPU, 24 on a GPU)")
    parser.add_argument("--mode", choices=["distribution", "sample"], default="sample",
                        help="sample: generation (decode-bound, where batching pays); distribution: one prefill-bound pass per request")
    parser.add_argument("--max-tokens", type=int, default=16, help="new tokens per request in sample mode")
    parser.add_argument("--engine", choices=["transformers", "vllm", "both"], default="transformers",
                        help="model.engine; both = transformers vs vllm with batching (instead of batched vs one at a time)")
    args = parser.parse_args()
    import ray
    import torch

    if args.gpus is None:
        args.gpus = int(torch.cuda.is_available())
    if args.gpus not in (0, 1):
        parser.error(f"--gpus takes 0 or 1 (one replica), got {args.gpus}")
    if args.gpus and not torch.cuda.is_available():
        parser.error("--gpus 1 but torch sees no CUDA device; run with --gpus 0 for the CPU benchmark")
    args.hidden = args.hidden or (896 if args.gpus else 512)
    args.layers = args.layers or (24 if args.gpus else 8)
    from ray import serve

    from socrates_ray.serve.app import build_app, serve_launch, start_serve

    heads = max(1, args.hidden // 64)
    shape = TinyModelSection(hidden_size=args.hidden, intermediate_size=3 * args.hidden, num_hidden_layers=args.layers,
                             num_attention_heads=heads, num_key_value_heads=max(1, heads // 2))
    model = ensure_tiny_model(os.path.join(tempfile.gettempdir(), f"socrates_bench_{args.layers}x{args.hidden}"), shape)
    where = f"bf16 on {torch.cuda.get_device_name()}" if args.gpus else "fp32 on CPU"
    print(f"model: Qwen2 {args.layers} layers x {args.hidden} wide (random weights), {where}", flush=True)
    ray.init(num_cpus=4, num_gpus=args.gpus, include_dashboard=False, log_to_driver=False)
    results = {}
    if args.engine == "both":
        runs = [("transformers", args.batch, "transformers"), ("vllm", args.batch, "vllm")]
    else:
        runs = [("one at a time", 1, args.engine), ("batched", args.batch, args.engine)]
    for label, batch, engine in runs:
        cfg = load_config(None, [f"model.engine={engine}", f"serve.max_batch_size={batch}", f"serve.batch_wait_timeout_s={args.batch_wait if batch > 1 else 0}",
                                 f"serve.max_ongoing_requests={max(args.clients, batch) * 2}", "serve.num_cpus=2", "serve.port=8125",
                                 f"serve.num_gpus={args.gpus}"])
        url = start_serve(build_app(cfg, str(model)), serve_launch(cfg))
        results[label] = load(url, args.clients, args.requests, args.mode, args.max_tokens)
        serve.delete(cfg.serve.app_name)
        r = results[label]
        print(f"{label:>14} ({engine}, max_batch_size {batch:>2}): {r['rps']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
              f"{'engine requests a step' if engine == 'vllm' else 'mean batch'} {r['mean_batch']:4.1f} ({r['ms_per_batch']:.0f} ms each, "
              f"model busy {r['busy']:.0%}) on {r['device']}", flush=True)
    serve.shutdown()
    if args.engine == "both":
        ratio = results["vllm"]["rps"] / results["transformers"]["rps"]
        print(f"vllm / transformers throughput, {args.mode} mode, batched, {args.clients} concurrent clients: {ratio:.2f}x")
        return 0
    ratio = results["batched"]["rps"] / results["one at a time"]["rps"]
    print(f"batching / one-at-a-time throughput, {args.mode} mode, {args.clients} concurrent clients: {ratio:.2f}x (target >= 5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
