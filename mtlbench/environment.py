"""The environment a run is recorded with: device, library versions, git commit."""

from __future__ import annotations

import platform
import socket
import subprocess
from functools import lru_cache
from pathlib import Path

import torch
import torchvision

import mtlbench
from mtlbench.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` = the first CUDA device if there is one, else the CPU; an unavailable device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN has bf16 kernels on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def check_amp(device: torch.device, amp: bool) -> None:
    """Refuse bf16 autocast on a CPU without native bf16: it is emulated there, and a ResNet-18 step runs about 30x
    slower than in float32 (2.6 against 78 img/s on a 2-core AVX2 CPU), which a sweep should not discover late."""
    if amp and device.type == "cpu" and not cpu_has_native_bf16():
        cap = torch.backends.cpu.get_cpu_capability()
        raise ConfigError(f"protocol.amp: this CPU ({cap}) has no native bf16, so bf16 autocast would run about "
                          "30x slower than float32; drop --amp / amp = true, or run on CUDA")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict[str, str | None]:
    from mtlbench.libmtl_compat import LIBMTL_VERSION

    return {"device": device_name(device), "torch_version": torch.__version__,
            "torchvision_version": torchvision.__version__, "libmtl_version": LIBMTL_VERSION,
            "python_version": platform.python_version(), "mtlbench_version": mtlbench.__version__,
            "git_commit": git_commit(), "hostname": socket.gethostname()}
