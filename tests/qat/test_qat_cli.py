"""quant qat (the CLI) and import hygiene: quant and quant --help work without PyTorch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from quant.cli.main import cli
from tests.cli_helpers import run_main

REPO = Path(__file__).resolve().parents[2]

# Run Python with "torch" unimportable (a meta-path finder refusing it), as on a machine
# without the qat extra.
NO_TORCH = (
    "import sys, importlib.abc\n"
    "class _Block(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'):\n"
    "            raise ModuleNotFoundError(f\"No module named '{name}'\", name=name)\n"
    "        return None\n"
    "sys.meta_path.insert(0, _Block())\n"
)


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", NO_TORCH + code], capture_output=True, text=True, env=env, cwd=REPO)




def test_import_quant_and_help_without_torch() -> None:
    proc = _python(
        "import quant, quant.cli.qat\n"
        "from quant.qat.onnx_post import finalize_qdq\n"  # the pure part of quant.qat needs no torch
        "from quant.cli.main import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "try:\n"
        "    main(['qat', '--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "assert 'torch' not in sys.modules\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "qat" in proc.stdout and "--demo" in proc.stdout


def test_qat_without_torch_names_the_extra() -> None:
    proc = _python("from quant.cli.main import main\nmain(['qat', '--demo'])\n")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "quant: error: quant qat needs PyTorch, which is not installed; install the qat extra: pip install 'quant[qat]'"
    ]
    proc = _python("import quant.qat\nquant.qat.quantize_model\n")
    assert proc.returncode == 1 and "BackendUnavailableError" in proc.stderr and "quant[qat]" in proc.stderr


def test_help_has_examples() -> None:
    result = CliRunner().invoke(cli, ["qat", "--help"])
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.output and "quant qat --demo" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give --model MODULE:FACTORY (or MODEL.onnx) with --data, or --demo"),
        (["--demo", "--model", "m:f"], "--demo runs on the embedded demo"),
        (["--model", "m:f"], "--data (labelled training data) is required"),
        (["--model", "m:f", "--data", "d"], "-o/--output"),
        (["--demo", "--resume"], "--resume needs --checkpoint"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_main(["qat", *args], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.torch
def test_demo_reports_fp32_ptq_and_qat_side_by_side_and_passes_eval_and_inspect(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``quant qat --demo`` on a constructed case where PTQ loses accuracy (aggressively clipped
    calibration: percentile 90 of |x|): the QAT model recovers most of it, measured in ONNX
    Runtime on the demo's 1,500 held-out digits, and then passes ``quant eval`` and ``quant
    inspect`` (no orphan Q/DQ)."""
    pytest.importorskip("torch")
    out, report, ckpt = tmp_path / "demo.qat.onnx", tmp_path / "qat.json", tmp_path / "qat.pt"
    code, stdout, err = run_main(
        ["qat", "--demo", "--method", "percentile", "--percentile", "90", "--max-steps", "60", "--device", "cpu",
         "--checkpoint", str(ckpt), "--report", str(report), "-o", str(out)], capsys)
    assert code == 0, err
    for label in ("FP32", "PTQ INT8", "QAT INT8 (before fine-tuning)", "QAT INT8"):
        assert any(line.startswith(label) for line in stdout.splitlines()), stdout
    assert "no orphan Q/DQ" in stdout
    doc = json.loads(report.read_text())
    acc = doc["accuracy"]
    assert acc["ptq-int8"] <= acc["fp32"] - 1.0, acc  # the constructed PTQ loss is real
    assert abs(acc["qat-init"] - acc["ptq-int8"]) <= 0.5, acc  # QAT starts where PTQ is
    assert acc["qat-int8"] >= acc["ptq-int8"] + 0.5, acc  # and recovers accuracy
    assert doc["training"]["epochs"][0]["steps"] == 60 and ckpt.exists()
    assert doc["qdq"]["quantize_linear"] == 5 and doc["qdq"]["int8_layers"] == 5
    assert set(doc["init"]["source"].values()) == {"calibration:percentile"}
    assert doc["ptq"]["source"] == "calibration:percentile"

    code, stdout, err = run_main(["inspect", str(out)], capsys)
    assert code == 0, err
    assert "no orphan Q/DQ" in stdout and "int8 5" in stdout
    from quant.demo import demo_model_path

    ev = tmp_path / "eval.json"
    code, stdout, err = run_main(["eval", str(demo_model_path()), "--data", "demo:eval", "--int8-model", str(out),
                                  "--precisions", "fp32,int8", "--report", str(ev)], capsys)
    assert code == 0, err
    precisions = {p["name"]: p for p in json.loads(ev.read_text())["evaluation"]["precisions"]}
    # quant eval measures the exported model exactly as quant qat did
    assert precisions["int8"]["classification"]["top1"] == pytest.approx(acc["qat-int8"])
    assert precisions["fp32"]["classification"]["top1"] == pytest.approx(acc["fp32"])
