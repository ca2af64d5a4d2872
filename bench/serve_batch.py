"""Answer distributions for many rows: one /v1/predict request a row (many concurrent clients, which
Serve's dynamic batching merges) against /v1/predict/batch (many rows a request), on the same app,
model and rows, measured in this run; also checks that both give the same numbers.

    python bench/serve_batch.py                    # ~1 minute on 2 cores
    python bench/serve_batch.py --rows 2048 --rows-per-request 128 --layers 8 --hidden 512

The model is random (built offline from a config), fp32 on CPU so both paths can be compared exactly.
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
PARTIES = ["Strong Democrat", "Weak Democrat", "Independent", "Weak Republican", "Strong Republican"]


def rows(n: int) -> list[dict]:
    return [{"persona": {"age": 18 + i % 60, "party_id": PARTIES[i % 5], "gender": ["Female", "Male"][i % 2]}, "stimulus": STIMULUS}
            for i in range(n)]


def one_a_request(url: str, todo: list[dict], clients: int) -> tuple[float, list[list[float]]]:
    def send(row: dict) -> list[float]:
        r = requests.post(url + "/v1/predict", json=row, timeout=600)
        r.raise_for_status()
        return r.json()["probs"]

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, todo[:clients]))  # warm-up
        start = time.perf_counter()
        probs = list(pool.map(send, todo))
        return time.perf_counter() - start, probs


def batched(url: str, todo: list[dict], per_request: int, clients: int) -> tuple[float, list[list[float]]]:
    def send(chunk: list[dict]) -> list[list[float]]:
        r = requests.post(url + "/v1/predict/batch", json={"rows": chunk}, timeout=600)
        r.raise_for_status()
        return [res["probs"] for res in r.json()["results"]]

    chunks = [todo[i : i + per_request] for i in range(0, len(todo), per_request)]
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, chunks[:clients]))  # warm-up
        start = time.perf_counter()
        probs = [p for chunk in pool.map(send, chunks) for p in chunk]
        return time.perf_counter() - start, probs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients sending one row a request")
    parser.add_argument("--rows-per-request", type=int, default=64)
    parser.add_argument("--batch-clients", type=int, default=4, help="concurrent clients sending batches")
    parser.add_argument("--layers", type=int, default=2, help="model depth (2: the demo's tiny model)")
    parser.add_argument("--hidden", type=int, default=128, help="model width (128: the demo's tiny model)")
    args = parser.parse_args()
    import ray
    from ray import serve

    from socrates_ray.serve.app import build_app, serve_launch, start_serve

    heads = max(1, args.hidden // 32)
    shape = TinyModelSection(hidden_size=args.hidden, intermediate_size=3 * args.hidden, num_hidden_layers=args.layers,
                             num_attention_heads=heads, num_key_value_heads=max(1, heads // 2))
    model = ensure_tiny_model(os.path.join(tempfile.gettempdir(), f"socrates_bench_{args.layers}x{args.hidden}"), shape)
    print(f"model: Qwen2 {args.layers} layers x {args.hidden} wide (random weights), fp32 on CPU; {args.rows} rows", flush=True)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    cfg = load_config(None, ["serve.max_batch_size=32", "serve.batch_wait_timeout_s=0.05", "serve.max_ongoing_requests=128",
                             "serve.num_cpus=2", "serve.port=8126", "serve.precision=fp32", "serve.max_body_bytes=10000000"])
    url = start_serve(build_app(cfg, str(model)), serve_launch(cfg))
    todo = rows(args.rows)
    single_s, single = one_a_request(url, todo, args.clients)
    batch_s, batch = batched(url, todo, args.rows_per_request, args.batch_clients)
    serve.shutdown()
    gap = float(np.max(np.abs(np.asarray(single) - np.asarray(batch))))
    print(f"one row a request, {args.clients} clients: {args.rows / single_s:8.1f} rows/s ({single_s:.1f} s)")
    print(f"{args.rows_per_request} rows a request, {args.batch_clients} clients: {args.rows / batch_s:8.1f} rows/s ({batch_s:.1f} s)")
    print(f"/v1/predict/batch / /v1/predict throughput: {single_s / batch_s:.2f}x; largest probability difference {gap:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
