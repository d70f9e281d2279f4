"""The HTML report: content, escaping, partial reports, charts (decoded PNGs) and writing."""

from __future__ import annotations

import base64
import io
import re
import sys
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from layer_fixtures import layer, outlier_stats, three_layers
from PIL import Image
from report_fixtures import make_report

from quant.errors import OutputError, ReportError
from quant.report.html import MAX_CHART_LAYERS, render_html, write_html_report
from quant.report.schema import Report, load_report, save_report
from quant.report.sections import layer_report_sections


class _Page(HTMLParser):
    """Collects tags, image sources and text; fails on unbalanced tags."""

    VOID = {"meta", "img", "br", "link", "input", "hr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.images: list[str] = []
        self.scripts = 0
        self.text: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag == "script":
            self.scripts += 1
        if a.get("id"):
            self.ids.append(str(a["id"]))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> (open: {self.stack[-3:]})"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @property
    def plain(self) -> str:
        return re.sub(r"\s+", " ", " ".join(self.text))


def parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    p.close()
    assert p.stack == [], f"unclosed tags {p.stack}"
    return p


def png(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    img = Image.open(io.BytesIO(base64.b64decode(src[len(prefix):])))
    img.load()
    return img


def with_layers(report: Report, errors=None, **kwargs) -> Report:
    sections = layer_report_sections(
        errors if errors is not None else three_layers(),
        amax={"conv_b_in": 2.5, "fc_in": 7.0, "conv_a_in": 3.0},
        stats=kwargs.pop("stats", outlier_stats()),
        method="entropy",
        batch_size=8,
        max_samples=256,
        data="data/val",
        **kwargs,
    )
    return replace(report, extra={**report.extra, **sections})


@pytest.fixture(scope="module")
def full_page() -> _Page:
    return parse(render_html(with_layers(make_report())))


def test_full_report_has_every_section_and_decodable_charts(full_page: _Page) -> None:
    page = full_page
    assert page.scripts == 0
    for anchor in ("summary", "layers", "histograms", "calibration", "build", "model", "environment"):
        assert anchor in page.ids
    # One per-layer chart and one histogram per input of the worst layers (3 here).
    assert len(page.images) == 4
    sizes = [png(src).size for src in page.images]
    assert all(w > 200 and h > 150 for w, h in sizes)
    text = page.plain
    assert "fp32 (reference)" in text and "76.20" in text and "75.70" in text
    assert "-0.50" in text  # top-1 change of int8 in points
    assert "2.00\u00d7" in text  # int8 is 10 ms -> 5 ms: twice as fast
    assert "SQNR alone (dB)" in text and "conv_b" in text
    # Table rows are worst first.
    assert text.index("conv_b_out") < text.index("fc_out") < text.index("conv_a_out")
    assert "TRT-100300-EntropyCalibration2 (TensorRT 10.3.0)" in text
    assert "num_bins=2048" in text and "500" in text
    assert "onnxruntime" in text and "python" in text


def test_chart_images_are_not_blank(full_page: _Page) -> None:
    for src in full_page.images:
        img = png(src).convert("RGB")
        colours = img.getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 20


def test_report_from_eval_without_layers_says_what_is_missing() -> None:
    page = parse(render_html(make_report()))
    assert page.images == []
    text = page.plain
    assert "Per-layer errors are not in this report" in text and "--layers" in text
    assert "Activation histograms are not in this report" in text
    assert "fp32 (reference)" in text


def test_report_without_evaluation_calibration_or_build() -> None:
    rep = replace(make_report(with_calibration=False), evaluation=None, build=None, environment={})
    text = parse(render_html(rep)).plain
    assert "No evaluation in this report" in text
    assert "No calibration in this report" in text
    assert "No build information" in text
    assert "No environment information" in text


def test_unavailable_sections_show_their_reason() -> None:
    rep = with_layers(make_report(), errors=[], layers_unavailable="no layer of the INT8 model runs in INT8")
    text = parse(render_html(rep)).plain
    assert text.count("no layer of the INT8 model runs in INT8") == 2
    rep = with_layers(make_report(), stats=None, stats_unavailable="no statistics file 'm.cache.stats.npz'")
    page = parse(render_html(rep))
    assert len(page.images) == 1  # the layer chart only
    assert "No histograms: no statistics file 'm.cache.stats.npz'" in page.plain


def test_every_report_string_is_escaped() -> None:
    evil = "<script>alert(1)</script>"
    rep = replace(make_report(model_path=f"models/{evil}.onnx"), command=("quant", evil))
    errors = [layer('<img src=x onerror="boom">', 3.0, 3.0, inputs=("a&b <c>",)), layer("$x^2$ & {y}", 30.0, 20.0, position=1)]
    rep = with_layers(rep, errors=errors, stats={"a&b <c>": outlier_stats()["conv_b_in"]})
    page_text = render_html(rep)
    page = parse(page_text)
    assert page.scripts == 0
    assert evil not in page_text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page_text
    assert '<img src=x onerror="boom">' not in page_text
    assert "a&amp;b &lt;c&gt;" in page_text
    assert "$x^2$ &amp; {y}" in page_text  # mathtext characters reach the chart literally, without error
    assert len(page.images) == 2


def test_exact_undefined_and_missing_local_values_render() -> None:
    errors = [
        layer("undefined", None, None),
        layer("exact", 0.0, 50.0, local_exact=True, position=1),
        layer("nolocal", None, 12.0, has_local=False, position=2),
    ]
    page = parse(render_html(with_layers(make_report(), errors=errors, stats={})))
    text = page.plain
    assert "undefined" in text and "exact" in text
    assert len(page.images) == 1 and png(page.images[0]).size[0] > 200


def test_many_layers_chart_shows_the_worst_and_the_table_lists_all() -> None:
    n = MAX_CHART_LAYERS + 7
    errors = [layer(f"block{i}/conv", 10.0 + i, 10.0 + i, position=i) for i in range(n)]
    page = parse(render_html(with_layers(make_report(), errors=errors, stats={})))
    assert f"{MAX_CHART_LAYERS} layers shown; the 7 others are in the table" in page.plain
    assert all(f"block{i}/conv_out" in page.plain for i in range(n))
    chart = png(page.images[0])
    assert chart.size[1] > 1000  # the figure grows with the number of bars: labels never overlap


def test_without_matplotlib_the_tables_remain(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    page = parse(render_html(with_layers(make_report())))
    assert page.images == []
    assert "Charts need matplotlib" in page.plain and "pip install matplotlib" in page.plain
    assert "conv_b_out" in page.plain and "20,000 values" in page.plain


def test_damaged_layer_section_is_a_report_error() -> None:
    rep = replace(make_report(), extra={"layers": {"items": "nope"}})
    with pytest.raises(ReportError, match=r"extra.layers"):
        render_html(rep)


def test_write_html_report_is_atomic_and_never_overwrites_its_report(tmp_path: Path) -> None:
    json_path = tmp_path / "report.json"
    save_report(make_report(), json_path)
    rep = load_report(json_path)
    out = write_html_report(rep, tmp_path / "report.html")
    assert out == tmp_path / "report.html"
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left
    with pytest.raises(OutputError, match=r"same file as input"):
        write_html_report(rep, json_path)
    assert json_path.read_text(encoding="utf-8").startswith("{")
    with pytest.raises(OutputError, match="directory"):
        write_html_report(rep, tmp_path)


def test_quant_report_writes_html(tmp_path: Path) -> None:
    from quant.cli.main import cli

    json_path = tmp_path / "report.json"
    save_report(with_layers(make_report(), stats={}), json_path)
    result = CliRunner().invoke(cli, ["report", str(json_path), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    page = parse((tmp_path / "r.html").read_text(encoding="utf-8"))
    assert len(page.images) == 1 and "conv_b_out" in page.plain


def test_worst_layer_line_names_the_worst_layer() -> None:
    from quant.report.html import worst_layer_line

    assert worst_layer_line(with_layers(make_report())) == (
        "worst INT8 layer of 3: conv_b (Conv), SQNR 3.5 dB alone, SQNR 3.4 dB in the INT8 model"
    )
    assert worst_layer_line(make_report()) == "per-layer errors: not measured"
    rep = with_layers(make_report(), errors=[], layers_unavailable="no layer runs in INT8")
    assert worst_layer_line(rep) == "per-layer errors: none (no layer runs in INT8)"
    rep = with_layers(make_report(), errors=[layer("u", None, None, has_local=False)], stats={})
    assert worst_layer_line(rep) == "worst INT8 layer of 1: u (Conv), SQNR undefined in the INT8 model"


def _auto_calibration(report: Report) -> Report:
    """``report`` as a --method auto run records it: the sidecar's auto record in the calibration."""
    from quant.calibrators.auto import CANDIDATES

    scores = {c.label: {"sqnr_db": 10.0 + i, "agreement": 90.0 + i} for i, c in enumerate(CANDIDATES)}
    scores["entropy"] = {"sqnr_db": None, "agreement": None}  # identical outputs: infinite SQNR
    record = {
        "metric": "sqnr",
        "choice": {"a": "mse", "b": "mse", "c": "percentile 99.9"},
        "candidates": [c.to_dict() for c in CANDIDATES],
        "scores": scores,
        "best_single": "mse",
        "score": {"sqnr_db": 17.25, "agreement": 97.5},
        "held_out": 16,
        "scoring_data": "held-out",
        "evaluations": 12,
        "cost": {"passes": 2.5},
    }
    return replace(report, calibration={**(report.calibration or {}), "method": "auto", "auto": record})


def test_methods_against_fidelity_table() -> None:
    from quant.report.sections import method_scores

    report = _auto_calibration(make_report())
    rows = method_scores(report.calibration)
    assert [r["label"] for r in rows][-1] == "auto" and len(rows) == 7
    by = {r["label"]: r for r in rows}
    assert by["mse"]["tensors"] == 2 and by["percentile 99.9"]["tensors"] == 1 and by["auto"]["tensors"] == 3
    assert by["mse"]["best_single"] and by["percentile 99.9"]["params"] == {"percentile": 99.9}
    page = parse(render_html(report))
    assert "Methods against fidelity" in page.plain
    assert "mse (best single)" in page.plain and "auto (per tensor)" in page.plain
    assert "17.25" in page.plain and "97.5" in page.plain and "percentile=99.9" in page.plain
    assert "16 calibration samples held aside" in page.plain and "2.5x one forward pass" in page.plain
    assert "\u221e" in page.plain  # entropy's identical outputs
    # a report of one fixed method has no such table (nothing was measured)
    assert method_scores(make_report().calibration) == []
    assert "Methods against fidelity" not in parse(render_html(make_report())).plain
