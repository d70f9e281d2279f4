"""`quant calibrate` (reuse, recompute, --recollect, --trt-version, --from-stats) and `quant merge-stats`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from quant.cache.io import read_cache
from tests.cli_helpers import run_main
from tests.models import mlp


def one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def work(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """(model, shard1.npz, shard2.npz, union.npz) for the mlp test model."""
    model = tmp_path / "mlp.onnx"
    onnx.save(mlp(), model)
    rng = np.random.default_rng(11)
    a = rng.standard_normal((16, 16)).astype(np.float32)
    b = (rng.standard_normal((16, 16)) * 4.0).astype(np.float32)
    np.savez(tmp_path / "s1.npz", input=a)
    np.savez(tmp_path / "s2.npz", input=b)
    np.savez(tmp_path / "u.npz", input=np.concatenate([a, b]))
    return model, tmp_path / "s1.npz", tmp_path / "s2.npz", tmp_path / "u.npz"


def calibrate(model: Path, data: Path, cache: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    code, out, err = run_main(["calibrate", str(model), "--data", str(data), "--cache", str(cache), *extra], capsys)
    assert code == 0, err
    return out


def test_calibrate_reuse_recompute_recollect(work: tuple[Path, Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    model, s1, _s2, _u = work
    cache = model.parent / "m.cache"
    out = calibrate(model, s1, cache, capsys)
    assert "calibrated" in out and "on 16 samples with entropy" in out
    assert "header TRT-101300-EntropyCalibration2, TensorRT 10.13.0" in out
    assert f"stats:   {cache}.stats.npz" in out
    out = calibrate(model, s1, cache, capsys)
    assert "is up to date" in out and "reused it" in out and "stats:" in out
    out = calibrate(model, s1, cache, capsys, "--method", "percentile", "--percentile", "99.9")
    assert "method changed (entropy -> percentile)" in out
    assert "recomputed" in out and "the model was not run" in out
    assert read_cache(cache).method == "percentile"
    out = calibrate(model, s1, cache, capsys, "--method", "percentile", "--percentile", "99.9", "--recollect")
    assert "recalibrating as asked" in out and "calibrated" in out
    out = calibrate(model, s1, cache, capsys, "--method", "percentile", "--percentile", "99.9", "--force")
    assert "recalibrating as asked" in out


def test_calibrate_names_data_change(work: tuple[Path, Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    model, s1, s2, _u = work
    cache = model.parent / "m.cache"
    calibrate(model, s1, cache, capsys)
    s1.write_bytes(s2.read_bytes())
    out = calibrate(model, s1, cache, capsys)
    assert "not reused (data file contents changed" in out and "calibrated" in out
    out = calibrate(model, s1, cache, capsys, "--max-samples", "8")
    assert "--max-samples changed (all -> 8)" in out


@pytest.mark.parametrize(
    "version, method, header",
    [
        ("8.6", "entropy", "TRT-8600-EntropyCalibration2"),
        ("10.3", "minmax", "TRT-100300-MinMaxCalibration"),
        ("8.5.2", "mse", "TRT-8502-EntropyCalibration2"),
        ("101200", "percentile", "TRT-101200-EntropyCalibration2"),
    ],
)
def test_trt_version_header(
    work: tuple[Path, Path, Path, Path], capsys: pytest.CaptureFixture[str], version: str, method: str, header: str
) -> None:
    model, s1, _s2, _u = work
    cache = model.parent / f"{method}.cache"
    out = calibrate(model, s1, cache, capsys, "--trt-version", version, "--method", method)
    assert cache.read_text().splitlines()[0] == header
    assert f"header {header}" in out


def test_bad_trt_version_is_usage_error(work: tuple[Path, Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    model, s1, _s2, _u = work
    cache = model.parent / "m.cache"
    code, _out, err = run_main(
        ["calibrate", str(model), "--data", str(s1), "--cache", str(cache), "--trt-version", "ten"], capsys
    )
    assert code == 2
    assert "--trt-version" in one_line_error(err)
    assert not cache.exists()


@pytest.mark.parametrize(
    "args, match",
    [
        ([], "Missing option '--data'"),
        (["--data", "{s1}", "--from-stats", "{s1}"], "exclude each other"),
        (["--from-stats", "{s1}", "--recollect"], "--from-stats never runs the model"),
    ],
)
def test_calibrate_usage_errors(
    work: tuple[Path, Path, Path, Path], capsys: pytest.CaptureFixture[str], args: list[str], match: str
) -> None:
    model, s1, _s2, _u = work
    code, _out, err = run_main(["calibrate", str(model), *[a.format(s1=s1) for a in args]], capsys)
    assert code == 2
    assert match in one_line_error(err)


def test_from_stats_missing_file(work: tuple[Path, Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    model, _s1, _s2, _u = work
    code, _out, err = run_main(
        ["calibrate", str(model), "--from-stats", str(model.parent / "none.stats.npz"), "--cache", str(model.parent / "x.cache")],
        capsys,
    )
    assert code == 1
    assert "none.stats.npz" in one_line_error(err) and "no such file" in err


def test_merge_stats_and_from_stats(work: tuple[Path, Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    model, s1, s2, u = work
    d = model.parent
    calibrate(model, s1, d / "a.cache", capsys)
    calibrate(model, s2, d / "b.cache", capsys)
    calibrate(model, u, d / "u.cache", capsys, "--method", "mse")
    code, out, err = run_main(
        ["merge-stats", str(d / "a.cache.stats.npz"), str(d / "b.cache.stats.npz"), "-o", str(d / "all.stats.npz")], capsys
    )
    assert code == 0, err
    assert "merged 2 statistics files (2 data shards, 32 samples" in out
    code, out, err = run_main(
        ["merge-stats", str(d / "b.cache.stats.npz"), str(d / "a.cache.stats.npz"), "-o", str(d / "ba.stats.npz"), "--json"],
        capsys,
    )
    assert code == 0, err
    info = json.loads(out)
    assert info["num_samples"] == 32 and info["num_shards"] == 2
    assert f"data fingerprint: {info['data_fingerprint']}" in run_main(
        ["merge-stats", str(d / "a.cache.stats.npz"), str(d / "b.cache.stats.npz"), "-o", str(d / "ab.stats.npz")], capsys
    )[1]
    code, out, err = run_main(
        ["calibrate", str(model), "--from-stats", str(d / "all.stats.npz"), "--method", "mse", "--cache", str(d / "m.cache")],
        capsys,
    )
    assert code == 0, err
    assert "from statistics" in out and "2 data shards" in out and "the model was not run" in out
    assert read_cache(d / "m.cache").amax == read_cache(d / "u.cache").amax


def test_merge_stats_errors(work: tuple[Path, Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    model, s1, s2, _u = work
    d = model.parent
    calibrate(model, s1, d / "a.cache", capsys)
    other = d / "other.onnx"
    onnx.save(mlp(seed=5), other)
    calibrate(other, s2, d / "o.cache", capsys)
    a, o = str(d / "a.cache.stats.npz"), str(d / "o.cache.stats.npz")
    code, _out, err = run_main(["merge-stats", a, "-o", str(d / "x.npz")], capsys)
    assert code == 2 and "at least two" in one_line_error(err)
    code, _out, err = run_main(["merge-stats", a, o, "-o", str(d / "x.npz")], capsys)
    assert code == 1 and "another model" in one_line_error(err)
    code, _out, err = run_main(["merge-stats", a, a, "-o", str(d / "x.npz")], capsys)
    assert code == 1 and "counted twice" in one_line_error(err)
    code, _out, err = run_main(["merge-stats", a, o, "-o", a], capsys)
    assert code == 1 and "same file as input" in one_line_error(err)
    assert not (d / "x.npz").exists()
    code, _out, err = run_main(["calibrate", str(other), "--from-stats", a, "--cache", str(d / "x.cache")], capsys)
    assert code == 1 and "not collected on model 'other.onnx'" in one_line_error(err)


def test_merge_stats_help() -> None:
    from click.testing import CliRunner

    from quant.cli.main import cli

    result = CliRunner().invoke(cli, ["merge-stats", "--help"])
    assert result.exit_code == 0 and "quant merge-stats" in result.output and "Examples:" in result.output


def test_calibrate_method_auto_and_inspect_show_the_choice(
    work: tuple[Path, Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, s1, s2, u = work
    cache = model.parent / "auto.cache"
    out = calibrate(model, u, cache, capsys, "--method", "auto")
    assert "with auto; auto chose per tensor" in out and "held-out samples" in out
    assert "header TRT-101300-EntropyCalibration2" in out  # a cache any TensorRT calibrator reads
    assert "(best single)" in out and "x one pass over the 32 calibration samples" in out
    side = json.loads(Path(str(cache) + ".json").read_text())
    record = side["calibration"]["auto"]
    assert set(record["choice"]) == set(read_cache(cache).amax)
    assert len(record["scores"]) == 6 and record["held_out"] == 16 and record["cost"]["folds"] == 4
    code, out, err = run_main(["inspect", str(cache)], capsys)
    assert code == 0, err
    assert "method     auto" in out and "auto (" in out
    header = next(line for line in out.splitlines() if line.startswith("name "))
    assert header.split()[-1] == "method"
    # --from-stats --method auto scores on --data, which must be other samples
    stats = Path(str(cache) + ".stats.npz")
    code, _out, err = run_main(["calibrate", str(model), "--from-stats", str(stats), "--method", "auto",
                                "--cache", str(model.parent / "x.cache")], capsys)
    assert code == 2 and "needs --data" in one_line_error(err)
    code, _out, err = run_main(["calibrate", str(model), "--from-stats", str(stats), "--method", "auto",
                                "--data", str(u), "--cache", str(model.parent / "x.cache")], capsys)
    assert code == 2 and "made the statistics" in one_line_error(err)
    code, _out, err = run_main(["calibrate", str(model), "--from-stats", str(stats), "--method", "entropy",
                                "--data", str(s2), "--cache", str(model.parent / "x.cache")], capsys)
    assert code == 2 and "only --method auto takes --data" in one_line_error(err)
    other = model.parent / "other.npz"
    np.savez(other, input=np.random.default_rng(3).standard_normal((8, 16)).astype(np.float32))
    code, out, err = run_main(["calibrate", str(model), "--from-stats", str(stats), "--method", "auto",
                                "--data", str(other), "--cache", str(model.parent / "x.cache")], capsys)
    assert code == 0, err
    assert "scored on 8 samples of --data" in out


def test_calibrate_auto_too_few_samples_is_one_line_error(
    work: tuple[Path, Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, s1, _s2, _u = work
    code, _out, err = run_main(["calibrate", str(model), "--data", str(s1), "--max-samples", "10",
                                "--method", "auto", "--cache", str(model.parent / "few.cache")], capsys)
    assert code == 1
    assert "needs at least 16 samples" in one_line_error(err)
