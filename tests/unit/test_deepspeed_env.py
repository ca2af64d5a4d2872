"""DeepSpeed environment fixes. normalize_cuda_arch_list: the JIT op builder (FusedAdam, every GPU
training run) fails on the arch-specific TORCH_CUDA_ARCH_LIST entries Hopper images set ("9.0a");
seen on an H100. skip_inference_comm_op: no shm op build on CPU."""

import pytest

from socrates_ray.train.deepspeed import normalize_cuda_arch_list


@pytest.mark.parametrize(
    ("value", "fixed"),
    [("9.0a", "9.0"), ("8.0;9.0a+PTX", "8.0;9.0+PTX"), ("9.0 10.0a", "9.0 10.0"), ("8.6;9.0", None), ("", None)],
)
def test_arch_specific_suffixes_are_dropped(value, fixed):
    env = {"TORCH_CUDA_ARCH_LIST": value}
    assert normalize_cuda_arch_list(env) == fixed
    assert env["TORCH_CUDA_ARCH_LIST"] == (fixed if fixed is not None else value)


def test_unset_is_left_alone():
    env = {}
    assert normalize_cuda_arch_list(env) is None and env == {}


def test_deepspeeds_own_builder_accepts_the_result(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    from deepspeed.ops.op_builder.fused_adam import FusedAdamBuilder

    builder = FusedAdamBuilder()
    builder.jit_mode = True
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0a")
    with pytest.raises(ValueError, match="0a"):  # the failure this guards against, from DeepSpeed itself
        builder.compute_capability_args()
    import os

    normalize_cuda_arch_list(os.environ)
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "9.0"
    builder.compute_capability_args()  # no error


def test_training_on_cpu_skips_deepspeeds_inference_only_shm_op(monkeypatch) -> None:
    """DeepSpeed's TorchBackend JIT-builds deepspeed_shm_comm on CPU (33 s per new venv path); only
    inference_all_reduce uses it. The skip must patch deepspeed.comm.torch, not `deepspeed.comm.torch`
    the attribute (which is PyTorch): a first version did, and the op kept building."""
    import importlib

    from socrates_ray.train.deepspeed import skip_inference_comm_op

    backend = importlib.import_module("deepspeed.comm.torch")
    monkeypatch.setattr(backend, "build_shm_op", backend.build_shm_op)  # restored after the test
    skip_inference_comm_op()
    assert backend.build_shm_op() is None
