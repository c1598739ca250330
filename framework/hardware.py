"""What the machine a run uses can do: the facts ``precision: auto`` and the benchmarks report."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Hardware:
    """What the precision choice depends on, for one device."""

    device_type: str  # cpu | cuda
    name: str  # "this CPU (AVX2)", "NVIDIA H100 80GB HBM3"
    native_bf16: bool  # bf16 arithmetic in hardware (for a GPU: torch.cuda.is_bf16_supported)


def cpu_capability() -> str:
    """The vector instruction set PyTorch's CPU kernels use here (``AVX2``, ``AVX512``, ...)."""
    return torch.backends.cpu.get_cpu_capability()


def cpu_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AMX or AVX512-BF16) and PyTorch and oneDNN
    may use it: an ``ATEN_CPU_CAPABILITY`` or ``ONEDNN_MAX_CPU_ISA`` that caps them below
    AVX-512 (an emulated AVX2 machine) counts as no."""
    if not cpu_capability().startswith("AVX512"):
        return False
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if isa not in ("ALL", "DEFAULT") and not ("AMX" in isa or "BF16" in isa):
        return False
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def hardware(device: torch.device) -> Hardware:
    """Probe the device a run trains on."""
    if device.type == "cuda":
        return Hardware("cuda", torch.cuda.get_device_name(device), torch.cuda.is_bf16_supported(including_emulation=False))
    return Hardware("cpu", f"this CPU ({cpu_capability()})", cpu_native_bf16())


def cpu_model() -> str:
    """The CPU's model name, as ``lscpu`` shows it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The facts a speed figure depends on, printed and saved beside it."""
    return {
        "cpu": cpu_model(),
        "cpu_capability": cpu_capability(),
        "native_bf16": cpu_native_bf16(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }
