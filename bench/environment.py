"""What a result was measured on: device, CPU, versions, git commit; and the device's memory bandwidth."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def node_kind(device_name: str, device: torch.device) -> str:
    """What must match for two timings to be compared: the device model, and for CPUs the usable cores."""
    if device.type == "cuda":
        return device_name
    return f"{device_name} x{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()}"


def describe(device: torch.device) -> dict[str, Any]:
    """The environment record stored in every manifest."""
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {
        "device": str(device),
        "device_name": name,
        "node_kind": node_kind(name, device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "git_commit": git_commit(),
        "hostname": platform.node(),
    }


@functools.cache
def memory_bandwidth(device_name: str = "cpu", megabytes: int = 512, repeats: int = 5) -> float:
    """Measured device memory bandwidth in bytes/s: the best of large-tensor reads (a sum) and copies."""
    device = torch.device(device_name)
    src = torch.ones(megabytes * (1 << 20) // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    nbytes = src.numel() * src.element_size()

    def best_rate(work, moved: int) -> float:
        best = float("inf")
        for _ in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            work()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        return moved / best

    return max(best_rate(src.sum, nbytes), best_rate(lambda: dst.copy_(src), 2 * nbytes))


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes the model's unique parameters and buffers store (tied weights once; quantized tensors by what they
    hold: `core.quant.storage_bytes`)."""
    from core.quant import storage_bytes

    return storage_bytes(model)


def kv_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of KV cache one token occupies (keys and values, every layer), in the model's dtype."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    itemsize = next(model.parameters()).element_size()
    return 2 * cfg.num_hidden_layers * heads * head_dim * itemsize
