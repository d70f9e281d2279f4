"""Calibrator logic without TensorRT: cache headers, batches into (fake) GPU buffers, cache writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from trt_fixtures import FakeCudart, ListDataset, read_pointer

from quant.backends.tensorrt.calibrator import (
    CalibratorCore,
    algorithm_of,
    cache_for_calibrator,
    kind_of_algorithm,
    rewrite_header,
    save_trt_calibration,
)
from quant.cache.io import read_cache, sidecar_path, write_cache
from quant.cache.trt import parse_trt_cache
from quant.datasets.base import Batch
from quant.errors import CalibrationError, DataError, UsageError

TRT_TEXT = "TRT-8601-EntropyCalibration2\ninput: 3c010a14\nconv1/Relu:0: 3d237c3a\nlogits: 0\n"


# --------------------------------------------------------------------------------------------
# Algorithms and headers (pure)
# --------------------------------------------------------------------------------------------


def test_algorithm_names() -> None:
    assert algorithm_of("entropy2") == "EntropyCalibration2"
    assert algorithm_of("minmax") == "MinMaxCalibration"
    assert algorithm_of("entropy") == "EntropyCalibration"
    with pytest.raises(UsageError, match="--calibrator must be one of"):
        algorithm_of("legacy")
    assert kind_of_algorithm("MinMaxCalibration") == "minmax"
    assert kind_of_algorithm("LegacyCalibration") is None
    assert kind_of_algorithm(None) is None


def test_rewrite_header_keeps_the_body_byte_for_byte() -> None:
    out = rewrite_header(TRT_TEXT, version=100300, algorithm="MinMaxCalibration")
    assert out == TRT_TEXT.replace("TRT-8601-EntropyCalibration2", "TRT-100300-MinMaxCalibration")
    crlf = TRT_TEXT.replace("\n", "\r\n")
    assert rewrite_header(crlf, version=100300, algorithm="EntropyCalibration2").startswith(
        "TRT-100300-EntropyCalibration2\r\ninput: 3c010a14\r\n"
    )
    assert rewrite_header("\ufeffTRT-8600-EntropyCalibration2", version=8601, algorithm="EntropyCalibration2") == (
        "TRT-8601-EntropyCalibration2\n"
    )


def _decide(text: str | bytes, *, algorithm: str = "EntropyCalibration2", version: int = 100300, force: bool = False):
    raw = text.encode() if isinstance(text, str) else text
    from quant.cache.detect import parse_cache_bytes

    parsed = parse_cache_bytes(raw, source="m.cache")
    return cache_for_calibrator(
        raw, parsed, amax=parsed.amax, header_version=version, algorithm=algorithm, force=force, source="m.cache"
    )


def test_same_header_is_used_as_is() -> None:
    text = TRT_TEXT.replace("8601", "100300")
    d = _decide(text)
    assert d.data == text.encode() and not d.rewritten and not d.converted
    assert "using cache 'm.cache' (2 tensors, TRT-100300-EntropyCalibration2)" in d.message


def test_version_follows_the_installed_tensorrt() -> None:
    d = _decide(TRT_TEXT, version=100300)
    assert d.data is not None and d.rewritten
    assert d.data.decode() == TRT_TEXT.replace("TRT-8601-", "TRT-100300-")
    assert "TensorRT version 8.6.1 -> 10.3.0" in d.message


def test_other_algorithm_is_not_used_silently() -> None:
    d = _decide(TRT_TEXT, algorithm="MinMaxCalibration")
    assert d.data is None
    assert "made by TensorRT's EntropyCalibration2, not the MinMaxCalibration calibrator" in d.message
    assert "--calibrator entropy2" in d.message and "--force-cache" in d.message


def test_force_rewrites_the_algorithm() -> None:
    d = _decide(TRT_TEXT, algorithm="MinMaxCalibration", force=True)
    assert d.data is not None and d.rewritten
    assert d.data.decode().splitlines()[0] == "TRT-100300-MinMaxCalibration"
    assert d.data.decode().splitlines()[1:] == TRT_TEXT.splitlines()[1:]
    assert "algorithm EntropyCalibration2 -> MinMaxCalibration (forced with --force-cache)" in d.message


def test_onnxruntime_table_is_converted() -> None:
    table = json.dumps({"input": 1.0, "conv1/Relu:0": 5.08}).encode()
    d = _decide(table, algorithm="MinMaxCalibration", version=8601)
    assert d.data is not None and d.converted
    parsed = parse_trt_cache(d.data.decode(), source="converted")
    assert parsed.header == "TRT-8601-MinMaxCalibration"
    assert parsed.amax["conv1/Relu:0"] == pytest.approx(5.08, rel=1e-6)
    assert "converted ONNX Runtime calibration table" in d.message


def test_legacy_cache_needs_force() -> None:
    legacy = "1 0.5 0.5\ninput: 3c010a14\n"
    d = _decide(legacy)
    assert d.data is None and "legacy calibrator" in d.message and "--force-cache" in d.message
    forced = _decide(legacy, force=True)
    assert forced.data is not None and forced.converted
    assert forced.data.decode().startswith("TRT-100300-EntropyCalibration2\ninput: 3c010a14")


# --------------------------------------------------------------------------------------------
# CalibratorCore on a fake CUDA runtime
# --------------------------------------------------------------------------------------------


def _data(n: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "input": rng.standard_normal((n, 3, 4, 4)),  # float64: the core converts to the network dtype
        "mask": rng.integers(0, 2, (n, 5)).astype(np.int32),
    }


def _core(dataset: ListDataset | None, **kw: object) -> CalibratorCore:
    args: dict[str, object] = {
        "kind": "entropy2",
        "dataset": dataset,
        "input_shapes": {"input": (4, 3, 4, 4), "mask": (4, 5)},
        "input_dtypes": {"input": np.float32, "mask": np.int32},
    }
    args.update(kw)
    return CalibratorCore(**args)  # type: ignore[arg-type]


def test_batches_are_copied_into_buffers_allocated_once(fake_cudart: FakeCudart) -> None:
    arrays = _data(10)
    ds = ListDataset(arrays)
    core = _core(ds)
    assert core.batch_size == 4 and core.get_batch_size() == 1 and core.algorithm == "EntropyCalibration2"
    first = core.get_batch(["mask", "input"])
    assert first is not None and len(first) == 2
    mask_ptr, input_ptr = first
    expect = arrays["input"][:4].astype(np.float32)
    assert read_pointer(input_ptr, expect.nbytes) == expect.tobytes()
    assert read_pointer(mask_ptr, 4 * 5 * 4) == arrays["mask"][:4].tobytes()
    second = core.get_batch(["mask", "input"])
    assert second == first  # same buffers, new content
    assert read_pointer(input_ptr, expect.nbytes) == arrays["input"][4:8].astype(np.float32).tobytes()
    assert fake_cudart.calls.count("cudaMalloc") == 2
    # The last 2 samples make no full batch of 4: dropped, calibration ends.
    assert core.get_batch(["mask", "input"]) is None
    assert core.get_batch(["mask", "input"]) is None
    assert (core.batches_served, core.samples_served, core.samples_dropped) == (2, 8, 2)
    assert core.error is None
    core.raise_if_failed()
    assert ds.batches_calls == 1
    core.close()
    assert sorted(fake_cudart.freed) == sorted([mask_ptr, input_ptr])
    core.close()  # idempotent
    assert core.get_batch(["input", "mask"]) is None


def test_context_manager_frees(fake_cudart: FakeCudart) -> None:
    with _core(ListDataset(_data(4))) as core:
        ptrs = core.get_batch(["input", "mask"])
        assert ptrs is not None
    assert sorted(fake_cudart.freed) == sorted(ptrs)


@pytest.mark.parametrize(
    ("arrays", "names", "error", "message"),
    [
        ({"input": np.zeros((4, 3, 4, 4))}, ["input", "mask"], DataError, "calibration data has no input 'mask'"),
        (
            {"input": np.zeros((4, 3, 5, 5)), "mask": np.zeros((4, 5))},
            ["input", "mask"],
            DataError,
            r"batch for input 'input' has shape \(4, 3, 5, 5\), the engine calibrates with \(4, 3, 4, 4\)",
        ),
        (
            {"input": np.full((4, 3, 4, 4), np.nan), "mask": np.zeros((4, 5))},
            ["input", "mask"],
            DataError,
            "contains NaN or infinity",
        ),
        ({"input": np.zeros((4, 3, 4, 4)), "mask": np.zeros((4, 5))}, ["image"], CalibrationError, "input 'image'"),
    ],
)
def test_errors_stop_calibration_and_are_reraised(
    fake_cudart: FakeCudart, arrays: dict[str, np.ndarray], names: list[str], error: type, message: str
) -> None:
    core = _core(ListDataset(arrays))
    assert core.get_batch(names) is None  # never raises into TensorRT
    assert isinstance(core.error, error)
    assert core.get_batch(names) is None
    with pytest.raises(error, match=message):
        core.raise_if_failed()


def test_too_few_samples_for_one_batch(fake_cudart: FakeCudart) -> None:
    core = _core(ListDataset(_data(3)))
    assert core.get_batch(["input", "mask"]) is None
    with pytest.raises(CalibrationError, match="no complete batch of 4 samples"):
        core.raise_if_failed()


def test_no_data_but_tensorrt_asks(fake_cudart: FakeCudart) -> None:
    core = _core(None)
    assert core.get_batch(["input", "mask"]) is None
    with pytest.raises(CalibrationError, match="TensorRT asked for calibration data but none was given"):
        core.raise_if_failed()


def test_unexpected_errors_become_calibration_errors(fake_cudart: FakeCudart) -> None:
    class Broken(ListDataset):
        def batches(self, batch_size: int) -> Iterator[Batch]:
            raise RuntimeError("disk on fire")

    core = _core(Broken(_data(4)))
    assert core.get_batch(["input", "mask"]) is None
    with pytest.raises(CalibrationError, match="calibration failed: disk on fire"):
        core.raise_if_failed()


def test_inconsistent_inputs() -> None:
    with pytest.raises(UsageError, match="must name the same inputs"):
        CalibratorCore(kind="minmax", dataset=None, input_shapes={"a": (1,)}, input_dtypes={"b": np.float32})


def test_read_calibration_cache() -> None:
    core = _core(None, cache_data=b"TRT-100300-EntropyCalibration2\nx: 3c010a14\n")
    assert core.read_calibration_cache() == b"TRT-100300-EntropyCalibration2\nx: 3c010a14\n"
    assert core.cache_returned and core.cache_reads == 1
    empty = _core(None)
    assert empty.read_calibration_cache() is None and not empty.cache_returned


def test_cache_written_back_unchanged_is_not_saved(tmp_path: Path) -> None:
    """TensorRT writes back the cache it read; the user's file and sidecar stay untouched."""
    target = tmp_path / "m.cache"
    core = _core(None, cache_data=b"x", write_to=target)
    core.read_calibration_cache()
    core.write_calibration_cache(b"TRT-100300-EntropyCalibration2\n")
    assert not target.exists() and core.written_path is None
    assert core.produced == b"TRT-100300-EntropyCalibration2\n"


def test_cache_saved_after_real_calibration(fake_cudart: FakeCudart, tmp_path: Path) -> None:
    target = tmp_path / "m.cache"
    seen: list[tuple[Path, bytes]] = []
    core = _core(ListDataset(_data(4)), write_to=target, writer=lambda p, b: seen.append((p, b)))
    assert core.get_batch(["input", "mask"]) is not None
    core.write_calibration_cache(memoryview(b"TRT-100300-EntropyCalibration2\ninput: 3c010a14\n"))  # type: ignore[arg-type]
    assert seen == [(target, b"TRT-100300-EntropyCalibration2\ninput: 3c010a14\n")]
    assert core.written_path == target


def test_default_writer_writes_raw_bytes(fake_cudart: FakeCudart, tmp_path: Path) -> None:
    target = tmp_path / "m.cache"
    core = _core(ListDataset(_data(4)), write_to=target)
    core.get_batch(["input", "mask"])
    core.write_calibration_cache(b"TRT-100300-EntropyCalibration2\n")
    assert target.read_bytes() == b"TRT-100300-EntropyCalibration2\n"


def test_cache_not_saved_without_a_path(fake_cudart: FakeCudart) -> None:
    core = _core(ListDataset(_data(4)))
    core.get_batch(["input", "mask"])
    core.write_calibration_cache(b"TRT-100300-EntropyCalibration2\n")
    assert core.written_path is None and core.produced is not None


def test_writer_errors_are_kept_for_later(fake_cudart: FakeCudart, tmp_path: Path) -> None:
    def broken(path: Path, data: bytes) -> None:
        raise OSError("read-only file system")

    core = _core(ListDataset(_data(4)), write_to=tmp_path / "m.cache", writer=broken)
    core.get_batch(["input", "mask"])
    core.write_calibration_cache(b"TRT-100300-EntropyCalibration2\n")  # does not raise
    with pytest.raises(CalibrationError, match="read-only file system"):
        core.raise_if_failed()


# --------------------------------------------------------------------------------------------
# Saving TensorRT's cache as quant's cache + sidecar
# --------------------------------------------------------------------------------------------


def test_save_trt_calibration_is_readable_with_its_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "m.cache"
    produced = TRT_TEXT.replace("8601", "100300").encode()
    cache, side = save_trt_calibration(
        path, produced, kind="entropy2", num_samples=64, model_fingerprint={"graph": "g", "weights": "w"}, data_fingerprint="d"
    )
    assert (cache, side) == (path, sidecar_path(path))
    loaded = read_cache(path)
    assert loaded.parsed.header == "TRT-100300-EntropyCalibration2"
    assert set(loaded.amax) == {"input", "conv1/Relu:0"}  # the zero-scale entry means "no range"
    parsed = parse_trt_cache(produced.decode(), source="x")
    for name, amax in parsed.amax.items():
        assert loaded.amax[name] == amax
    calib = loaded.calibration
    assert calib is not None
    assert calib["method"] == "tensorrt-entropy2" and calib["producer"] == "tensorrt"
    assert calib["num_samples"] == 64 and calib["data_fingerprint"] == "d"
    assert calib["zero_scale_names"] == ["logits"]


def test_save_trt_calibration_rejects_garbage(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="not text"):
        save_trt_calibration(tmp_path / "m.cache", b"\xff\xfe", kind="entropy2", num_samples=1)
    with pytest.raises(CalibrationError, match="without a TRT- header"):
        save_trt_calibration(tmp_path / "m.cache", b"1 0.5 0.5\nx: 3c010a14\n", kind="entropy2", num_samples=1)


def test_quant_cache_roundtrip_through_the_decision(tmp_path: Path) -> None:
    """A cache written by quant (any TensorRT version) is handed to the matching calibrator."""
    path = tmp_path / "m.cache"
    write_cache(path, {"method": "minmax", "amax": {"input": 1.0, "conv1/Relu:0": 3.5}}, trt_version=8601)
    loaded = read_cache(path)
    kind = kind_of_algorithm(loaded.parsed.algorithm)
    assert kind == "minmax"
    d = cache_for_calibrator(
        path.read_bytes(), loaded.parsed, amax=loaded.amax, header_version=101300,
        algorithm=algorithm_of(kind), force=False, source=str(path),
    )
    assert d.data is not None
    assert parse_trt_cache(d.data.decode(), source="x").amax == loaded.parsed.amax
    assert d.data.decode().startswith("TRT-101300-MinMaxCalibration\n")
