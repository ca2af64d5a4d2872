"""Load the base model and tokenizer for training, and add LoRA."""

from __future__ import annotations

from typing import Any

from socrates_ray.train.attention import register as register_attention


def load_model_for_training(
    path: str,
    finetuning: str,
    lora_r: int,
    lora_alpha: int,
    lora_dropout: float,
    lora_targets: list[str] | str,
    lora_rank_pattern: dict[str, int],
    ds_config: dict[str, Any],
    bf16: bool,
    gradient_checkpointing: bool,
    attention: str = "dense",
    init_adapter: str | None = None,
) -> tuple[Any, Any]:
    """(model, keepalive). Under ZeRO-3 the HfDeepSpeedConfig must exist (and stay alive) before
    from_pretrained, so each rank loads only its partition instead of the whole model.
    `init_adapter`: a LoRA adapter folder to continue (its own shape; the lora_* arguments are unused)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    keepalive = HfDeepSpeedConfig(ds_config) if ds_config["zero_optimization"]["stage"] == 3 else None
    # attention "segments": one causal SDPA call per packed example; "varlen": one flash varlen call
    # over all of them (train/attention.py); "dense": the model's own SDPA, given a (B, 1, L, L)
    # mask by the loop
    implementation = {"attn_implementation": register_attention(attention)} if attention != "dense" else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if bf16 else torch.float32, **implementation)
    if gradient_checkpointing:
        # Non-reentrant also under ZeRO-3 with LoRA: the pinned DeepSpeed (0.19.8) no longer partitions
        # frozen weights during a checkpoint's recompute, which raised CheckpointError before
        # (tests/integration/test_train.py trains ZeRO-3 + LoRA + checkpointing on 2 ranks)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if finetuning == "lora" and init_adapter is not None:
        from peft import PeftModel

        # the adapter's weights become trainable parameters of a fresh peft model; the LoRA layers
        # are ordinary tensors (made after from_pretrained), so ZeRO-3 partitions them at initialize
        model = PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
    elif finetuning == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=lora_targets,
            # other ranks for some modules, each with the alpha that keeps the scale alpha / r
            rank_pattern=dict(lora_rank_pattern),
            alpha_pattern={name: rank * lora_alpha // lora_r if rank * lora_alpha % lora_r == 0 else rank * lora_alpha / lora_r
                           for name, rank in lora_rank_pattern.items()},
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    # from_pretrained returns the model in eval mode, where LoRA dropout and gradient checkpointing
    # (transformers checks `self.training`) are both off: the loop's first eval pass was what
    # switched them on, so the first eval_every steps trained without them
    model.train()
    return model, keepalive


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total); ZeRO-3 partitioned parameters report their full size in ds_numel."""
    trainable = total = 0
    for p in model.parameters():
        n = p.ds_numel if hasattr(p, "ds_numel") else p.numel()
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total
