"""quant.eval.evaluate on tiny onnx.helper models with an in-test Dataset and ONNX Runtime."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from eval_fixtures import N_CLASSES, ArrayDataset, SessionRunner, linear_model, vector_model

from quant.errors import DataError, ModelError, ReportError, UsageError
from quant.eval import EvalResult, evaluate


def _np_logits(x: np.ndarray, model: onnx.ModelProto) -> np.ndarray:
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return x.astype(np.float32) @ init["W"] + init["b"]


def test_evaluate_fp32_vs_perturbed_and_identical(
    fp32_model: onnx.ModelProto, perturbed_model: onnx.ModelProto, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, labels = data
    result = evaluate(
        {"fp32": fp32_model, "int8": perturbed_model, "copy": fp32_model},
        ArrayDataset(x, labels),
        batch_size=16,
        runner_factory=SessionRunner,
    )
    assert result.names == ("fp32", "int8", "copy")
    assert (result.num_samples, result.num_batches, result.batch_size) == (40, 3, 16)
    assert result.classifier_output == "logits"  # "cls" (int64) comes first and is skipped
    assert result.outputs == ("cls", "logits", "feat")
    assert result.has_labels

    ref_logits = _np_logits(x, fp32_model)
    int8_logits = _np_logits(x, perturbed_model)
    ref = result.precision("fp32")
    assert ref.is_reference and ref.fidelity == ()
    assert ref.classification is not None
    assert ref.classification.top1_correct == int(np.sum(ref_logits.argmax(1) == labels))
    top5 = np.argsort(-ref_logits, axis=1, kind="stable")[:, :5]
    assert ref.classification.top5_correct == int(np.sum((top5 == labels[:, None]).any(1)))
    assert ref.classification.num_compared == 0

    int8 = result.precision("int8")
    assert int8.classification is not None
    assert int8.classification.top1_correct == int(np.sum(int8_logits.argmax(1) == labels))
    assert int8.classification.agree_count == int(np.sum(int8_logits.argmax(1) == ref_logits.argmax(1)))
    fl = int8.fidelity_for("logits")
    assert fl is not None
    r64, x64 = ref_logits.astype(np.float64), int8_logits.astype(np.float64)
    expected_sqnr = 10 * np.log10(np.sum(r64**2) / np.sum((r64 - x64) ** 2))
    assert fl.sqnr_db == pytest.approx(expected_sqnr, abs=1e-3)
    assert fl.max_abs_error == pytest.approx(np.max(np.abs(r64 - x64)), rel=1e-4)
    feat = int8.fidelity_for("feat")
    assert feat is not None and feat.exact  # Relu(x) does not depend on the weights
    assert [f.output for f in int8.fidelity] == ["cls", "logits", "feat"]

    copy = result.precision("copy")
    assert all(f.exact for f in copy.fidelity)
    assert copy.worst_sqnr == float("inf") and copy.min_cosine == pytest.approx(1.0)
    assert copy.classification is not None and copy.classification.agreement == 100.0

    # batches 16, 16, 8; warm-up 1 -> only the second (full) batch is timed
    for p in result.precisions:
        assert p.latency is not None
        assert (p.latency.num_batches, p.latency.num_samples, p.latency.batch_size) == (1, 16, 16)
        assert p.latency.throughput > 0

    with pytest.raises(KeyError, match="no precision 'fp16'"):
        result.precision("fp16")


def test_every_runner_sees_the_same_batches(
    fp32_model: onnx.ModelProto, perturbed_model: onnx.ModelProto, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, labels = data
    runners: list[SessionRunner] = []

    def factory(model: onnx.ModelProto | str | Path) -> SessionRunner:
        runner = SessionRunner(model)
        runners.append(runner)
        return runner

    evaluate(
        {"int8": perturbed_model, "fp32": fp32_model},
        ArrayDataset(x, labels),
        batch_size=7,
        runner_factory=factory,
    )
    assert len(runners) == 2 and all(r.closed for r in runners)
    a, b = (r.feeds for r in runners)
    assert len(a) == len(b) == 6
    for fa, fb in zip(a, b, strict=True):
        np.testing.assert_array_equal(fa["x"], fb["x"])
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in a]), x)


def test_round_trip_is_json_valid(fp32_model: onnx.ModelProto, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, labels = data
    result = evaluate(
        {"fp32": fp32_model, "same": fp32_model},
        ArrayDataset(x, labels),
        batch_size=8,
        runner_factory=SessionRunner,
    )
    text = json.dumps(result.to_dict(), allow_nan=False)  # exact SQNR must not produce inf
    assert EvalResult.from_dict(json.loads(text)) == result


def test_models_given_as_paths(
    tmp_path: Path, fp32_model: onnx.ModelProto, data: tuple[np.ndarray, np.ndarray]
) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(fp32_model, path)
    x, _ = data
    result = evaluate(
        {"fp32": str(path), "again": path},
        ArrayDataset(x),
        batch_size=40,
        runner_factory=SessionRunner,
        warmup=0,
    )
    assert not result.has_labels
    again = result.precision("again")
    assert again.classification is not None and again.classification.top1 is None
    assert again.classification.agreement == 100.0
    assert again.latency is not None and again.latency.num_batches == 1


def test_non_classifier_model_gets_fidelity_only(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, labels = data
    model = vector_model()
    result = evaluate(
        {"fp32": model, "b": model}, ArrayDataset(x, labels), batch_size=10, runner_factory=SessionRunner
    )
    assert result.classifier_output is None and not result.has_labels
    assert all(p.classification is None for p in result.precisions)
    fid = result.precision("b").fidelity
    assert len(fid) == 1 and fid[0].output == "y" and fid[0].exact and fid[0].num_elements == 160


def test_explicit_classifier_output(fp32_model: onnx.ModelProto, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = data
    labels = np.zeros(len(x), dtype=np.int64)
    result = evaluate(
        {"fp32": fp32_model},
        ArrayDataset(x, labels),
        batch_size=20,
        runner_factory=SessionRunner,
        classifier_output="feat",
    )
    assert result.classifier_output == "feat"
    c = result.precision("fp32").classification
    assert c is not None and c.num_classes == 4 and c.top5_correct is None
    with pytest.raises(ModelError, match="classifier output 'prob' is not an output of the model"):
        evaluate(
            {"fp32": fp32_model}, ArrayDataset(x), runner_factory=SessionRunner, classifier_output="prob"
        )


def test_output_names_must_match(
    weights: tuple[np.ndarray, np.ndarray], tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    renamed = tmp_path / "renamed.onnx"
    onnx.save(linear_model(*weights, logits_name="scores"), renamed)
    x, _ = data
    with pytest.raises(ModelError) as info:
        evaluate(
            {"fp32": linear_model(*weights), "int8": renamed}, ArrayDataset(x), runner_factory=SessionRunner
        )
    msg = str(info.value)
    assert f"model 'int8' ({renamed}) has outputs ['cls', 'feat', 'scores']" in msg
    assert "reference 'fp32' has ['cls', 'feat', 'logits']" in msg


def test_missing_input_error(fp32_model: onnx.ModelProto, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = data
    with pytest.raises(
        DataError,
        match=r"model 'fp32' needs inputs \['x'\] that the data set does not provide \(it provides \['image'\]\)",
    ):
        evaluate({"fp32": fp32_model}, ArrayDataset(x, input_name="image"), runner_factory=SessionRunner)


def test_empty_dataset_error(fp32_model: onnx.ModelProto) -> None:
    empty = ArrayDataset(np.zeros((0, 4), np.float32))
    with pytest.raises(DataError, match="data set 'in-test arrays' yielded no samples"):
        evaluate({"fp32": fp32_model}, empty, runner_factory=SessionRunner)


def test_bad_labels_error(fp32_model: onnx.ModelProto, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = data
    labels = np.full(len(x), N_CLASSES, dtype=np.int64)
    with pytest.raises(DataError, match="outside the 6 classes of output 'logits'"):
        evaluate({"fp32": fp32_model}, ArrayDataset(x, labels), runner_factory=SessionRunner)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reference": "fp16"}, r"reference precision 'fp16' is not among the models \(fp32, int8\)"),
        ({"batch_size": 0}, "batch size must be a positive integer, not 0"),
        ({"warmup": -1}, "warmup must be a non-negative number of batches, not -1"),
    ],
)
def test_usage_errors(
    fp32_model: onnx.ModelProto, data: tuple[np.ndarray, np.ndarray], kwargs: dict[str, Any], message: str
) -> None:
    x, _ = data
    with pytest.raises(UsageError, match=message):
        evaluate(
            {"fp32": fp32_model, "int8": fp32_model}, ArrayDataset(x), runner_factory=SessionRunner, **kwargs
        )


def test_no_models_error(data: tuple[np.ndarray, np.ndarray]) -> None:
    with pytest.raises(UsageError, match="at least one model"):
        evaluate({}, ArrayDataset(data[0]), runner_factory=SessionRunner)


def test_too_few_batches_for_latency(
    fp32_model: onnx.ModelProto, data: tuple[np.ndarray, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    x, _ = data
    with caplog.at_level(logging.WARNING, logger="quant.eval.evaluate"):
        result = evaluate(
            {"fp32": fp32_model}, ArrayDataset(x), batch_size=64, runner_factory=SessionRunner, warmup=1
        )
    assert result.precision("fp32").latency is None
    assert "no latency measured" in caplog.text


def test_progress_bar_on_stderr(
    fp32_model: onnx.ModelProto, data: tuple[np.ndarray, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    x, _ = data
    evaluate(
        {"fp32": fp32_model}, ArrayDataset(x), batch_size=10, runner_factory=SessionRunner, progress=True
    )
    captured = capsys.readouterr()
    assert "evaluate" in captured.err and "4/4" in captured.err
    assert captured.out == ""


def test_from_dict_errors(fp32_model: onnx.ModelProto, data: tuple[np.ndarray, np.ndarray]) -> None:
    result = evaluate(
        {"fp32": fp32_model, "b": fp32_model},
        ArrayDataset(data[0]),
        batch_size=20,
        runner_factory=SessionRunner,
    )
    d = result.to_dict()
    d["reference"] = "b"
    with pytest.raises(
        ReportError,
        match=r"field 'evaluation.reference' is 'b' but the precisions marked as reference are \['fp32'\]",
    ):
        EvalResult.from_dict(d)
    d = result.to_dict()
    del d["precisions"][1]["fidelity"][0]["sqnr_db"]
    loaded = EvalResult.from_dict(d)  # nullable fields may be absent
    assert loaded.precisions[1].fidelity[0].sqnr_db is None
    d["precisions"][1]["latency"] = {"batch_size": 20}
    with pytest.raises(
        ReportError, match=r"field 'evaluation.precisions\[1\].latency.num_batches' is missing"
    ):
        EvalResult.from_dict(d)


@pytest.mark.skipif(
    importlib.util.find_spec("quant.backends.onnxruntime") is None,
    reason="quant.backends.onnxruntime not written yet",
)
def test_default_runner_factory(fp32_model: onnx.ModelProto, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, labels = data
    result = evaluate({"fp32": fp32_model, "copy": fp32_model}, ArrayDataset(x, labels), batch_size=16)
    assert result.precision("copy").worst_sqnr == float("inf")


def test_evaluate_into_report_table_and_comparison(
    tmp_path: Path,
    fp32_model: onnx.ModelProto,
    perturbed_model: onnx.ModelProto,
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    from quant.report import Report, compare_reports, load_report, render_table, save_report
    from quant.report.schema import data_section, model_section

    x, labels = data
    dataset = ArrayDataset(x, labels)
    result = evaluate(
        {"fp32": fp32_model, "int8": perturbed_model}, dataset, batch_size=8, runner_factory=SessionRunner
    )
    report = Report.create(
        model=model_section("linear.onnx", graph_fingerprint="g", weights_fingerprint="w"),
        data=data_section(dataset.summary(), dataset.fingerprint()),
        evaluation=result,
    )
    loaded = load_report(save_report(report, tmp_path / "report.json"))
    assert loaded.evaluation == result
    table = render_table(loaded)
    assert "int8 - fp32: top-1" in table and "fp32 (ref)" in table
    assert compare_reports(loaded, report).ok
