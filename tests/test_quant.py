"""`core.quant`: every scheme quantizes every linear layer, stays close to the float model, runs the packing
convention torchao's dequantization defines, decodes, shrinks storage; `check` refuses before loading."""

from __future__ import annotations

import importlib.metadata
import importlib.util

import pytest
import torch
from torch import nn

from core import quant
from core.errors import BenchError
from core.models import LoadedModel
from core.timing import Timer
from methods.ar import Autoregressive
from methods.decode import StopRule
from tests.conftest import CORPUS, make_model

pytestmark = pytest.mark.usefixtures("one_thread")
ao = quant.import_torchao()
primitives = ao.quant_primitives
CUDA = torch.cuda.is_available()
CPU_SCHEMES = ["int8-wo", "int4-wo", "int8-dyn"]
# Relative error of the tiny model's logits (measured: int8-wo 1.1%, int4-wo 17%, int8-dyn 1.4%); a broken
# quantization (wrong scales, transposed groups) is off by 100% or more.
LOGIT_ERROR = {"int8-wo": 0.02, "int4-wo": 0.25, "int8-dyn": 0.03}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def ids(tiny) -> torch.Tensor:
    return torch.tensor([tiny.tokenizer(CORPUS[0] + CORPUS[2])["input_ids"]])


@pytest.mark.parametrize("scheme", CPU_SCHEMES)
def test_logits_stay_close_to_the_float_model(tiny, ids, scheme):
    quantized = quant.quantized_copy(tiny.model, scheme)
    error = relative_error(logits(quantized, ids), logits(tiny.model, ids))
    assert 1e-4 < error < LOGIT_ERROR[scheme], error  # changed (quantized), and close
    assert quantized.quant_record["layers"] == 15  # 2 x 7 in the layers + the LM head


def linear(out_features: int, in_features: int, dtype: torch.dtype, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=True).to(dtype)


def assert_runs_as(module: nn.Module, float_linear: nn.Linear, weight: torch.Tensor) -> None:
    """`module` is `x @ weight.T + bias`: its kernel's weight (read back through an identity input) equals `weight`
    to bf16 precision (the CPU kernels run in bf16), and a bf16 / fp32 input keeps its dtype and leading dims."""
    out_features, in_features = weight.shape
    bias = float_linear.bias.float()
    torch.testing.assert_close(module(torch.eye(in_features)) - bias, weight.T, atol=1e-5, rtol=2**-7)
    dtype = float_linear.weight.dtype
    x = torch.randn(2, 3, in_features).to(dtype)
    got = module(x)
    assert got.dtype == dtype and got.shape == (2, 3, out_features)
    assert relative_error(got, x.float() @ weight.T + bias) < 5e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_equals_dequantize_then_matmul(dtype):
    """The kernel multiplies the int8 rows by their scales, as torchao's dequantization defines; the int8 weights
    are the float weights rounded to a step (within one step of the bf16-rounded scale, half a step on average)."""
    float_linear = linear(40, 96, dtype)
    module = quant.Int8WeightOnlyLinear(float_linear)
    scales = module.scales.float().reshape(-1, 1)
    weight = primitives.dequantize_affine(module.qweight, (1, 96), scales, None, torch.int8, output_dtype=torch.float32)
    error = (weight - float_linear.weight.float()).abs()
    assert (error <= scales).all() and (error.mean(1, keepdim=True) <= scales / 3).all()
    assert_runs_as(module, float_linear, weight)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_linear_equals_dequantize_then_matmul(dtype):
    """The packed weight and the [groups, N, 2] scales and zeros run as torchao's tinygemm dequantization defines
    ((q - 8) * scale + zero); 40 output rows exercise the zero-padding to 48."""
    float_linear = linear(40, 96, dtype)
    module = quant.Int4WeightOnlyLinear(float_linear, group_size=32)
    unpacked = ao.utils.unpack_tinygemm_scales_and_zeros(module.scales_and_zeros)  # [N, groups, 1] each
    scale, zero = (t.squeeze(-1)[:40].float().contiguous() for t in unpacked)
    block, w = (1, 32), float_linear.weight.float()
    q = primitives._quantize_affine_tinygemm(w, block, scale, zero, torch.int32, 0, 15)
    weight = primitives._dequantize_affine_tinygemm(
        q, block, scale, zero, torch.int32, 0, 15, output_dtype=torch.float32
    )
    assert (weight - w).abs().max() <= scale.max() / 2 + 1e-3 and q.min() >= 0 and q.max() <= 15
    assert_runs_as(module, float_linear, weight)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantized_linear_compiles_to_the_same_output(kind):
    """The modules are plain aten ops on buffers: torch.compile traces them whole (aot_eager: the trace without
    inductor's C++ build, seconds)."""
    float_linear = linear(48, 64, torch.float32)
    module = (
        quant.Int8WeightOnlyLinear(float_linear) if kind == "int8" else quant.Int4WeightOnlyLinear(float_linear, 32)
    )
    x = torch.randn(2, 3, 64)
    torch._dynamo.reset()
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), module(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scheme", CPU_SCHEMES)
def test_greedy_decoding_runs_on_a_quantized_model(tiny, scheme, dtype):
    model = quant.quantized_copy(make_model(len(tiny.tokenizer), eos=None).to(dtype), scheme)
    loaded = LoadedModel(model, tiny.tokenizer, {"spec": "tiny", "dtype": str(dtype)})
    prompt = tiny.tokenizer(CORPUS[1])["input_ids"]
    tokens = Autoregressive(loaded, None).generate(prompt, StopRule(8), Timer()).tokens
    assert len(tokens) == 8 and all(0 <= t < len(tiny.tokenizer) for t in tokens)


def linear_stack(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 128, bias=False), nn.Linear(128, 256, bias=False)).to(dtype)


@pytest.mark.parametrize(
    ("scheme", "dtype", "low", "high"),
    [
        ("int8-wo", torch.float32, 3.8, 4.0),  # 1 byte a weight + one bf16 scale a row
        ("int8-wo", torch.bfloat16, 1.9, 2.0),
        ("int4-wo", torch.bfloat16, 3.5, 4.0),  # half a byte + a bf16 scale and zero per 128 weights
        ("int8-dyn", torch.float32, 3.8, 4.0),  # torchao's Int8Tensor, counted by its inner tensors
    ],
)
def test_storage_bytes_shrink(scheme, dtype, low, high):
    model = linear_stack(dtype)
    record = quant.quantize(model, scheme)
    assert record["bytes_before"] == 2 * 256 * 128 * dtype.itemsize
    assert low < record["bytes_before"] / record["bytes_after"] < high
    assert record["bytes_after"] == quant.storage_bytes(model)


def test_storage_bytes_counts_tied_weights_once():
    model = linear_stack(torch.float32)
    alone = quant.storage_bytes(model)
    model[1].weight = nn.Parameter(model[0].weight.T)  # a view of the same storage
    assert quant.storage_bytes(model) == alone // 2


def tied_model(vocab: int) -> nn.Module:
    model = make_model(vocab)
    model.lm_head.weight = model.model.embed_tokens.weight
    return model


@pytest.mark.parametrize("scheme", CPU_SCHEMES)
def test_quantized_copy_leaves_the_original_untouched(tiny, ids, scheme):
    """The original keeps its float linears and outputs; the copy shares no storage with it (the tied embedding
    keeps a float weight of its own, the LM head is quantized)."""
    model = tied_model(len(tiny.tokenizer))
    before = logits(model, ids)
    copied = quant.quantized_copy(model, scheme)
    assert torch.equal(logits(model, ids), before)
    float_linears = [m for m in model.modules() if type(m) is nn.Linear and type(m.weight) is nn.Parameter]
    assert len(float_linears) == 15
    assert model.lm_head.weight is model.model.embed_tokens.weight
    theirs = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    ours = {p.untyped_storage().data_ptr() for t in (*copied.parameters(), *copied.buffers()) for p in quant._stored(t)}
    assert not theirs & ours
    assert torch.equal(copied.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert relative_error(logits(copied, ids), before) < LOGIT_ERROR[scheme]


def test_group_size_falls_back_to_what_divides_every_layer():
    assert quant.quantize(linear_stack(torch.float32), "int4-wo")["group_size"] == 128
    assert quant.quantize(nn.Sequential(nn.Linear(576, 32), nn.Linear(32, 16)), "int4-wo")["group_size"] == 32
    assert quant.quantize(nn.Sequential(nn.Linear(576, 64), nn.Linear(64, 16)), "int4-wo")["group_size"] == 64
    with pytest.raises(BenchError, match="no group size"):
        quant.quantize(nn.Sequential(nn.Linear(100, 16)), "int4-wo")


def test_record_names_scheme_library_group_and_kernel(tiny):
    record = quant.quantized_copy(tiny.model, "int4-wo").quant_record
    assert record["scheme"] == "int4-wo" and record["library"] == f"torchao {importlib.metadata.version('torchao')}"
    assert record["group_size"] == 64  # the tiny model's 64-wide layers: 128 does not divide them
    assert "aten._weight_int4pack_mm_for_cpu" in record["kernel"] and record["granularity"] == "per-group"
    assert record["bytes_after"] < record["bytes_before"]
    assert quant.quantize(tiny.model, "none") == {"scheme": "none"}  # and nothing changed
    assert all(type(m) is not quant.Int4WeightOnlyLinear for m in tiny.model.modules())


@pytest.mark.parametrize(
    ("scheme", "device", "dtype", "message"),
    [
        ("int3", "cpu", torch.float32, "unknown quantization scheme 'int3' .choose from none, int8-wo, int4-wo"),
        ("int4-wo", "cuda", torch.float32, "int4-wo on cuda needs bfloat16"),
        ("int8-wo", "mps", torch.float16, "no kernel on device mps"),
        ("int8-dyn", torch.device("meta"), torch.float32, "no kernel on device meta"),
    ],
)
def test_check_refuses_in_one_line(scheme, device, dtype, message):
    with pytest.raises(BenchError, match=message) as err:
        quant.check(scheme, device, dtype)
    assert "\n" not in str(err.value)


def test_check_accepts_cpu_schemes_and_asks_for_torchao(monkeypatch):
    for scheme in quant.SCHEMES:
        for dtype in (torch.float32, torch.bfloat16):
            quant.check(scheme, "cpu", dtype)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    quant.check("none", "cpu", torch.float32)
    with pytest.raises(BenchError, match="needs torchao: pip install torchao"):
        quant.check("int8-wo", "cpu", torch.float32)


@pytest.mark.parametrize("scheme", CPU_SCHEMES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="CUDA is not available on this machine")
def test_cuda_schemes_through_quantize_(tiny, ids, scheme, dtype):
    """torchao's configs on CUDA: every linear becomes a torchao tensor, logits stay close, the record names the
    CUDA kernel (int4-wo: bfloat16 only, refused in fp32 by `check`)."""
    model = make_model(len(tiny.tokenizer)).to("cuda", dtype)
    if scheme == "int4-wo" and dtype != torch.bfloat16:
        with pytest.raises(BenchError, match="needs bfloat16"):
            quant.quantized_copy(model, scheme)
        return
    want = logits(model, ids.cuda())
    copied = quant.quantized_copy(model, scheme)
    record = copied.quant_record
    assert record["layers"] == 15 and record["kernel"] == quant.KERNELS["cuda", scheme]
    if scheme != "int4-wo":  # the tile-packed layout pads the tiny model's 64-wide layers to 1024
        assert record["bytes_after"] < record["bytes_before"] / (1.5 if dtype == torch.bfloat16 else 3)
    assert relative_error(logits(copied, ids.cuda()), want) < LOGIT_ERROR[scheme]


@pytest.mark.parametrize("scheme", ["int8-wo", "int4-wo"])
def test_non_contiguous_bf16_rows(scheme):
    """A batch's activations can arrive as a non-contiguous view; in bf16 no cast copies them (the int4 kernel
    refuses such rows)."""
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Linear(256, 64, bias=False)).to(torch.bfloat16)
    quantized = quant.quantized_copy(linear, scheme)
    x = torch.randn(8, 4, 256, dtype=torch.bfloat16).transpose(0, 1)
    assert not x.is_contiguous()
    assert torch.equal(quantized(x), quantized(x.contiguous()))
