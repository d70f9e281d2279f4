from __future__ import annotations

import datetime as dt
import json

import pytest

from quant import __version__
from quant.calibrators.result import CalibrationResult
from quant.errors import CacheError


def _result() -> CalibrationResult:
    return CalibrationResult.from_ranges(
        {"conv1_out": 2.5, "relu_out": 1.25, "dead": None, "zero": 0.0},
        method="percentile",
        params={"num_bins": 2048, "percentile": 99.9},
        num_samples=64,
        model_fingerprint={"graph": "g" * 64, "weights": "w" * 64},
        data_fingerprint="d" * 64,
        tensors_scope="qdq",
    )


def test_from_ranges_splits_no_range() -> None:
    r = _result()
    assert r.amax == {"conv1_out": 2.5, "relu_out": 1.25}
    assert r.no_range == ("dead", "zero")
    assert r.quant_version == __version__
    created = dt.datetime.fromisoformat(r.created)
    assert created.tzinfo is not None


def test_round_trip_through_json() -> None:
    r = _result()
    back = CalibrationResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back == r
    s = CalibrationResult.from_dict({**r.to_dict(), "model_fingerprint": "abc", "tensors_scope": "all"})
    assert s.model_fingerprint == "abc" and s.tensors_scope == "all"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("method", 3, "field 'method' must be a non-empty string"),
        ("params", [1], "field 'params' must be an object"),
        ("amax", [1.0], "field 'amax' must be an object mapping tensor names to ranges"),
        ("amax", {"x": -1.0}, "field 'amax' has an invalid range -1.0 for tensor 'x'"),
        ("amax", {"x": "1.0"}, "field 'amax' has an invalid range '1.0' for tensor 'x'"),
        ("amax", {"x": float("inf")}, "field 'amax' has an invalid range inf for tensor 'x'"),
        ("no_range", "dead", "field 'no_range' must be a list of tensor names"),
        ("no_range", ["conv1_out"], "field 'no_range' lists tensor 'conv1_out' that also has an amax"),
        ("num_samples", -3, "field 'num_samples' must be a non-negative integer"),
        ("num_samples", True, "field 'num_samples' must be a non-negative integer"),
        ("model_fingerprint", 5, "field 'model_fingerprint' must be a string or an object of strings"),
        (
            "model_fingerprint",
            {"graph": 1},
            "field 'model_fingerprint' must be a string or an object of strings",
        ),
        ("data_fingerprint", "", "field 'data_fingerprint' must be a non-empty string"),
        ("tensors_scope", "some", "field 'tensors_scope' must be 'all' or 'qdq'"),
        ("created", "yesterday", "field 'created' must be an ISO 8601 time"),
        ("quant_version", None, "field 'quant_version' must be a non-empty string"),
    ],
)
def test_from_dict_errors_name_the_field(field: str, value: object, message: str) -> None:
    d = _result().to_dict()
    d[field] = value
    with pytest.raises(CacheError) as err:
        CalibrationResult.from_dict(d, source="model.cache.json")
    assert str(err.value).startswith("model.cache.json: ")
    assert message in str(err.value)


def test_from_dict_missing_field_and_not_object() -> None:
    d = _result().to_dict()
    del d["num_samples"]
    with pytest.raises(
        CacheError, match="field 'num_samples' is missing; recreate it with 'quant calibrate'"
    ):
        CalibrationResult.from_dict(d)
    with pytest.raises(CacheError, match="calibration result: expected an object, got list"):
        CalibrationResult.from_dict([])  # type: ignore[arg-type]
