"""Which number format a model computes in: bf16 where the hardware multiplies it natively, else fp32.

`auto` (every precision setting's default) picks bf16 on a GPU and on CPUs with native bf16 matrix
instructions (Intel AMX or AVX512-BF16: Sapphire Rapids and later, recent EPYCs), where it runs
faster for training and scoring (BENCHMARKS.md has the figures); fp32 elsewhere, where bf16 would be
emulated and slower than fp32.
"""

from __future__ import annotations

from typing import Literal

Precision = Literal["auto", "bf16", "fp32"]


def cpu_has_native_bf16() -> bool:
    """True when this machine's CPU multiplies bf16 matrices in hardware (AMX tiles or AVX512-BF16)."""
    import torch

    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # a torch build without these probes: assume emulation
        return False


def resolve_precision(setting: Precision, on_gpu: bool) -> Literal["bf16", "fp32"]:
    """The format to run in on this machine for a precision setting."""
    if setting != "auto":
        return setting
    return "bf16" if on_gpu or cpu_has_native_bf16() else "fp32"


def engine_precision(precision: str | None, device: str) -> Literal["bf16", "fp32"]:
    """An inference engine's number format: the one asked for, else the device's default (bf16 on
    CUDA, fp32 on CPU; config-driven callers pass resolve_precision's choice)."""
    if precision is not None:
        return "bf16" if precision == "bf16" else "fp32"
    return "bf16" if device.startswith("cuda") else "fp32"
