"""Training benchmark, from one run on the same cores:

1. tokens/s of socrates_ray (Ray Train + DeepSpeed ZeRO-2, 2 workers x 1 CPU, LoRA) against two
   baselines, each one process with 2 threads, on the same model, global batch and packed rows the
   ingest pipeline makes (same tokens, same padding share): a plain peft + torch loop, and Hugging
   Face `Trainer` + peft (the stack LLaMA-Factory and axolotl wrap); peak resident memory of each
   (the baselines run in a fresh child process, so their peak is their own);
2. with --attention-compare, socrates_ray's per-example attention (train.attention=segments) against
   its dense (B, 1, L, L) mask on the same rows;
3. peak resident memory per worker for ZeRO-2 vs ZeRO-3 on a model large enough to show
   partitioning (tens of millions of parameters).

    python bench/train.py                   # ~4 minutes on 2 cores
    python bench/train.py --max-length 2048 --micro 1 --steps 40 --attention-compare --skip-memory
    python bench/train.py --steps 40 --hidden 768
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from socrates_ray.config import DEFAULT_SYSTEM_PROMPT, TinyModelSection, load_config
from socrates_ray.models import load_tokenizer
from socrates_ray.data.prepare import prepare_options, run_prepare
from socrates_ray.data.synthetic_files import write_synthetic
from socrates_ray.data.tokenize import ROW_COLUMNS, Encoder, collate, packed_attention_mask
from socrates_ray.models import build_tiny_model, ensure_tiny_model


def ingest_rows(cfg, model_path: str, count: int) -> list[dict]:
    """The first `count` packed rows of the training split, exactly as the ingest pipeline makes
    them (same shuffle, packing window and max_length), so both sides train on the same tokens
    with the same padding share."""
    from socrates_ray.train.trainer import build_split_dataset

    return build_split_dataset(cfg, model_path, "train").take(count)


def lora_model(model_path: str, lora, threads: int):
    """(encoder, peft model) as both baselines start: `threads` torch threads, seed 0, the bench's LoRA."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    encoder = Encoder(load_tokenizer(model_path), DEFAULT_SYSTEM_PROMPT)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_path),
        LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules, task_type="CAUSAL_LM"),
    )
    return encoder, model


def in_child(fn, *args) -> dict:
    """fn(*args) in a fresh spawned process, with that process's peak resident memory (MiB)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_with_peak, fn, *args).result()


def _with_peak(fn, *args) -> dict:
    import resource

    result = fn(*args)
    return {**result, "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def hf_trainer(model_path: str, lora, rows: list[dict], steps: int, rows_per_step: int, max_length: int, lr: float, threads: int) -> dict:
    """The baseline most finetuning stacks wrap: transformers.Trainer + peft LoRA on CPU, fed the
    same packed rows (their packed attention mask and position ids passed through), AdamW, no
    schedule, clipping 1.0; steps 3.. timed by a callback."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    encoder, model = lora_model(model_path, lora, threads)
    batch_tokens: list[int] = []

    def collator(features: list[dict]) -> dict:
        batch = collate({k: [f[k] for f in features] for k in ROW_COLUMNS}, encoder.pad_id, max_length)
        batch_tokens.append(int((batch["seq_ids"] > 0).sum()))
        return {"input_ids": batch["input_ids"], "labels": batch["labels"], "position_ids": batch["position_ids"],
                "attention_mask": packed_attention_mask(batch["seq_ids"])}

    class Clock(TrainerCallback):
        timed, tokens, started = 0.0, 0, 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step >= 3:  # steps 1-2 warm up, as in the other setups
                self.timed += time.perf_counter() - self.started
                self.tokens += batch_tokens[state.global_step - 1]

    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        arguments = TrainingArguments(
            output_dir=out, per_device_train_batch_size=rows_per_step, max_steps=steps, learning_rate=lr, weight_decay=0.1,
            max_grad_norm=1.0, lr_scheduler_type="constant", warmup_steps=0, logging_steps=10**6, save_strategy="no",
            eval_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, remove_unused_columns=False,
            seed=0, disable_tqdm=True,
        )
        Trainer(model=model, args=arguments, train_dataset=rows[: steps * rows_per_step], data_collator=collator,
                callbacks=[clock]).train()
    return {"tokens": clock.tokens, "seconds": round(clock.timed, 2), "tokens_per_s": round(clock.tokens / clock.timed, 1)}


def plain_loop(model_path: str, lora, rows: list[dict], steps: int, rows_per_step: int, max_length: int, lr: float, threads: int) -> dict:
    """The baseline: one process, peft LoRA + torch AdamW, the ingest pipeline's packed rows."""
    import torch

    encoder, model = lora_model(model_path, lora, threads)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.1)
    tokens, timed = 0, 0.0
    for step in range(steps):
        chunk = rows[step * rows_per_step : (step + 1) * rows_per_step]
        batch = collate({k: [r[k] for r in chunk] for k in ROW_COLUMNS}, encoder.pad_id, max_length)
        start = time.perf_counter()
        loss = model(
            input_ids=batch["input_ids"], attention_mask=packed_attention_mask(batch["seq_ids"]),
            position_ids=batch["position_ids"], labels=batch["labels"],
        ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step >= 2:  # the first steps warm up allocators and threads in both setups
            timed += time.perf_counter() - start
            tokens += int((batch["seq_ids"] > 0).sum())
    return {"tokens": tokens, "seconds": round(timed, 2), "tokens_per_s": round(tokens / timed, 1)}


def bench_config(work: Path, name: str, model_path: str, prepared: Path, overrides: list[str]):
    return load_config(
        "configs/demo.yaml",
        [
            f"run.name={name}", f"train.storage_path={work / 'runs'}", f"data.prepared={prepared}",
            f"model.path={model_path}", "model.source=pretrained", "train.eval_every=100000",
            "train.checkpoint_every=100000", "train.eval_batches=1", "train.warmup_ratio=0.0",
            # the bench's own LoRA (all-linear r=16, no dropout) on an unseen_studies split, not the demo's tuning
            "train.setting=unseen_studies", "train.lora.target_modules=all-linear", "train.lora.r=16",
            "train.lora.alpha=32", "train.lora.dropout=0.0", "train.max_steps=null",
            # the plain loop it is compared with runs fp32: so does this side (bf16 has its own bench/precision.py)
            "train.precision=fp32",
            *overrides,
        ],
    )


def ray_run(work: Path, name: str, model_path: str, prepared: Path, overrides: list[str]) -> list[dict]:
    from socrates_ray.train.trainer import run_training

    cfg = bench_config(work, name, model_path, prepared, overrides)
    result = run_training(cfg, model_path, log=lambda *_: None)
    if result.error is not None:
        raise RuntimeError(f"{name} failed: {result.error}")
    return [json.loads(line) for line in (work / "runs" / name / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps of the speed comparison (the first 2 are not timed)")
    parser.add_argument("--micro", type=int, default=2, help="rows per worker per step")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=1024, help="width of the memory-test model (152M parameters at 12 x 1024)")
    parser.add_argument("--layers", type=int, default=12, help="layers of the memory-test model")
    parser.add_argument("--memory-finetuning", choices=["lora", "full"], default="lora", help="path used for the memory comparison")
    parser.add_argument("--attention-compare", action="store_true", help="also time train.attention=segments against dense")
    parser.add_argument("--skip-speed", action="store_true", help="only the memory comparison")
    parser.add_argument("--skip-memory", action="store_true", help="only the speed comparison")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    import ray

    # 4 logical CPUs on a 2-core machine, as `socrates-ray` starts them (cli.ensure_ray).
    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-train-"))
    print(f"bench/train: workdir {work}; {os.cpu_count()} CPUs")
    shutil.rmtree(work / "runs", ignore_errors=True)  # pinned run names would resume old runs
    write_synthetic(work / "synth", studies=20, rows=6000, rows_per_shard=3000, seed=0, refusal_rate=0.0, within_subject_share=0.5)
    prepared = work / "prepared"
    run_prepare(prepare_options(load_config(None, [f"data.raw={work / 'synth'}", f"data.prepared={prepared}", "data.settings=[unseen_studies]"])), log=lambda *_: None)
    tiny = str(ensure_tiny_model(work / "tiny", TinyModelSection(), seed=0))
    lr = 2.0e-3

    common = [f"train.max_steps={args.steps}", f"ingest.micro_batch_size={args.micro}", f"ingest.max_length={args.max_length}", f"train.lr={lr}"]
    speed = {}
    if not args.skip_speed:
        speed_overrides = [*common, "train.cpus_per_worker=1", "train.zero_stage=2", "ingest.layout=pack"]
        speed_cfg = bench_config(work, "speed", tiny, prepared, speed_overrides)
        rows = ingest_rows(speed_cfg, tiny, args.steps * 2 * args.micro)
        baseline_args = (tiny, speed_cfg.train.lora, rows, args.steps, 2 * args.micro, args.max_length, lr, 2)
        base = in_child(plain_loop, *baseline_args)
        print(f"plain peft + torch, 1 process x 2 threads : {base['tokens_per_s']:,.0f} tokens/s ({base['tokens']:,} tokens in "
              f"{base['seconds']}s, steps 3-{args.steps}); peak {base['peak_rss_mib']:,.0f} MiB")
        hf = in_child(hf_trainer, *baseline_args)
        print(f"Hugging Face Trainer + peft, 1 process x 2 threads : {hf['tokens_per_s']:,.0f} tokens/s ({hf['tokens']:,} tokens in "
              f"{hf['seconds']}s, steps 3-{args.steps}); peak {hf['peak_rss_mib']:,.0f} MiB")
        attentions = ["dense", "segments"] if args.attention_compare else ["dense"]
        ours = {}
        for attention in attentions:
            records = ray_run(work, f"speed-{attention}", tiny, prepared, [*speed_overrides, f"train.attention={attention}"])
            timed = [r for r in records if r["step"] >= 3 and "eval_loss" not in r]
            tokens = sum(r["tokens_per_s"] * r["step_time_s"] for r in timed)
            seconds = sum(r["step_time_s"] for r in timed)
            ours[attention] = {"tokens_per_s": tokens / seconds, "peak_rss_mib_per_worker": records[-1]["peak_rss_mb_per_rank"],
                               "losses": [round(r["loss"], 5) for r in records]}
            print(f"socrates_ray, Ray Train + DeepSpeed ZeRO-2, 2 workers x 1 CPU, attention {attention} : {tokens / seconds:,.0f} tokens/s "
                  f"({tokens:,.0f} tokens in {seconds:.2f}s, steps 3-{args.steps} without eval); peak per worker "
                  f"{', '.join(f'{m:,.0f}' for m in records[-1]['peak_rss_mb_per_rank'])} MiB")
        best = max(ours, key=lambda a: ours[a]["tokens_per_s"])
        print(f"ratio socrates_ray ({best}) / plain loop: {ours[best]['tokens_per_s'] / base['tokens_per_s']:.2f}; "
              f"/ Hugging Face Trainer: {ours[best]['tokens_per_s'] / hf['tokens_per_s']:.2f} (target >= 1.0)")
        if args.attention_compare:
            same = max(abs(a - b) for a, b in zip(ours["dense"]["losses"], ours["segments"]["losses"]))
            print(f"ratio segments / dense attention: {ours['segments']['tokens_per_s'] / ours['dense']['tokens_per_s']:.2f} "
                  f"(target >= 1.5 at 2048); largest loss difference over {len(ours['dense']['losses'])} steps {same:.1e}")
        speed = {"plain": base, "hf_trainer": hf, "socrates_ray": ours}
    if args.skip_memory:
        (work / "bench_train.json").write_text(json.dumps(speed, indent=1))
        return 0
    shape = TinyModelSection(
        hidden_size=args.hidden, intermediate_size=3 * args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=8, num_key_value_heads=4,
    )
    medium = work / f"medium-{args.layers}x{args.hidden}"
    if not (medium / "config.json").exists():
        tokenizer = load_tokenizer(tiny)
        model = build_tiny_model(tokenizer, shape, seed=0)
        model.save_pretrained(medium)
        tokenizer.save_pretrained(medium)
    params = sum(p.numel() for p in build_tiny_model(load_tokenizer(tiny), shape).parameters())
    print(f"memory model: Qwen2 {args.layers} layers x {args.hidden} wide = {params / 1e6:.1f}M parameters, {args.memory_finetuning} finetuning, fp32")
    memory = {}
    for stage in (2, 3):
        records = ray_run(work, f"mem-z{stage}", str(medium), prepared, [
            "train.max_steps=3", "ingest.micro_batch_size=1", "ingest.max_length=512", f"train.finetuning={args.memory_finetuning}",
            f"train.zero_stage={stage}", "train.lr=1.0e-5",
        ])
        memory[stage] = records[-1]["peak_rss_mb_per_rank"]
        print(f"ZeRO-{stage}: peak resident memory per worker {', '.join(f'{m:,.0f} MiB' for m in memory[stage])}")
    z2, z3 = max(memory[2]), max(memory[3])
    verdict = f"{z2 - z3:,.0f} MiB less" if z3 < z2 else f"{z3 - z2:,.0f} MiB MORE (model too small to show partitioning?)"
    print(f"ZeRO-3 / ZeRO-2 peak per worker: {z3 / z2:.2f} ({verdict} per worker with ZeRO-3)")
    out = {**speed, "memory_mib": memory, "memory_model_params": params, "memory_finetuning": args.memory_finetuning}
    (work / "bench_train.json").write_text(json.dumps(out, indent=1))
    print(f"results: {work / 'bench_train.json'}")


if __name__ == "__main__":
    sys.exit(main())
