"""Linear-layer kernels for small-M forwards: what a verification step (2-64 query rows) multiplies with.

A batch-1 step is memory bound, so a forward of a few query tokens should cost what a forward of one costs. On
CPUs the stock path (`aten`: `F.linear`, MKL's GEMM) does not: on an AMD EPYC the LM head of smollm2 takes 2-3x
longer for 2-16 rows than for one. `onednn` replaces every `nn.Linear` with oneDNN's linear on a weight reordered
once into its blocked layout (what inductor's freezing pass does on CPU), which streams the weights once for any
small M. Which one a machine wants is measured (`bench profile --kernels`), never assumed.
"""

from __future__ import annotations

import torch

from core.errors import BenchError

KERNELS = ("aten", "onednn")


class OneDNNLinear(torch.nn.Module):
    """`nn.Linear` on a oneDNN-reordered copy of its weight (CPU only). The original weight stays a parameter
    (tied embeddings keep reading it); the packed copy is a plain attribute, outside `parameters()`."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)
        self.original = (linear,)  # a tuple: not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def check(name: str, device: torch.device | str) -> None:
    """Refuse (BenchError) a kernel name that is unknown or has no implementation on `device`."""
    if name not in KERNELS:
        raise BenchError(f"unknown kernels {name!r}; choose one of {', '.join(KERNELS)}")
    if name == "onednn" and torch.device(device).type != "cpu":
        raise BenchError(f"--kernels onednn runs on CPU only, not on {device}")
    if name == "onednn" and not torch.backends.mkldnn.is_available():
        raise BenchError("--kernels onednn needs a torch build with oneDNN (torch.backends.mkldnn)")


def apply(model: torch.nn.Module, name: str) -> int:
    """Switch every linear layer of `model` to kernel `name` (`aten` restores stock ones), in place; returns how
    many layers changed."""
    check(name, next(model.parameters()).device)
    swaps = [(parent, child_name, child) for parent in model.modules() for child_name, child in parent.named_children()
             if isinstance(child, (torch.nn.Linear, OneDNNLinear))]  # fmt: skip
    changed = 0
    for parent, child_name, child in swaps:
        if name == "onednn" and type(child) is torch.nn.Linear:
            setattr(parent, child_name, OneDNNLinear(child))
        elif name == "aten" and isinstance(child, OneDNNLinear):
            setattr(parent, child_name, child.original[0])
        else:
            continue
        changed += 1
    return changed
