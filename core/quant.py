"""Weight quantization of a model's linear layers (`--quant`, `--draft-quant`), with torchao.

CPU: torchao's quantization primitives compute the int8 / int4 weights, PyTorch's CPU kernels run the matmul
(`aten._weight_int8pack_mm`, and tinygemm's `aten._weight_int4pack_mm_for_cpu`, as gpt-fast does on CPU: torchao 0.18
has no CPU int4 layout); int8 dynamic activations go through torchao's `quantize_`. CUDA: torchao's `quantize_` configs.
`check` refuses a scheme with no kernel on the device before any model loads.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import logging
import warnings
from collections.abc import Iterator
from itertools import chain
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from core.errors import BenchError
from core.schemes import NOISY_LOGGERS, SCHEMES

DEVICES = ("cpu", "cuda")
# int4 groups: torchao / gpt-fast's 128, else the largest that divides every in_features (torchao's quantize_ leaves a
# layer whose in_features its group size does not divide in float)
GROUP_SIZES = (128, 64, 32)
INT4_ROWS = 16  # the CPU int4 packing needs out_features divisible by 16: rows are zero-padded up to it
# The CPU kernels run in bfloat16 whatever the model's dtype, as torchao's CPU int4 linear does (its `precision`): their
# float32 and float16 paths are scalar (one 1536x8960 row: int4 60 ms, int8 25 ms in fp32; 0.36 / 0.49 ms in bf16).
CPU_COMPUTE = torch.bfloat16
KERNELS = {
    ("cpu", "int8-wo"): "aten._weight_int8pack_mm, bfloat16 activations",
    ("cpu", "int4-wo"): "aten._weight_int4pack_mm_for_cpu (tinygemm), bfloat16 activations",
    ("cpu", "int8-dyn"): "aten._int_mm eager, per-token int8 activations (torchao Int8Tensor)",
    ("cuda", "int8-wo"): "aten.mm on int8 weights cast to the activation dtype (torchao Int8Tensor)",
    ("cuda", "int4-wo"): "aten._weight_int4pack_mm (tinygemm, torchao Int4TilePackedTo4dTensor)",
    ("cuda", "int8-dyn"): "int8 GEMM (torchao safe_int_mm, cuBLAS), per-token int8 activations (torchao Int8Tensor)",
}
GRANULARITY = {"int8-wo": "per-row", "int4-wo": "per-group", "int8-dyn": "per-row weights, per-token activations"}


def check(scheme: str, device: torch.device | str, dtype: torch.dtype) -> None:
    """Refuse, in one line, a scheme that is unknown, needs a missing torchao, or has no kernel for device and dtype.

    Cheap (imports nothing): it runs before any model loads.
    """
    if scheme not in SCHEMES:
        raise BenchError(f"unknown quantization scheme {scheme!r} (choose from {', '.join(SCHEMES)})")
    if scheme == "none":
        return
    try:
        kind = torch.device(device).type
    except RuntimeError as err:
        raise BenchError(f"quantization {scheme}: unknown device {device!r}") from err
    if kind not in DEVICES:
        raise BenchError(f"quantization {scheme} has no kernel on device {kind} (cpu and cuda only)")
    if importlib.util.find_spec("torchao") is None:
        raise BenchError(f"quantization {scheme} needs torchao: pip install torchao")
    if kind == "cuda" and scheme == "int4-wo":
        if dtype != torch.bfloat16:
            raise BenchError(
                f"quantization int4-wo on cuda needs bfloat16 weights (torchao's tinygemm layout), not {dtype}"
            )
        if torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] < 8:
            raise BenchError("quantization int4-wo on cuda needs compute capability 8.0 or newer (tinygemm)")


def import_torchao() -> ModuleType:
    """torchao's quantization package, imported with its CPU-build noise silenced (CUDA extension libraries that
    fail to load, pytree deprecation warnings), so a run prints one clean log.

    transformers imports torchao itself (its torchao quantizer) when torchao is installed: call this first.
    """
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchao.prototype.safetensors.safetensors_support  # noqa: F401  (what transformers imports)
            import torchao.quantization
            import torchao.quantization.utils  # noqa: F401  (pack_tinygemm_scales_and_zeros)
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    return torchao.quantization


class Int8WeightOnlyLinear(nn.Module):
    """A linear layer with symmetric int8 weights, one bf16 scale per output channel: `aten._weight_int8pack_mm` in
    bfloat16, the output in the input's dtype."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        ao = import_torchao()
        primitives = ao.quant_primitives
        weight = linear.weight.detach().float()
        self.out_features, self.in_features = weight.shape
        block = (1, self.in_features)
        scale, zero = primitives.choose_qparams_affine(
            weight, primitives.MappingType.SYMMETRIC, block, torch.int8, zero_point_dtype=torch.int8
        )
        scale = scale.reshape(-1).to(CPU_COMPUTE)  # rounded first, so that the int8 weights are rounded against it
        qweight = primitives.quantize_affine(weight, block, scale.float().reshape(-1, 1), zero, torch.int8)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scale)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(CPU_COMPUTE).contiguous()
        y = torch.ops.aten._weight_int8pack_mm(rows, self.qweight, self.scales).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)


class Int4WeightOnlyLinear(nn.Module):
    """A linear layer with asymmetric uint4 weight groups in tinygemm's convention (w ~ (q - 8) * scale + zero, bf16
    scales and zeros): `aten._weight_int4pack_mm_for_cpu` in bfloat16, the output in the input's dtype."""

    def __init__(self, linear: nn.Linear, group_size: int) -> None:
        super().__init__()
        ao = import_torchao()
        primitives = ao.quant_primitives
        self.out_features, self.in_features = linear.weight.shape
        self.group_size = group_size
        rows = -self.out_features % INT4_ROWS
        weight = nn.functional.pad(linear.weight.detach().float(), (0, 0, 0, rows))
        block = (1, group_size)
        scale, zero = primitives._choose_qparams_affine_tinygemm(
            weight, primitives.MappingType.ASYMMETRIC, block, torch.int32, 0, 15, 1e-6, CPU_COMPUTE, CPU_COMPUTE
        )
        scale, zero = scale.reshape(len(weight), -1), zero.reshape(len(weight), -1)
        # rounded against the stored scales and zeros, in float32: as the kernel dequantizes
        q = primitives._quantize_affine_tinygemm(weight, block, scale.float(), zero.float(), torch.int32, 0, 15)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        self.register_buffer("qweight", packed)
        self.register_buffer("scales_and_zeros", ao.utils.pack_tinygemm_scales_and_zeros(scale, zero, CPU_COMPUTE))
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(CPU_COMPUTE).contiguous()  # the kernel takes contiguous rows only
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.qweight, self.group_size, self.scales_and_zeros)
        if y.shape[-1] != self.out_features:  # zero-padded rows
            y = y[:, : self.out_features]
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)


def _linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and name]
    if not found:
        raise BenchError("quantization: the model has no nn.Linear layer to quantize")
    return found


def _group_size(linears: list[tuple[str, nn.Linear]]) -> int:
    """128 when it divides every linear's in_features, else the largest of 64, 32 that does."""
    for size in GROUP_SIZES:
        if all(m.in_features % size == 0 for _, m in linears):
            return size
    widths = sorted({m.in_features for _, m in linears})
    raise BenchError(f"quantization int4-wo: no group size in {GROUP_SIZES} divides every in_features {widths}")


def _config(scheme: str, ao: ModuleType, group: int | None) -> Any:
    """torchao's config for `scheme`; inductor's global settings are left alone (the unquantized lanes of a run
    compile under the same settings)."""
    if scheme == "int8-wo":
        return ao.Int8WeightOnlyConfig(set_inductor_config=False)
    if scheme == "int4-wo":
        return ao.Int4WeightOnlyConfig(
            group_size=group, int4_packing_format="tile_packed_to_4d", set_inductor_config=False
        )
    return ao.Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)


def quantize(model: nn.Module, scheme: str) -> dict[str, Any]:
    """Quantize every `nn.Linear` of `model` in place (the LM head too; a tied input embedding keeps its own float
    weight) and return the record a run's manifest stores."""
    if scheme == "none":
        return {"scheme": "none"}
    linears = _linears(model)
    device, dtype = linears[0][1].weight.device, linears[0][1].weight.dtype
    check(scheme, device, dtype)
    before = storage_bytes(model)
    ao = import_torchao()
    group = _group_size(linears) if scheme == "int4-wo" else None
    if device.type == "cuda" or scheme == "int8-dyn":
        ao.quantize_(model, _config(scheme, ao, group))
        layers = sum(is_traceable_wrapper_subclass(m.weight) for _, m in linears)
    else:
        names = [name for name, _ in linears]
        del linears  # keep no replaced layer alive: each float weight goes as soon as its layer is quantized
        for name in names:
            path, _, child = name.rpartition(".")
            owner = model.get_submodule(path)
            float_linear = getattr(owner, child)
            new = Int4WeightOnlyLinear(float_linear, group) if group else Int8WeightOnlyLinear(float_linear)
            setattr(owner, child, new)
        layers = len(names)
    return {
        "scheme": scheme,
        "library": f"torchao {importlib.metadata.version('torchao')}",
        "kernel": KERNELS[device.type, scheme],
        "group_size": group,
        "granularity": GRANULARITY[scheme],
        "layers": layers,
        "bytes_before": before,
        "bytes_after": storage_bytes(model),
    }


def _stored(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    """The plain tensors holding `tensor`'s data: a torchao subclass's inner tensors (`__tensor_flatten__`)."""
    if is_traceable_wrapper_subclass(tensor):
        for name in tensor.__tensor_flatten__()[0]:
            inner = getattr(tensor, name)
            if inner is not None:
                yield from _stored(inner)
    else:
        yield tensor


def storage_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers: quantized tensors by their inner tensors, every storage
    once (tied weights, views)."""
    seen, total = set(), 0
    for tensor in chain(model.parameters(), model.buffers()):
        for plain in _stored(tensor):
            storage = plain.untyped_storage()
            key = (plain.device, storage.data_ptr())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
    return total


def quantized_copy(model: nn.Module, scheme: str) -> nn.Module:
    """A quantized copy of `model`, which stays untouched; the record is the copy's `quant_record` attribute.

    The copy starts out sharing the original's linear weights (never two float copies of them), quantizes them into
    its own buffers, then clones whatever it still shares (biases, a tied embedding), so the two are independent.
    """
    shared = {id(p): p for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False)}
    twin = copy.deepcopy(model, memo=dict(shared))
    record = quantize(twin, scheme)
    clones: dict[int, nn.Parameter] = {}
    for module in twin.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if id(param) in shared:
                if id(param) not in clones:
                    clones[id(param)] = nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad)
                setattr(module, name, clones[id(param)])
    twin.quant_record = record
    return twin
