"""GPU paths (skipped without CUDA): the GPU check at smoke size, bf16 scoring vs fp32 on CPU,
and a Ray Train run with one GPU worker (NCCL, bf16). The full-size check is
scripts/gpu_check.sh; these keep the same code honest in a GPU CI lane."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_smoke_reports_memory_and_throughput(tmp_path):
    out = tmp_path / "gpu_check.json"
    subprocess.run([sys.executable, "scripts/gpu_check.py", "--preset", "smoke", "--out", str(out)], cwd=REPO, check=True, timeout=600)
    report = json.loads(out.read_text())
    assert [(r["zero_stage"], r["attention"]) for r in report["train"]] == [
        (2, "dense"), (2, "segments"), (2, "varlen"), (3, "segments"), (3, "varlen")]
    for r in report["train"]:
        assert "error" not in r, r
        assert r["tokens_per_s"] > 0 and r["peak_gpu_mib"] > 0 and np.isfinite(r["last_loss"])
        assert r["first_loss_diff_vs_dense"] < 0.05  # bf16: the attention path changes the loss by rounding only
    assert report["score"]["prompts_per_s"] > 0


def test_bf16_gpu_scoring_agrees_with_fp32_cpu(tiny_model):
    from socrates_ray.config import DEFAULT_SYSTEM_PROMPT
    from socrates_ray.infer import TransformersEngine, distributions

    prompts = ["How much do you agree? Only return a number from 1 to 5.", "Rate it. Only return a number from 0 to 10."]
    options = [list(range(1, 6)), list(range(0, 11))]
    cpu = distributions(TransformersEngine(str(tiny_model), DEFAULT_SYSTEM_PROMPT, device="cpu"), prompts, options)
    gpu = distributions(TransformersEngine(str(tiny_model), DEFAULT_SYSTEM_PROMPT, device="cuda"), prompts, options)
    for a, b in zip(cpu, gpu):
        assert abs(b.sum() - 1) < 1e-4 and np.abs(a - b).max() < 0.05


def test_ray_train_one_gpu_worker_bf16(tmp_path, synth_dir, tiny_model, tiny_shape):
    from socrates_ray.cli import main
    from socrates_ray.config import load_config
    from socrates_ray.data.prepare import prepare_options, run_prepare

    prepared = tmp_path / "prepared"
    run_prepare(prepare_options(load_config(None, [f"data.raw={synth_dir}", f"data.prepared={prepared}", "data.parallelism=1", "data.settings=[unseen_studies]"])), log=lambda *_: None)
    assert main([
        "train", "--config", "configs/demo.yaml", "run.name=gpu", f"run.output_dir={tmp_path}", f"train.storage_path={tmp_path}",
        f"data.prepared={prepared}", f"model.path={tiny_model}", *tiny_shape,
        "train.setting=unseen_studies", "train.use_gpu=true", "ingest.num_workers=1", "train.max_steps=4",
        "train.checkpoint_every=2", "train.zero_stage=3", "train.lora.target_modules=all-linear",
    ]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "gpu" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert (tmp_path / "gpu" / "checkpoint_000004" / "export" / "adapter_model.safetensors").stat().st_size > 0


def test_varlen_kernel_equals_one_attention_call_per_example():
    """train.attention=varlen (torch's flash varlen kernel) against segments (one causal SDPA call per
    example) on bf16 packed rows with grouped-query heads: the same outputs and query gradients at
    every example position (padding positions are read by no label)."""
    from types import SimpleNamespace

    from socrates_ray.train.attention import row_segments, segment_attention, varlen_arguments, varlen_attention

    torch.manual_seed(0)
    seq_ids = torch.tensor([[1] * 100 + [2] * 50 + [0] * 6, [1] * 156, [1] * 3 + [2] * 150 + [0] * 3])
    rows, length, dim = seq_ids.shape[0], seq_ids.shape[1], 64
    q = torch.randn(rows, 8, length, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(rows, 2, length, dim, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    module = SimpleNamespace(training=True)
    ours, _ = varlen_attention(module, q, k, v, None, scaling=dim**-0.5, **varlen_arguments(seq_ids, "cuda"))
    (grad_ours,) = torch.autograd.grad(ours.float().square().sum(), q)
    theirs, _ = segment_attention(module, q, k, v, None, scaling=dim**-0.5, packed_segments=row_segments(seq_ids))
    (grad_theirs,) = torch.autograd.grad(theirs.float().square().sum(), q)
    real = (seq_ids > 0).to("cuda")
    assert (ours - theirs).float().abs()[real].max() < 2e-2
    assert (grad_ours - grad_theirs).float().abs().transpose(1, 2)[real].max() < 5e-2
