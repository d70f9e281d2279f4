"""quant.qat.modules and quant.qat.swap: fake-quantized wrappers and swapping them in."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("torch")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from quant.errors import CalibrationError, UsageError  # noqa: E402
from quant.qat.calibrate import quantization_disabled  # noqa: E402
from quant.qat.modules import (  # noqa: E402
    MIN_AMAX,
    ActQuantizer,
    Add,
    QuantAdd,
    QuantConv1d,
    QuantConv2d,
    QuantConv3d,
    QuantConvTranspose2d,
    QuantLinear,
    fake_quant_weight,
)
from quant.qat.swap import amax_dict, quantize_model, quantizers  # noqa: E402

pytestmark = pytest.mark.torch


def _calibrate_all(model: nn.Module, amax: float = 2.0) -> None:
    for q in quantizers(model).values():
        q.set_amax(amax)


def test_act_quantizer_rounds_to_the_symmetric_int8_grid_and_clips() -> None:
    q = ActQuantizer()
    q.set_amax(1.27)  # scale 0.01
    x = torch.tensor([0.0, 0.004, 0.006, -0.5, 2.0, -2.0])
    y = q(x)
    torch.testing.assert_close(y, torch.tensor([0.0, 0.0, 0.01, -0.5, 1.27, -1.28]))


def test_act_quantizer_straight_through_gradient_inside_range_zero_outside() -> None:
    q = ActQuantizer()
    q.set_amax(1.0)
    x = torch.tensor([0.3, -0.7, 5.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, torch.tensor([1.0, 1.0, 0.0]))


def test_uncalibrated_quantizer_raises_naming_it() -> None:
    model: Any = quantize_model(nn.Sequential(nn.Linear(4, 2)))
    with pytest.raises(CalibrationError, match=r"quantizer '0.input_quantizer' has no amax"):
        model(torch.zeros(1, 4))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_set_amax_rejects_non_finite_or_negative(bad: float) -> None:
    with pytest.raises(CalibrationError, match="finite non-negative"):
        ActQuantizer().set_amax(bad)


def test_zero_amax_is_raised_to_the_minimum() -> None:
    q = ActQuantizer()
    q.set_amax(0.0)
    assert float(q.amax) == pytest.approx(MIN_AMAX)


def test_weight_fake_quant_is_per_channel_max_and_never_clips() -> None:
    w = torch.randn(6, 3, 3, 3)
    w[2] *= 100  # one large channel must not coarsen the others
    wq = fake_quant_weight(w, 0)
    scale = w.abs().amax(dim=(1, 2, 3)) / 127
    levels = wq / scale.view(-1, 1, 1, 1)
    torch.testing.assert_close(levels, levels.round(), atol=1e-3, rtol=0)
    assert torch.all((wq - w).abs() <= scale.view(-1, 1, 1, 1) / 2 + 1e-6)
    torch.testing.assert_close(wq.abs().amax(dim=(1, 2, 3)), w.abs().amax(dim=(1, 2, 3)))


def test_weight_gradient_is_straight_through() -> None:
    qmodel: Any = quantize_model(nn.Sequential(nn.Linear(3, 2)))
    lin = qmodel[0]
    lin.input_quantizer.set_amax(10.0)
    x = torch.randn(5, 3)
    lin(x).sum().backward()
    # d(sum(xq @ wq.T))/dw = sum of the quantized inputs, as if the weight were not quantized
    xq = lin.input_quantizer(x)
    torch.testing.assert_close(lin.weight.grad, xq.sum(0).expand(2, 3))


def test_conv_transpose_quantizes_weights_along_axis_1() -> None:
    base = nn.ConvTranspose2d(3, 5, 2, stride=2)
    qm = QuantConvTranspose2d.from_float(base)
    w = qm.quant_weight()
    scale = base.weight.detach().abs().amax(dim=(0, 2, 3)) / 127
    levels = w.detach() / scale.view(1, -1, 1, 1)
    torch.testing.assert_close(levels, levels.round(), atol=1e-3, rtol=0)


@pytest.mark.parametrize(
    ("float_mod", "wrapper", "shape"),
    [
        (nn.Conv1d(2, 4, 3, padding=1), QuantConv1d, (2, 2, 9)),
        (nn.Conv2d(2, 4, 3, stride=2, groups=2), QuantConv2d, (2, 2, 9, 9)),
        (nn.Conv3d(2, 4, 3, dilation=1, bias=False), QuantConv3d, (2, 2, 5, 5, 5)),
        (nn.ConvTranspose2d(2, 4, 3, stride=2, output_padding=1), QuantConvTranspose2d, (2, 2, 5, 5)),
        (nn.Linear(6, 3), QuantLinear, (4, 6)),
    ],
)
def test_wrappers_match_the_float_module_with_quantization_off_and_share_parameters(
    float_mod: nn.Module, wrapper: type[nn.Module], shape: tuple[int, ...]
) -> None:
    q: Any = wrapper.from_float(float_mod)  # type: ignore[attr-defined]
    assert type(float_mod) in type(q).__mro__  # still the float type
    assert q.weight is float_mod.weight
    x = torch.randn(*shape)
    with quantization_disabled(q):
        torch.testing.assert_close(q(x), float_mod(x))
    q.input_quantizer.set_amax(float(x.abs().max()))
    y = q(x)
    assert y.shape == float_mod(x).shape
    assert not torch.equal(y, float_mod(x))  # quantized for real
    assert set(q.state_dict()) == set(float_mod.state_dict()) | {"input_quantizer.amax"}


def test_quant_add_quantizes_both_inputs() -> None:
    add = QuantAdd.from_float(Add())
    add.input_quantizer.set_amax(1.27)
    add.other_quantizer.set_amax(12.7)
    a, b = torch.tensor([0.004]), torch.tensor([0.04])
    torch.testing.assert_close(add(a, b), torch.tensor([0.0]))


def test_quantize_model_swaps_by_type_and_returns_a_new_model() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    q: Any = quantize_model(model)
    assert isinstance(q[0], QuantConv2d) and isinstance(q[3], QuantLinear)
    assert type(model[0]) is nn.Conv2d and type(model[3]) is nn.Linear  # original untouched
    assert q[0].weight is not model[0].weight
    assert sorted(quantizers(q)) == ["0.input_quantizer", "3.input_quantizer"]
    assert q[0].input_quantizer.qualified_name == "0.input_quantizer"
    assert type(nn.Conv2d(1, 1, 1)) is nn.Conv2d  # torch.nn itself is not patched


def test_include_and_exclude_wildcards() -> None:
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 1)))
    model.add_module("head", nn.Linear(2, 2))
    q: Any = quantize_model(model, exclude=["head"])
    assert set(quantizers(q)) == {"features.0.input_quantizer", "features.1.input_quantizer"}
    q = quantize_model(model, include=["features.*"], exclude=["*.1"])
    assert set(quantizers(q)) == {"features.0.input_quantizer"}


def test_subclasses_are_not_swapped() -> None:
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(MyConv(1, 1, 1), nn.Conv2d(1, 1, 1))
    q: Any = quantize_model(model)
    assert type(q[0]) is MyConv and isinstance(q[1], QuantConv2d)


def test_quantize_model_errors() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(UsageError, match=r"exclude pattern 'lienar' matches no quantizable module; .* are: 0"):
        quantize_model(model, exclude=["lienar"])
    with pytest.raises(UsageError, match="no module to quantize"):
        quantize_model(model, exclude=["*"])
    with pytest.raises(UsageError, match="not a string"):
        quantize_model(model, include="0")
    with pytest.raises(UsageError, match="already contains quant.qat wrappers"):
        quantize_model(quantize_model(model))
    with pytest.raises(UsageError, match="no module to quantize"):
        quantize_model(nn.Sequential(nn.ReLU()))
    with pytest.raises(UsageError, match="bare Linear"):
        quantize_model(nn.Linear(2, 2))


def test_amax_dict_reports_uncalibrated_as_none() -> None:
    q: Any = quantize_model(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
    q[0].input_quantizer.set_amax(3.0)
    assert amax_dict(q) == {"0.input_quantizer": 3.0, "1.input_quantizer": None}
