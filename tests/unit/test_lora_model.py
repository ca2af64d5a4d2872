"""The model training starts from: LoRA with per-module ranks (train.lora.rank_pattern)."""

from __future__ import annotations

from socrates_ray.config import load_config
from socrates_ray.train.deepspeed import build_ds_config
from socrates_ray.train.model import load_model_for_training


def test_rank_pattern_gives_those_modules_their_rank_at_the_same_scale_and_the_adapter_records_it(tiny_model, tmp_path) -> None:
    lora = load_config("configs/demo.yaml", ["train.lora.r=8", "train.lora.alpha=16", "train.lora.rank_pattern={embed_tokens: 32}"]).train.lora
    ds = build_ds_config(zero_stage=2, offload_optimizer=False, offload_params=False, bf16=False, micro_batch_size=2,
                         grad_accum=1, world_size=1, lr=1e-3, weight_decay=0.0, grad_clip=1.0, warmup_steps=0,
                         total_steps=10, on_gpu=False, persistence_threshold=None, hidden_size=None)
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
