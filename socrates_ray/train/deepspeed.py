"""The only place a DeepSpeed config dict is built, and the environment DeepSpeed's op builder
needs (pure: no DeepSpeed import)."""

from __future__ import annotations

import os
import re
from typing import Any

MIN_REDUCE_BUCKET = 1_000_000  # elements


def lora_persistence_threshold(rank: int, rank_pattern: dict[str, int], hidden_size: int, intermediate_size: int | None) -> int:
    """ZeRO-3 for LoRA: a persistence threshold above the largest LoRA matrix of a linear layer
    (rank x the wider of hidden and intermediate), so every trainable matrix (and every norm) stays
    whole on each rank while the frozen weights, each at least hidden^2, are partitioned. With
    DeepSpeed's default (about 10 x hidden elements) each LoRA matrix was gathered on every use:
    ZeRO-3 LoRA steps at 0.073 MFU vs ZeRO-2's 0.199 on one H200 (issue 15)."""
    widest = max(hidden_size, intermediate_size or 0)
    return max([rank, *rank_pattern.values()]) * widest + 1


def build_ds_config(
    *,
    zero_stage: int,
    offload_optimizer: bool,
    offload_params: bool,
    bf16: bool,
    micro_batch_size: int,
    grad_accum: int,
    world_size: int,
    lr: float,
    weight_decay: float,
    grad_clip: float,
    warmup_steps: int,
    total_steps: int,
    on_gpu: bool,
    persistence_threshold: int | None = None,
    hidden_size: int | None = None,
) -> dict[str, Any]:
    """A DeepSpeed config for one run. Global batch = micro x accumulation x workers."""
    if offload_params and zero_stage != 3:
        raise ValueError(f"train.offload_params needs train.zero_stage=3 (got {zero_stage})")
    if offload_optimizer and zero_stage < 1:
        raise ValueError("train.offload_optimizer needs train.zero_stage >= 1")
    zero: dict[str, Any] = {"stage": zero_stage}
    if hidden_size is not None and zero_stage >= 2:
        # Buckets sized to the model (the values Hugging Face's "auto" picks): DeepSpeed's fixed
        # defaults (5e8 / 5e7 elements) allocate more than a small model's own weights. Floored at
        # 1M elements (4 MB in fp32): below that, gradients go out in many tiny all-reduces (a
        # 64-wide model's h^2 = 4096 cost 20% of its step time on 2 CPU workers).
        zero["reduce_bucket_size"] = max(hidden_size * hidden_size, MIN_REDUCE_BUCKET)
        if zero_stage == 3:
            zero["stage3_prefetch_bucket_size"] = int(0.9 * hidden_size * hidden_size)
            zero["stage3_param_persistence_threshold"] = 10 * hidden_size
            if not on_gpu:
                # Release gathered layers right after use (DeepSpeed keeps up to 1e9 gathered
                # elements live by default, i.e. the whole model): on CPU, host RAM is the
                # budget ZeRO-3 exists to save. GPUs keep the faster defaults.
                zero["stage3_max_live_parameters"] = 4 * hidden_size * hidden_size
                zero["stage3_max_reuse_distance"] = 4 * hidden_size * hidden_size
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    if zero_stage == 3:
        # Full-finetuning export gathers a consolidated state dict on rank 0.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        if persistence_threshold is not None:
            zero["stage3_param_persistence_threshold"] = persistence_threshold
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch_size * grad_accum * world_size,
        "gradient_clipping": grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},  # fp16 loss scaling is fragile on CPU; bf16 or fp32 only
        "optimizer": {
            "type": "AdamW",
            # torch's AdamW on CPU: DeepSpeed's fused Adam is a CUDA kernel.
            "params": {"lr": lr, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": weight_decay, "torch_adam": not on_gpu},
        },
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": max(1, total_steps),
                "warmup_num_steps": max(1, warmup_steps),  # DeepSpeed rejects 0
                "warmup_min_ratio": 0.0,
                "cos_min_ratio": 0.0,
                "warmup_type": "linear",
            },
        },
        "steps_per_print": 10**9,  # our own progress line replaces DeepSpeed's
        "wall_clock_breakdown": False,
    }


def skip_inference_comm_op() -> None:
    """Keep DeepSpeed on CPU from JIT-compiling its shared-memory all-reduce op at init_distributed.

    DeepSpeed 0.19's TorchBackend builds deepspeed_shm_comm whenever the accelerator is the CPU, but
    only inference_all_reduce (DeepSpeed inference, tensor parallelism) uses it; training's gradient
    reduction goes through torch.distributed (gloo) either way, so the numbers do not change. The
    build cost 33 s of a 2-core demo each time the venv's path changed (ninja sees new include
    paths), i.e. on every fresh clone. Call before deepspeed.init_distributed, on CPU only."""
    import importlib

    # importlib, not `deepspeed.comm.torch`: that attribute of the package is PyTorch itself
    backend = importlib.import_module("deepspeed.comm.torch")
    backend.build_shm_op = lambda: None


def normalize_cuda_arch_list(environ: Any = os.environ) -> str | None:
    """Make TORCH_CUDA_ARCH_LIST readable by DeepSpeed 0.19's JIT op builder, in place.

    Hopper images set arch-specific entries such as "9.0a"; the builder parses each entry's parts
    as integers and fails with "invalid literal for int() with base 10: '0a'" the first time it
    compiles an op (FusedAdam, on any GPU run). Seen on an H100 machine. "9.0a" becomes "9.0" (the
    generic sm_90 build runs there), "+PTX" suffixes stay. Returns the new value when it changed."""
    value = environ.get("TORCH_CUDA_ARCH_LIST")
    if not value:
        return None
    fixed = re.sub(r"(\d+\.\d+)[a-zA-Z]+", r"\1", value)
    if fixed == value:
        return None
    environ["TORCH_CUDA_ARCH_LIST"] = fixed
    return fixed
