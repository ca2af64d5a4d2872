"""The model training starts from: LoRA with per-module ranks (train.lora.rank_pattern)."""

from __future__ import annotations

from socrates_ray.config import load_config
from socrates_ray.train.deepspeed import build_ds_config
from socrates_ray.train.model import load_model_for_training


def zero2_config() -> dict:
    return build_ds_config(zero_stage=2, offload_optimizer=False, offload_params=False, bf16=False, micro_batch_size=2,
                           grad_accum=1, world_size=1, lr=1e-3, weight_decay=0.0, grad_clip=1.0, warmup_steps=0,
                           total_steps=10, on_gpu=False, persistence_threshold=None, hidden_size=None)


def test_rank_pattern_gives_those_modules_their_rank_at_the_same_scale_and_the_adapter_records_it(tiny_model, tmp_path) -> None:
    lora = load_config("configs/demo.yaml", ["train.lora.r=8", "train.lora.alpha=16", "train.lora.rank_pattern={embed_tokens: 32}"]).train.lora
    ds = zero2_config()
    model, _ = load_model_for_training(str(tiny_model), "lora", lora.r, lora.alpha, lora.dropout, lora.target_modules,
                                       lora.rank_pattern, ds, False, False)
    base = model.get_base_model()
    q = base.model.layers[0].self_attn.q_proj
    embed = base.model.embed_tokens
    assert q.lora_A["default"].weight.shape[0] == 8 and q.scaling["default"] == 2.0
    assert embed.lora_embedding_A["default"].shape[0] == 32 and embed.scaling["default"] == 2.0  # alpha 64 / 32
    model.save_pretrained(tmp_path / "adapter")
    from peft import PeftConfig

    saved = PeftConfig.from_pretrained(tmp_path / "adapter")
    assert saved.rank_pattern == {"embed_tokens": 32} and saved.alpha_pattern == {"embed_tokens": 64}


def test_zero3_lora_keeps_every_lora_matrix_and_norm_whole_and_partitions_the_frozen_weights(tiny_model) -> None:
    """The default ZeRO-3 persistence threshold for LoRA sits between the largest LoRA matrix and
    the smallest frozen weight matrix: what trains is never gathered, what is frozen is sharded."""
    from socrates_ray.train.deepspeed import lora_persistence_threshold

    assert lora_persistence_threshold(16, {}, 5120, 13824) == 16 * 13824 + 1  # Qwen2.5-14B, r 16: 221k elements
    assert lora_persistence_threshold(16, {"o_proj": 64}, 5120, 13824) == 64 * 13824 + 1
    lora = load_config("configs/demo.yaml", ["train.lora.r=8", "train.lora.alpha=16", "train.lora.target_modules=all-linear"]).train.lora
    ds = zero2_config()
    model, _ = load_model_for_training(str(tiny_model), "lora", lora.r, lora.alpha, lora.dropout, lora.target_modules,
                                       lora.rank_pattern, ds, False, False)
    config = model.get_base_model().config
    threshold = lora_persistence_threshold(lora.r, lora.rank_pattern, config.hidden_size, config.intermediate_size)
    trainable = [(n, p.numel()) for n, p in model.named_parameters() if p.requires_grad]
    frozen_matrices = [(n, p.numel()) for n, p in model.named_parameters() if not p.requires_grad and p.dim() == 2]
    norms = [(n, p.numel()) for n, p in model.named_parameters() if "norm" in n]
    assert trainable and all(size < threshold for _, size in trainable + norms), (threshold, trainable)
    assert all(size >= threshold for _, size in frozen_matrices), (threshold, frozen_matrices)


def test_the_model_trains_in_training_mode_from_the_first_step(tiny_model) -> None:
    """from_pretrained returns a model in eval mode; trained as it comes, LoRA dropout is off and
    gradient checkpointing never recomputes (transformers checks `training`) until the first eval
    pass switches the mode. The model training gets is in training mode, and a backward recomputes."""
    import torch

    ds = zero2_config()
    model, _ = load_model_for_training(str(tiny_model), "lora", 8, 16, 0.1, "all-linear", {}, ds, False, True)
    assert all(m.training for m in model.modules())
    mlp = model.get_base_model().model.layers[0].mlp
    calls, forward = [0], mlp.forward

    def counted(*args, **kwargs):
        calls[0] += 1
        return forward(*args, **kwargs)

    mlp.forward = counted
    ids = torch.arange(5, 37).reshape(2, 16)
    model(input_ids=ids, labels=ids).loss.backward()
    assert calls[0] == 2  # the forward, and its recompute in the backward
