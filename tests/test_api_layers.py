"""The per-layer analysis through the API and the CLI: quant run, quant eval --layers, analyze_layers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from quant import api
from quant.calibrators.stats_io import load_stats, save_stats, stats_path
from quant.cli.main import cli, main
from quant.config import DataOptions
from quant.errors import UsageError
from quant.report.schema import load_report
from quant.report.sections import read_sections

EVAL = DataOptions("demo:eval", max_samples=96, batch_size=32)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> api.RunOutcome:
    return api.run(out=tmp_path_factory.mktemp("demo"), calib_data=DataOptions("demo:calib", max_samples=100), eval_data=EVAL)


def test_run_puts_layer_sections_in_the_report_and_writes_html(demo_run: api.RunOutcome) -> None:
    html = demo_run.out_dir / "report.html"
    assert html in demo_run.files and html.is_file()
    assert html.read_text(encoding="utf-8").count("data:image/png;base64,") >= 2
    rep = load_report(demo_run.report_path)
    layers, hists = read_sections(rep.extra)
    assert layers is not None and hists is not None
    assert len(layers.items) == 5  # conv1, conv2, fc1, fc2, fc3 run in INT8
    assert {e.layer for e in layers.items} == {"conv1", "conv2", "fc1", "fc2", "fc3"}
    # The first 64 of the 96 evaluation samples (the default cap), in batches of 8.
    assert layers.num_samples == 64 and layers.max_samples == 64 and layers.batch_size == 8
    assert all(e.local is not None and e.fidelity.num_samples == 64 for e in layers.items)
    worst = layers.items[0]
    assert hists.items and hists.items[0].tensor in worst.inputs
    assert hists.unavailable is None
    choice = (rep.calibration or {})["auto"]["choice"]  # quant run's default method is auto
    for h in hists.items:
        assert h.amax is not None and 0 < h.amax <= h.absmax * 1.0001
        assert h.method == choice[h.tensor] and sum(h.counts) == h.count > 0


def test_quant_eval_layers_with_a_cache(demo_run: api.RunOutcome, tmp_path: Path) -> None:
    cache = demo_run.calibration.cache_path
    out = tmp_path / "r.json"
    result = CliRunner().invoke(cli, [
        "eval", "demo", "--data", "demo:eval", "--max-samples", "40", "--batch-size", "20", "--cache", str(cache),
        "--precisions", "fp32,int8", "--layers", "--report", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert "worst INT8 layer of 5: " in result.output and f"quant report {out} -o report.html" in result.output
    layers, hists = read_sections(load_report(out).extra)
    assert layers is not None and len(layers.items) == 5 and layers.num_samples == 40
    assert hists is not None and hists.items


def test_quant_eval_layers_without_int8_source_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["eval", "demo", "--data", "demo:eval", "--layers"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--layers needs --cache" in err[0]


def test_eval_without_layers_keeps_extra_empty(demo_run: api.RunOutcome) -> None:
    rep = api.evaluate(None, DataOptions("demo:eval", max_samples=32, batch_size=32), cache=demo_run.calibration.cache_path,
                       prepared=None)
    assert read_sections(rep.extra) == (None, None)


def test_layers_from_a_given_int8_model_have_no_histograms(demo_run: api.RunOutcome) -> None:
    rep = api.evaluate(None, DataOptions("demo:eval", max_samples=16, batch_size=16), int8_model=demo_run.int8_model,
                       layers=True)
    layers, hists = read_sections(rep.extra)
    assert layers is not None and len(layers.items) == 5
    assert hists is not None and hists.items == () and "no calibration cache given" in str(hists.unavailable)


def test_cache_without_statistics_file_explains_missing_histograms(demo_run: api.RunOutcome, tmp_path: Path) -> None:
    cache = tmp_path / "model.cache"
    shutil.copy(demo_run.calibration.cache_path, cache)
    shutil.copy(demo_run.calibration.sidecar_path, tmp_path / "model.cache.json")
    prepared = api.prepare_model(None)
    models, _ = api.precision_models(prepared, ("int8",), cache=cache)
    sections = api.analyze_layers(prepared, DataOptions("demo:eval", max_samples=8), models["int8"], cache=cache)
    layers, hists = read_sections(sections)
    assert layers is not None and len(layers.items) == 5 and layers.num_samples == 8
    assert hists is not None and hists.items == ()
    assert f"no statistics file '{stats_path(cache)}'" in str(hists.unavailable)


def test_statistics_of_another_model_are_not_shown(demo_run: api.RunOutcome, tmp_path: Path) -> None:
    cache = tmp_path / "model.cache"
    shutil.copy(demo_run.calibration.cache_path, cache)
    shutil.copy(demo_run.calibration.sidecar_path, tmp_path / "model.cache.json")
    stats, meta = load_stats(stats_path(demo_run.calibration.cache_path))
    save_stats(stats_path(cache), stats, {**meta, "model_fingerprint": {"graph": "0" * 64, "weights": "1" * 64}})
    prepared = api.prepare_model(None)
    models, _ = api.precision_models(prepared, ("int8",), cache=cache)
    _, hists = read_sections(api.analyze_layers(prepared, DataOptions("demo:eval", max_samples=8), models["int8"], cache=cache))
    assert hists is not None and "made for another model" in str(hists.unavailable)


def test_int8_model_with_every_layer_excluded_says_so(demo_run: api.RunOutcome) -> None:
    prepared = api.prepare_model(None)
    cache = demo_run.calibration.cache_path
    models, _ = api.precision_models(prepared, ("int8",), cache=cache, exclude=("Conv", "Gemm"))
    sections = api.analyze_layers(prepared, DataOptions("demo:eval", max_samples=8), models["int8"], cache=cache)
    layers, hists = read_sections(json.loads(json.dumps(sections)))
    assert layers is not None and layers.items == () and "no layer of the INT8 model runs in INT8" in str(layers.unavailable)
    assert hists is not None and hists.unavailable == layers.unavailable


def test_evaluate_layers_flag_checks_its_inputs_before_running() -> None:
    with pytest.raises(UsageError, match="--layers needs --cache"):
        api.evaluate(None, DataOptions("demo:eval"), layers=True)
