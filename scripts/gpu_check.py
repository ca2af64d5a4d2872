"""The GPU check: bf16 ZeRO-2 and ZeRO-3 LoRA training steps and the exact-distribution scorer on a
randomly initialised Qwen2-architecture model of about 0.5B parameters (Qwen2.5-0.5B's shape),
built from a config, with an offline tokenizer: nothing is downloaded.

    scripts/gpu_check.sh                      # the wrapper: packages, then this with a time limit
    python scripts/gpu_check.py --out gpu_check.json
    python scripts/gpu_check.py --device cpu --preset smoke   # the same code on CPU (a test runs it)

Prints, per training setup (ZeRO-2 with the dense packed mask, with per-example attention
(train.attention=segments) and with one flash varlen call per layer (varlen, CUDA only); ZeRO-3 with
segments and varlen and the LoRA persistence threshold that keeps LoRA matrices whole): tokens/s, model FLOPs utilisation and peak GPU memory; then DPO LoRA steps under
ZeRO-2 (pairs/s, the reference pass, and a first loss that must be log 2); then the scorer's
prompts/s with each option-tree path (model.scoring_tree: the dense tree mask and the prompts' cache);
then what batching buys: 32 requests one at a time vs as one batch, in sample and
distribution mode (the model-side half of bench/serve.py's target, which needs Ray Serve too).
It uses the project's own pieces (build_ds_config, load_model_for_training, forward_loss,
packing, the transformers engine) in one process (world size 1), so it checks the GPU code paths without a Ray
cluster.

MFU = achieved model FLOPs / the GPU's peak dense bf16 FLOPs, counted two ways: `mfu` (6N) with
model FLOPs per token = 6 x (matmul parameters, lm_head included) + 12 x layers x hidden x
sequence length (attention), the PaLM convention, comparable with full-finetuning MFUs; and
`mfu_lora` with 4 x matmul parameters instead of 6 (LoRA computes no gradient for a frozen weight:
forward 2N + the activations' gradients 2N; the adapters' own FLOPs are under 1% at r=16), the
work the GPU actually does.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

# Peak dense bf16 tensor FLOP/s (no sparsity) by device-name substring; override with --peak-tflops.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}

PRESETS = {
    # Qwen2.5-0.5B's shape: 494M parameters with tied embeddings.
    "qwen2-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
                       seq=2048, micro=8, steps=10, warmup=3, score_prompts=1024, batch_clients=32, batch_tokens=16),
    "smoke": dict(vocab_size=3000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  seq=512, micro=2, steps=2, warmup=1, score_prompts=16, batch_clients=4, batch_tokens=4),
}


def build_model_folder(folder: Path, preset: dict[str, Any]) -> int:
    """Offline tokenizer + random Qwen2 model saved in bf16; returns the parameter count."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from socrates_ray.models import build_tiny_tokenizer, synthetic_corpus

    tokenizer = build_tiny_tokenizer(synthetic_corpus(600), 3000)
    config = Qwen2Config(
        **{k: preset[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                 "num_attention_heads", "num_key_value_heads", "max_position_embeddings")},
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def training_batches(folder: Path, seq: int, micro: int, count: int) -> list[dict[str, Any]]:
    """Packed batches of real synthetic prompts (loss on the answers only), as training sees them."""
    from socrates_ray.config import DEFAULT_SYSTEM_PROMPT
    from socrates_ray.models import load_tokenizer
    from socrates_ray.data.tokenize import Encoder, collate_rows, pack_rows
    from socrates_ray.models import synthetic_corpus

    encoder = Encoder(load_tokenizer(str(folder)), DEFAULT_SYSTEM_PROMPT)
    texts = [t for t in synthetic_corpus(4000, seed=1) if "\n" in t]
    prompts, answers = zip(*(t.rsplit("\n", 1) for t in texts))
    rows = pack_rows(encoder.encode(list(prompts), list(answers)), seq, encoder.pad_id)
    batches = []
    for b in range(count):
        chunk = [rows[(b * micro + i) % len(rows)] for i in range(micro)]
        batches.append(collate_rows(chunk, encoder.pad_id, pad_to=seq))
    return batches


def model_flops_per_token(preset: dict[str, Any], per_parameter: float = 6.0) -> float:
    """per_parameter 6: the 6N convention (full finetuning); 4: LoRA (no frozen-weight gradients)."""
    h, inter, layers, v = preset["hidden_size"], preset["intermediate_size"], preset["num_hidden_layers"], preset["vocab_size"]
    kv = h // preset["num_attention_heads"] * preset["num_key_value_heads"]
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter  # q, o; k, v; gate, up, down
    matmul_params = layers * per_layer + v * h  # + lm_head
    return per_parameter * matmul_params + 12.0 * layers * h * preset["seq"]


def init_single_process_group(device: str) -> None:
    import deepspeed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    if device == "cpu":  # as the training loop does: no 36 s JIT build of an op training never calls
        from socrates_ray.train.deepspeed import skip_inference_comm_op

        skip_inference_comm_op()
    deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo")


def timed_steps(engine: Any, batches: list[dict[str, Any]], warmup: int, sync: Any, loss_of: Any) -> tuple[list[float], int, float]:
    """(every step's loss, real tokens in the timed steps, their seconds): optimizer steps on `batches`,
    the first `warmup` untimed."""
    losses, tokens, start = [], 0, 0.0
    for i, batch in enumerate(batches):
        if i == warmup:
            sync()
            start = time.perf_counter()
        loss = loss_of(batch)
        engine.backward(loss)
        engine.step()
        losses.append(float(loss.detach()))
        if i >= warmup:
            tokens += int((batch["seq_ids"] > 0).sum())
    sync()
    return losses, tokens, time.perf_counter() - start


def release(engine: Any, on_gpu: bool) -> None:
    """Free a setup's DeepSpeed engine and its memory before the next setup measures its own peak."""
    import torch

    engine.destroy()
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()


# (ZeRO stage, train.attention); varlen (torch's flash varlen kernel) runs on CUDA only
TRAIN_SETUPS = [(2, "dense"), (2, "segments"), (2, "varlen"), (3, "segments"), (3, "varlen")]


def train_steps(folder: Path, stage: int, preset: dict[str, Any], device: str, peak_tflops: float | None,
                attention: str = "dense") -> dict[str, Any]:
    """LoRA (all linear layers, r=16) steps under ZeRO-`stage` with `attention` (train.attention);
    warm-up steps are not timed. ZeRO-3 gets the persistence threshold training gives LoRA."""
    import deepspeed
    import torch

    from socrates_ray.train.deepspeed import build_ds_config, lora_persistence_threshold
    from socrates_ray.train.steps import forward_loss
    from socrates_ray.train.model import count_parameters, load_model_for_training

    on_gpu = device == "cuda"
    steps, warmup = preset["steps"], preset["warmup"]
    persistence = lora_persistence_threshold(16, {}, preset["hidden_size"], preset["intermediate_size"]) if stage == 3 else None
    ds_config = build_ds_config(
        zero_stage=stage, offload_optimizer=False, offload_params=False, bf16=True, micro_batch_size=preset["micro"],
        grad_accum=1, world_size=1, lr=1e-4, weight_decay=0.1, grad_clip=1.0, warmup_steps=1,
        total_steps=steps + warmup, on_gpu=on_gpu, hidden_size=preset["hidden_size"], persistence_threshold=persistence,
    )
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model, keepalive = load_model_for_training(str(folder), "lora", 16, 32, 0.0, "all-linear", {}, ds_config, True, False, attention)
    trainable, total = count_parameters(model)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_config)
    batches = training_batches(folder, preset["seq"], preset["micro"], steps + warmup)
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    losses, tokens, seconds = timed_steps(engine, batches, warmup, sync, lambda batch: forward_loss(engine, batch, torch.bfloat16, attention))
    tokens_per_s = tokens / seconds
    result = {
        "zero_stage": stage, "attention": attention, "persistence_threshold": persistence, "parameters": total, "trainable": trainable, "steps_timed": steps,
        "tokens_per_step": tokens / steps, "tokens_per_s": round(tokens_per_s, 1),
        "step_time_s": round(seconds / steps, 4), "first_loss": losses[0], "last_loss": losses[-1],
        "model_tflops_per_s": round(tokens_per_s * model_flops_per_token(preset) / 1e12, 2),
        "mfu": round(tokens_per_s * model_flops_per_token(preset) / (peak_tflops * 1e12), 4) if peak_tflops else None,
        "mfu_lora": round(tokens_per_s * model_flops_per_token(preset, 4.0) / (peak_tflops * 1e12), 4) if peak_tflops else None,
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if on_gpu else None,
    }
    del model, keepalive
    release(engine, on_gpu)
    return result


def dpo_steps(folder: Path, preset: dict[str, Any], device: str) -> dict[str, Any]:
    """DPO (train.method=dpo) LoRA steps under ZeRO-2: the reference log-probabilities computed once
    before training (as train/pairs_dataset.py does), then the policy's forward on both answers of
    `micro` pairs a step and the sigmoid loss. The first loss must be log 2 (policy = reference)."""
    import math

    import deepspeed
    import torch

    from socrates_ray.config import DEFAULT_SYSTEM_PROMPT
    from socrates_ray.data.tokenize import Encoder, collate_pairs, encode_pairs
    from socrates_ray.models import load_tokenizer, synthetic_corpus
    from socrates_ray.train.deepspeed import build_ds_config
    from socrates_ray.train.dpo_loop import dpo_loss
    from socrates_ray.train.model import load_model_for_training
    from socrates_ray.train.steps import sequence_logps

    on_gpu = device == "cuda"
    steps, warmup, micro = preset["steps"], preset["warmup"], preset["micro"]
    encoder = Encoder(load_tokenizer(str(folder)), DEFAULT_SYSTEM_PROMPT)
    texts = [t for t in synthetic_corpus(4 * micro * (steps + warmup) + 1, seed=4) if "\n" in t][: micro * (steps + warmup)]
    prompts, answers = zip(*(t.rsplit("\n", 1) for t in texts))
    rejected = [answers[(i + 1) % len(answers)] if answers[(i + 1) % len(answers)] != a else a + "0" for i, a in enumerate(answers)]
    columns = encode_pairs(encoder, prompts, answers, rejected)
    batches = [collate_pairs({k: v[b * micro : (b + 1) * micro] for k, v in columns.items()}, encoder.pad_id)
               for b in range(steps + warmup)]
    ds_config = build_ds_config(
        zero_stage=2, offload_optimizer=False, offload_params=False, bf16=True, micro_batch_size=micro,
        grad_accum=1, world_size=1, lr=1e-4, weight_decay=0.0, grad_clip=1.0, warmup_steps=1,
        total_steps=steps + warmup, on_gpu=on_gpu, hidden_size=preset["hidden_size"], persistence_threshold=None,
    )
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model, keepalive = load_model_for_training(str(folder), "lora", 16, 32, 0.0, "all-linear", {}, ds_config, True, False, "dense")
    engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_config)
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    sync()
    start = time.perf_counter()
    with torch.no_grad():  # the reference pass: LoRA's B is zero at start, so the policy is the reference
        engine.eval()
        for batch in batches:
            logps, _ = sequence_logps(engine, batch, torch.bfloat16)
            batch["ref_chosen"], batch["ref_rejected"] = logps[:micro].double().cpu(), logps[micro:].double().cpu()
        engine.train()
    sync()
    reference_seconds = time.perf_counter() - start

    def pair_loss(batch: dict[str, Any]) -> Any:
        policy, counts = sequence_logps(engine, batch, torch.bfloat16)
        return dpo_loss(policy, counts, batch["ref_chosen"], batch["ref_rejected"], 0.1, 0.0)[0]

    losses, tokens, seconds = timed_steps(engine, batches, warmup, sync, pair_loss)
    result = {
        "pairs_per_step": micro, "steps_timed": steps, "pairs_per_s": round(micro * steps / seconds, 1),
        "tokens_per_s": round(tokens / seconds, 1), "step_time_s": round(seconds / steps, 4),
        "reference_pairs_per_s": round(len(batches) * micro / reference_seconds, 1),
        "first_loss": losses[0], "first_loss_minus_log2": losses[0] - math.log(2), "last_loss": losses[-1],
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if on_gpu else None,
    }
    del model, keepalive
    release(engine, on_gpu)
    return result


def scorer_throughput(scorer: Any, preset: dict[str, Any], device: str) -> dict[str, Any]:
    """Exact answer distributions for synthetic prompts with 5- and 11-point scales."""
    import numpy as np
    import torch

    from socrates_ray.infer import distributions
    from socrates_ray.models import synthetic_corpus

    prompts = [t.rsplit("\n", 1)[0] for t in synthetic_corpus(preset["score_prompts"] + 1, seed=2) if "\n" in t][: preset["score_prompts"]]
    options = [list(range(1, 6)) if i % 2 else list(range(0, 11)) for i in range(len(prompts))]
    distributions(scorer, prompts[:8], options[:8])  # warm-up (kernels, allocator)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    dists = []
    for i in range(0, len(prompts), 64):
        dists += distributions(scorer, prompts[i : i + 64], options[i : i + 64])
    sync()
    seconds = time.perf_counter() - start
    assert all(abs(float(np.sum(d)) - 1) < 1e-4 for d in dists), "distributions do not sum to 1"
    return {"prompts": len(prompts), "prompts_per_s": round(len(prompts) / seconds, 1),
            "options_per_s": round(sum(map(len, options)) / seconds, 1), "seconds": round(seconds, 2), "tree": scorer.tree,
            "distributions": dists}


def batching_gain(scorer: Any, preset: dict[str, Any], device: str) -> dict[str, Any]:
    """What the Serve app's @serve.batch buys on this device, without Ray or HTTP: the same
    `batch_clients` requests answered one call at a time vs as one batched call, in sample mode
    (TransformersEngine.generate, `batch_tokens` new tokens, as bench/serve.py) and distribution mode."""
    import torch

    from socrates_ray.infer import distributions
    from socrates_ray.models import synthetic_corpus

    k, new = preset["batch_clients"], preset["batch_tokens"]
    prompts = [t.rsplit("\n", 1)[0] for t in synthetic_corpus(k + 1, seed=3) if "\n" in t][:k]
    prefixes = [scorer.encoder.prefix_text(p) for p in prompts]
    options = [list(range(1, 8))] * len(prompts)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def timed(fn: Any) -> float:
        fn()  # warm-up at this shape
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    out: dict[str, Any] = {"requests": len(prompts), "new_tokens": new}
    for mode, one, batch in (
        ("sample", lambda: [scorer.generate([p], 1, 0.6, 0.9, new) for p in prefixes], lambda: scorer.generate(prefixes, 1, 0.6, 0.9, new)),
        ("distribution", lambda: [distributions(scorer, [p], [o]) for p, o in zip(prompts, options)],
         lambda: distributions(scorer, prompts, options)),
    ):
        sequential, batched = timed(one), timed(batch)
        out[mode] = {"sequential_rps": round(len(prompts) / sequential, 1), "batched_rps": round(len(prompts) / batched, 1),
                     "gain": round(sequential / batched, 2)}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="qwen2-0.5b")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's peak dense bf16 TFLOP/s (else from its name)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible (torch.cuda.is_available() is False); use --device cpu for a smoke run")
    preset = PRESETS[args.preset]
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    import deepspeed
    import peft
    import transformers

    from socrates_ray.config import DEFAULT_SYSTEM_PROMPT
    from socrates_ray.infer import TransformersEngine
    from socrates_ray.train.deepspeed import normalize_cuda_arch_list

    report: dict[str, Any] = {
        "device": name, "peak_bf16_tflops": peak, "torch": torch.__version__, "cuda": torch.version.cuda,
        "deepspeed": deepspeed.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "preset": args.preset, "seq": preset["seq"], "micro_batch": preset["micro"],
    }
    print(f"gpu_check: {name}; torch {torch.__version__} (CUDA {torch.version.cuda}), deepspeed {deepspeed.__version__}, "
          f"transformers {transformers.__version__}, peft {peft.__version__}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        report["parameters"] = build_model_folder(folder, preset)
        print(f"gpu_check: random Qwen2 model, {report['parameters'] / 1e6:,.0f}M parameters, built in "
              f"{time.perf_counter() - started:.0f}s", flush=True)
        init_single_process_group(args.device)
        if fixed := normalize_cuda_arch_list():
            print(f"gpu_check: TORCH_CUDA_ARCH_LIST -> {fixed!r} (DeepSpeed's op builder cannot parse arch-specific entries)",
                  flush=True)
        report["train"] = []
        for stage, attention in TRAIN_SETUPS:
            if attention == "varlen" and args.device != "cuda":
                print(f"gpu_check: LoRA ZeRO-{stage}, attention varlen: skipped (CUDA only)", flush=True)
                continue
            try:
                r = train_steps(folder, stage, preset, args.device, peak, attention)
            except Exception as error:  # one setup failing must not cost the others' figures
                report["train"].append({"zero_stage": stage, "attention": attention, "error": f"{type(error).__name__}: {error}"})
                print(f"gpu_check: LoRA ZeRO-{stage}, attention {attention}: FAILED {type(error).__name__}: {error}", flush=True)
                continue
            # the same batches from the same weights: every attention path must start from dense's loss
            dense = next((d["first_loss"] for d in report["train"] if d["attention"] == "dense" and "error" not in d), r["first_loss"])
            r["first_loss_diff_vs_dense"] = abs(r["first_loss"] - dense)
            report["train"].append(r)
            print(f"gpu_check: LoRA ZeRO-{stage} bf16, attention {attention}: {r['tokens_per_s']:,.0f} tokens/s, "
                  f"{r['step_time_s'] * 1000:.0f} ms/step, {r['model_tflops_per_s']} model TFLOP/s, "
                  f"MFU {r['mfu'] if r['mfu'] is not None else 'n/a (unknown peak)'} (6N; LoRA count {r['mfu_lora']}), "
                  f"peak GPU memory {r['peak_gpu_mib']} MiB; loss {r['first_loss']:.3f} -> {r['last_loss']:.3f} "
                  f"(first loss {r['first_loss_diff_vs_dense']:.1e} from dense's)", flush=True)
        try:
            report["dpo"] = d = dpo_steps(folder, preset, args.device)
            print(f"gpu_check: DPO LoRA ZeRO-2 bf16: {d['pairs_per_s']:,.1f} pairs/s ({d['tokens_per_s']:,.0f} tokens/s, "
                  f"{d['step_time_s'] * 1000:.0f} ms/step of {d['pairs_per_step']} pairs), reference pass "
                  f"{d['reference_pairs_per_s']:,.1f} pairs/s, peak GPU memory {d['peak_gpu_mib']} MiB; loss "
                  f"{d['first_loss']:.4f} (log 2 {d['first_loss_minus_log2']:+.1e}) -> {d['last_loss']:.4f}", flush=True)
        except Exception as error:  # as above: the scorer's figures still come
            report["dpo"] = {"error": f"{type(error).__name__}: {error}"}
            print(f"gpu_check: DPO: FAILED {type(error).__name__}: {error}", flush=True)
        scorer = TransformersEngine(str(folder), DEFAULT_SYSTEM_PROMPT, device=args.device, max_length=preset["max_position_embeddings"])
        # both option-tree paths (model.scoring_tree) on the same prompts: the dense tree mask (report["score"])
        # and the prompts' cache with no prompt mask (report["score_cache"])
        for key, tree in (("score", "mask"), ("score_cache", "cache")):
            scorer.tree = tree
            report[key] = scorer_throughput(scorer, preset, args.device)
            s = report[key]
            print(f"gpu_check: exact distributions, scoring_tree={tree}: {s['prompts_per_s']:,.1f} prompts/s "
                  f"({s['options_per_s']:,.0f} options/s) over {s['prompts']} prompts", flush=True)
        scorer.tree = "mask"
        pairs = zip(report["score"].pop("distributions"), report["score_cache"].pop("distributions"))
        report["score_cache"]["max_abs_diff_vs_mask"] = diff = max(float(abs(a - b).max()) for a, b in pairs)
        report["score_cache"]["ratio_vs_mask"] = ratio = round(report["score_cache"]["prompts_per_s"] / report["score"]["prompts_per_s"], 2)
        print(f"gpu_check: scoring_tree=cache / mask: {ratio:.2f}x prompts/s, largest probability difference {diff:.1e}", flush=True)
        report["batching"] = b = batching_gain(scorer, preset, args.device)
        for mode in ("sample", "distribution"):
            print(f"gpu_check: batching, {mode} mode: {b['requests']} requests one at a time {b[mode]['sequential_rps']:,.1f} req/s, "
                  f"as one batch {b[mode]['batched_rps']:,.1f} req/s: {b[mode]['gain']:.2f}x (the Serve app's @serve.batch, "
                  "without HTTP)", flush=True)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(f"gpu_check: done in {report['seconds']}s", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
