"""The per-layer report sections: downsampled histograms, worst-layer selection, round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
from layer_fixtures import layer, outlier_stats, stats_of, three_layers

from quant.calibrators.stats import TensorStats
from quant.errors import ReportError
from quant.report.sections import (
    ActivationHistogram,
    HistogramSection,
    LayerSection,
    downsample_histogram,
    histogram_of,
    layer_report_sections,
    read_sections,
)


@pytest.mark.parametrize("absmax", [1.0, 0.75, 0.5000001, 3.3, 1234.5])
def test_downsampled_histogram_is_exact_and_covers_zero_to_absmax(absmax: float) -> None:
    rng = np.random.default_rng(1)
    values = (rng.random(5000) * absmax).astype(np.float32)
    values[0] = np.float32(absmax)
    st = stats_of(values)
    width, counts = downsample_histogram(st, 128)
    assert 64 <= len(counts) <= 128
    assert int(counts.sum()) == st.count == 5000
    # Whole fine bins are merged: the width is a multiple of the fine width ...
    ratio = width / st.bin_width
    assert ratio == round(ratio)
    # ... and the bins reach absmax, overshooting by less than one bin.
    top = width * len(counts)
    assert st.absmax <= top < st.absmax + width
    # Same counts as binning the raw values at the new width (exact merge, not interpolation).
    expected = np.bincount(np.minimum((np.abs(values) / np.float32(st.bin_width)).astype(np.int64), 2047) // int(ratio), minlength=len(counts))
    np.testing.assert_array_equal(counts, expected)


def test_all_zero_tensor_has_one_bin_and_no_width() -> None:
    st = stats_of(np.zeros(100, np.float32))
    width, counts = downsample_histogram(st)
    assert width == 0.0 and counts.tolist() == [100]
    h = histogram_of("z", st, amax=None, method="entropy")
    assert h.bin_width == 0.0 and h.clipped == 0 and h.count == 100


def test_histogram_counts_values_above_amax() -> None:
    values = np.concatenate([np.full(990, 0.5, np.float32), np.full(10, 9.0, np.float32)])
    h = histogram_of("t", stats_of(values), amax=2.0, method="percentile", layers=["conv"])
    assert h.clipped == 10 and math.isclose(h.clipped_fraction, 0.01)
    assert h.amax == 2.0 and h.absmax == 9.0 and h.method == "percentile" and h.layers == ("conv",)
    assert h.edges[0] == 0.0 and len(h.edges) == len(h.counts) + 1
    assert histogram_of("t", stats_of(values), amax=None, method=None).clipped == 0


def test_sections_rank_layers_and_take_the_worst_layers_inputs() -> None:
    errors = three_layers()
    sections = layer_report_sections(
        errors, amax={"conv_b_in": 2.5, "fc_in": 7.0}, stats=outlier_stats(), method="entropy",
        batch_size=8, max_samples=256, data="val/", worst=2,
    )
    layers, hists = read_sections(sections)
    assert layers is not None and hists is not None
    assert [e.layer for e in layers.items] == ["conv_b", "fc", "conv_a"]
    assert layers.num_samples == 256 and layers.batch_size == 8 and layers.data == "val/"
    assert layers.has_local and layers.unavailable is None
    assert [h.tensor for h in hists.items] == ["conv_b_in", "fc_in"]
    b = hists.items[0]
    assert b.layers == ("conv_b",) and b.amax == 2.5 and b.absmax == 500.0
    assert b.clipped >= 1 and sum(b.counts) == b.count == 20_000
    assert hists.unavailable is None and hists.missing == ()
    assert hists.items[1].amax == 7.0


def test_shared_input_is_stored_once_naming_every_worst_consumer() -> None:
    errors = [layer("a", 5.0, 5.0, inputs=("x",)), layer("b", 6.0, 6.0, inputs=("x", "y"), position=1)]
    stats = {"x": stats_of(np.arange(10, dtype=np.float32)), "y": stats_of(np.ones(4, np.float32))}
    _, hists = read_sections(layer_report_sections(errors, amax={}, stats=stats, method=None, batch_size=1, max_samples=1))
    assert hists is not None
    assert [(h.tensor, h.layers) for h in hists.items] == [("x", ("a", "b")), ("y", ("b",))]
    assert hists.items[0].amax is None


def test_missing_statistics_are_listed_and_absent_statistics_explained() -> None:
    errors = three_layers()
    stats = {"conv_a_in": outlier_stats()["conv_a_in"]}
    _, hists = read_sections(layer_report_sections(errors, amax={}, stats=stats, method=None, batch_size=1, max_samples=1))
    assert hists is not None and hists.missing == ("conv_b_in", "fc_in") and len(hists.items) == 1
    _, none = read_sections(layer_report_sections(
        errors, amax={}, stats=None, method=None, batch_size=1, max_samples=1, stats_unavailable="no file 'x'"))
    assert none is not None and none.unavailable == "no file 'x'" and none.items == ()
    _, default = read_sections(layer_report_sections(errors, amax={}, stats=None, method=None, batch_size=1, max_samples=1))
    assert default is not None and default.unavailable


def test_unavailable_layers_say_why_in_both_sections() -> None:
    sections = layer_report_sections(
        [], amax={}, stats=outlier_stats(), method=None, batch_size=8, max_samples=256,
        layers_unavailable="no layer runs in INT8",
    )
    layers, hists = read_sections(sections)
    assert layers is not None and layers.items == () and layers.unavailable == "no layer runs in INT8"
    assert hists is not None and hists.unavailable == "no layer runs in INT8"


def test_sections_round_trip_through_json() -> None:
    import json

    sections = layer_report_sections(
        three_layers(), amax={"conv_b_in": 2.5}, stats=outlier_stats(), method="mse", batch_size=4, max_samples=64,
    )
    again = json.loads(json.dumps(sections))
    layers, hists = read_sections(again)
    assert layers is not None and hists is not None
    assert LayerSection.from_dict(layers.to_dict()) == layers
    assert HistogramSection.from_dict(hists.to_dict()) == hists
    assert read_sections({}) == (None, None)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda h: h.update(counts=[1, -2]), r"'extra.histograms.items\[0\].counts' should be a non-empty list"),
        (lambda h: h.update(counts=[]), r"non-empty list"),
        (lambda h: h.update(count=h["count"] + 1), r"inconsistent counts"),
        (lambda h: h.update(amax="big"), r"'extra.histograms.items\[0\].amax' should be a finite number"),
        (lambda h: h.pop("tensor"), r"tensor"),
        (lambda h: h.update(layers=[3]), r"list of strings"),
    ],
)
def test_damaged_histogram_is_a_report_error(damage, message) -> None:
    sections = layer_report_sections(
        three_layers(), amax={}, stats=outlier_stats(), method=None, batch_size=4, max_samples=64,
    )
    damage(sections["histograms"]["items"][0])
    with pytest.raises(ReportError, match=message):
        read_sections(sections)


def test_damaged_layer_section_is_a_report_error() -> None:
    sections = layer_report_sections(three_layers(), amax={}, stats=None, method=None, batch_size=4, max_samples=64)
    sections["layers"]["batch_size"] = 0
    with pytest.raises(ReportError, match=r"'extra.layers.batch_size' is 0 but must be >= 1"):
        read_sections(sections)
    with pytest.raises(ReportError, match=r"'extra.layers' should be"):
        read_sections({"layers": [1, 2]})


def test_histogram_rejects_bad_bin_request() -> None:
    with pytest.raises(ValueError):
        downsample_histogram(TensorStats.empty(), 0)
    assert ActivationHistogram.from_dict(histogram_of("t", stats_of(np.ones(3, np.float32)), amax=1.0, method=None).to_dict()).count == 3
