"""The shared test models are valid, run, and have the advertised interface."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.models import ALL_BUILDERS, random_feed, run_model


@pytest.mark.parametrize("name", sorted(ALL_BUILDERS))
def test_builder_is_valid_and_runs(name: str) -> None:
    model = ALL_BUILDERS[name]()
    onnx.checker.check_model(model, full_check=True)
    first = model.graph.input[0]
    assert first.name == "input"
    batch = first.type.tensor_type.shape.dim[0]
    assert batch.dim_param == "N"
    outputs = run_model(model, random_feed(model, batch=3))
    assert set(outputs) == {o.name for o in model.graph.output}
    for value in outputs.values():
        assert value.shape[0] == 3
        assert np.all(np.isfinite(value))


def test_builders_are_deterministic() -> None:
    for build in ALL_BUILDERS.values():
        assert build().SerializeToString() == build().SerializeToString()
