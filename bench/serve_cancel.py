"""A client that gives up: what it still costs the vLLM Serve replica (model.engine: vllm).

A client asks for n x max_tokens sampled tokens and disconnects after --give-up seconds. Ray
Serve cancels the request; the replica aborts its engine requests (vllm_loop.EngineLoop). Printed:
the engine steps spent on it against the steps it asked for (the baseline: what decoding it to
its end would have cost), the steps the engine took in the next seconds (0: idle), and the time
the next request waited.

    python bench/serve_cancel.py                       # ~1 minute on 2 cores (the engine starts in ~30 s)
    python bench/serve_cancel.py --n 16 --max-tokens 1024 --give-up 1.0
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import requests

from socrates_ray.config import TinyModelSection, load_config
from socrates_ray.models import ensure_tiny_model

STIMULUS = "How fair is this proposal? Only return an integer from 1 to 7, where 1 means Not at all and 7 means Very, nothing else."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--give-up", type=float, default=1.0, help="seconds the client waits before disconnecting")
    args = parser.parse_args()
    import ray
    from ray import serve

    from socrates_ray.serve.app import build_app, serve_launch, start_serve

    shape = TinyModelSection(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4)
    model = ensure_tiny_model(os.path.join(tempfile.gettempdir(), "socrates_bench_8x512"), shape)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    cfg = load_config(None, ["model.engine=vllm", "serve.port=8126", "serve.num_cpus=2",
                             f"serve.max_tokens_limit={args.max_tokens}", f"serve.max_n={args.n}"])
    url = start_serve(build_app(cfg, str(model)), serve_launch(cfg))
    body = {"persona": {"age": 30}, "stimulus": STIMULUS, "mode": "sample", "n": args.n, "max_tokens": args.max_tokens, "temperature": 1.0}
    before = requests.get(url + "/healthz", timeout=60).json()
    try:
        requests.post(url + "/v1/predict", json=body, timeout=args.give_up)
        print("the request finished before the client gave up: raise --max-tokens")
    except requests.exceptions.ReadTimeout:
        pass
    time.sleep(2)
    spent = requests.get(url + "/healthz", timeout=60).json()
    time.sleep(3)
    after = requests.get(url + "/healthz", timeout=60).json()
    start = time.perf_counter()
    requests.post(url + "/v1/predict", json={**body, "n": 1, "max_tokens": 8}, timeout=60).raise_for_status()
    waited = time.perf_counter() - start
    serve.shutdown()
    steps = spent["batches"] - before["batches"]
    print(f"client gave up after {args.give_up:.1f} s on n {args.n} x {args.max_tokens} tokens: the engine spent {steps} steps on it "
          f"of the {args.max_tokens} it asked for ({steps / args.max_tokens:.1%}); aborted requests {spent['cancelled_requests'] - before['cancelled_requests']}; "
          f"steps in the next 3 s: {after['batches'] - spent['batches']}; the next request answered in {waited:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
