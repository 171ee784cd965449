"""The quantization scheme names (`--quant`, `--draft-quant`) and the quieting of torchao's import-time noise:
importable without torch, so the CLI's help stays fast. The schemes themselves: `core.quant`."""

from __future__ import annotations

import logging

SCHEMES = ("none", "int8-wo", "int4-wo", "int8-dyn")
NOISY_LOGGERS = ("torchao", "torch.utils._pytree")  # a CPU build's missing CUDA libraries, pytree deprecations


def quiet_torchao() -> None:
    """Silence torchao's import-time noise for the whole process without importing it: transformers imports
    torchao itself when it is installed, before `core.quant.import_torchao` could."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
