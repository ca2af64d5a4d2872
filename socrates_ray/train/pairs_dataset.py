"""What a DPO run reads: preference pairs of train.setting's train and validation splits, tokenized,
scored by the reference policy once, and stored in the object store for every epoch.

    datasets, stats = materialize_pairs(cfg, model_path, "val", log)

Pairs are built in the driver (data/pairs.py, seeded), shuffled by run.seed, tokenized (one row per
pair: both answers after the same prompt; pairs longer than ingest.max_length are left out and
counted), then the reference policy adds `ref_chosen` and `ref_rejected`: the summed log-probability
of each answer, by steps.sequence_logps, the forward the loop computes the policy's with (a Ray Data
actor pool, one actor per training worker with its GPU; on CPU, below
ingest.tokenize_in_driver_below pairs, the driver). The reference is where the policy starts: model.path with
train.init_adapter (the SFT adapter) for LoRA, model.path itself for full finetuning.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from socrates_ray.config import Config
from socrates_ray.data.pairs import PairStats, build_pairs
from socrates_ray.data.prepared import read_split
from socrates_ray.data.progress import Progress
from socrates_ray.data.tokenize import Encoder, collate_pairs, encode_pairs
from socrates_ray.models import load_tokenizer

PAIR_SOURCE = ["study_id", "sample_id", "participant", "condition_num", "task_num", "prompt", "answer", "response"]
PAIR_ROW_SCHEMA = pa.schema([
    ("chosen_input_ids", pa.list_(pa.int32())), ("chosen_labels", pa.list_(pa.int32())),
    ("rejected_input_ids", pa.list_(pa.int32())), ("rejected_labels", pa.list_(pa.int32())),
    ("num_tokens", pa.int64()),
])


def tokenize_pairs(pairs: pa.Table, encoder: Any, max_length: int) -> tuple[pa.Table, int]:
    """One row per pair whose longer side fits max_length; (the rows, how many were left out)."""
    columns = encode_pairs(encoder, pairs["prompt"].to_pylist(), pairs["chosen"].to_pylist(), pairs["rejected"].to_pylist())
    fits = [max(len(c), len(r)) <= max_length for c, r in zip(columns["chosen_input_ids"], columns["rejected_input_ids"])]
    keep = {name: [v for v, ok in zip(values, fits) if ok] for name, values in columns.items()}
    keep["num_tokens"] = [len(c) + len(r) for c, r in zip(keep["chosen_input_ids"], keep["rejected_input_ids"])]
    return pa.table(keep, schema=PAIR_ROW_SCHEMA), len(fits) - sum(fits)


class ReferenceScorer:
    """Ray Data UDF: a batch of tokenized pairs -> the same rows with the reference policy's
    `ref_chosen` and `ref_rejected` (float64)."""

    def __init__(self, model_path: str, adapter: str | None, bf16: bool, use_gpu: bool, pad_id: int, attention: str,
                 batch_size: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from socrates_ray.train.attention import register as register_attention

        self.torch = torch
        self.dtype = torch.bfloat16 if bf16 else torch.float32
        implementation = {"attn_implementation": register_attention(attention)} if attention != "dense" else {}
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=self.dtype, **implementation)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
        self.model = model.to("cuda" if use_gpu else "cpu").eval()
        self.pad_id, self.attention, self.batch_size = pad_id, attention, batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        from socrates_ray.train.steps import sequence_logps

        chosen, rejected = [], []
        with self.torch.no_grad():
            for start in range(0, batch.num_rows, self.batch_size):
                part = batch.slice(start, self.batch_size)
                tensors = collate_pairs({name: part[name].to_numpy(zero_copy_only=False) for name in PAIR_ROW_SCHEMA.names[:4]}, self.pad_id)
                logps, _ = sequence_logps(self.model, tensors, self.dtype, self.attention)
                half = part.num_rows
                chosen.extend(logps[:half].double().tolist())
                rejected.extend(logps[half:].double().tolist())
        return batch.append_column("ref_chosen", pa.array(chosen, pa.float64())).append_column("ref_rejected", pa.array(rejected, pa.float64()))


def split_pairs(cfg: Config, part: str, shuffle: bool) -> tuple[pa.Table, PairStats]:
    dpo = cfg.train.dpo
    rows = read_split(cfg.data.prepared, cfg.train.setting, part, PAIR_SOURCE)
    pairs, stats = build_pairs(rows, cfg.run.seed, dpo.pairs_per_row, dpo.rejected)
    if shuffle:
        pairs = pairs.take(pa.array(np.random.default_rng(cfg.run.seed).permutation(pairs.num_rows)))
    return pairs, stats


def materialize_pairs(cfg: Config, model_path: str, eval_part: str, bf16: bool, log: Any) -> tuple[dict[str, Any], PairStats]:
    """The train and eval pair datasets, reference-scored and materialized; the train split's pair stats."""
    import ray.data

    t, ing = cfg.train, cfg.ingest
    encoder = Encoder(load_tokenizer(model_path), cfg.prompt.system_prompt)
    started = time.perf_counter()
    stored, stats = {}, None
    driver_scorer = None
    for name, part in (("train", "train"), ("eval", eval_part)):
        pairs, part_stats = split_pairs(cfg, part, shuffle=name == "train" and ing.shuffle)
        table, too_long = tokenize_pairs(pairs, encoder, ing.max_length)
        if name == "train":
            stats = part_stats
            log(f"train: dpo pairs of {cfg.train.setting}/train: {part_stats.describe()}"
                + (f"; {too_long:,} longer than ingest.max_length={ing.max_length} left out" if too_long else ""))
        if table.num_rows == 0:
            raise ValueError(f"train.method=dpo: {cfg.train.setting}/{part} gives no preference pair ({part_stats.describe()}); "
                             "a pair needs two participants of one cell who answered differently")
        ray.data.DataContext.get_current().enable_progress_bars = False
        scorer_args = {"model_path": model_path, "adapter": t.init_adapter if t.finetuning == "lora" else None, "bf16": bf16,
                       "use_gpu": t.use_gpu, "pad_id": encoder.pad_id, "attention": t.attention, "batch_size": ing.micro_batch_size * 2}
        blocks = [table.slice(s, 2048) for s in range(0, table.num_rows, 2048)]
        if not t.use_gpu and table.num_rows < ing.tokenize_in_driver_below:
            # a few thousand pairs on CPU: scored here, where torch is loaded already (each actor would
            # spend seconds importing transformers and loading the model before its first pair)
            scorer = driver_scorer = driver_scorer or ReferenceScorer(**scorer_args)
            progress = Progress(log, len(blocks))
            scored = []
            for block in blocks:
                scored.append(scorer(block))
                progress.done(len(scored), f"train: reference log-probabilities of {name} pairs: block {len(scored)}/{len(blocks)}")
            stored[name] = ray.data.from_arrow(scored)
            continue
        ds = ray.data.from_arrow(blocks).map_batches(
            ReferenceScorer, fn_constructor_kwargs=scorer_args, batch_size=512, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=ing.num_workers),
            num_cpus=t.cpus_per_worker, num_gpus=1 if t.use_gpu else 0,
        )
        ds.context.execution_options.preserve_order = True  # a resumed run sees the same pairs in the same steps
        stored[name] = ds.materialize()
    log(f"train: reference log-probabilities of {stored['train'].count():,} training and {stored['eval'].count():,} "
        f"{eval_part} pairs in {time.perf_counter() - started:.1f}s (the reference: "
        f"{'train.init_adapter ' + str(t.init_adapter) if t.finetuning == 'lora' and t.init_adapter else 'model.path ' + str(model_path)})")
    assert stats is not None
    return stored, stats


def reference_of(cfg: Config, model_path: str) -> str:
    """The folder the reference policy's weights come from (for the resume fingerprint)."""
    t = cfg.train
    return str(Path(t.init_adapter).resolve()) if t.finetuning == "lora" and t.init_adapter else str(model_path)
