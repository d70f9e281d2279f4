"""quant.backends.tensorrt.cuda: on a fake runtime (always) and on a real GPU (marker ``cuda``)."""

from __future__ import annotations

import numpy as np
import pytest
from trt_fixtures import FakeCudart, cudaError_t, read_pointer

from quant.backends.tensorrt import cuda as cu
from quant.errors import BackendUnavailableError, QuantError

# --------------------------------------------------------------------------------------------
# Fake runtime
# --------------------------------------------------------------------------------------------


def test_check_unpacks_values(fake_cudart: FakeCudart) -> None:
    assert cu.check((cudaError_t.cudaSuccess,), "x") is None
    assert cu.check((cudaError_t.cudaSuccess, 7), "x") == 7
    assert cu.check((cudaError_t.cudaSuccess, 1, 2), "x") == (1, 2)
    assert cu.check(cudaError_t.cudaSuccess, "x") is None


def test_check_errors(fake_cudart: FakeCudart) -> None:
    with pytest.raises(cu.CudaError, match=r"CUDA call cudaFoo failed \(cudaErrorLaunchFailure: text of cudaErrorLaunchFailure\)"):
        cu.check((cudaError_t.cudaErrorLaunchFailure, None), "cudaFoo")
    with pytest.raises(cu.CudaError, match="out of GPU memory in cudaMalloc"):
        cu.check((cudaError_t.cudaErrorMemoryAllocation, None), "cudaMalloc")
    with pytest.raises(BackendUnavailableError, match=r"no usable NVIDIA GPU: cudaSetDevice\(0\) failed \(cudaErrorNoDevice"):
        cu.check((cudaError_t.cudaErrorNoDevice,), "cudaSetDevice(0)")


def test_device_info_and_set_device(fake_cudart: FakeCudart) -> None:
    assert cu.device_count() == 1
    cu.set_device(0)
    assert fake_cudart.current_device == 0
    info = cu.device_info(0)
    assert info.name == "Fake GPU 80GB"
    assert info.compute_capability == "9.0"
    assert info.memory_mb == 80 * 1024
    assert info.describe() == "Fake GPU 80GB (sm_90)"


def test_set_device_out_of_range(fake_cudart: FakeCudart) -> None:
    with pytest.raises(QuantError, match=r"CUDA device 3 does not exist \(this machine has 1\); use --device 0..0"):
        cu.set_device(3)


def test_set_device_without_gpu(fake_cudart: FakeCudart) -> None:
    fake_cudart.devices = 0
    assert cu.device_count() == 0
    with pytest.raises(BackendUnavailableError, match="no usable NVIDIA GPU"):
        cu.set_device(0)


def test_buffer_roundtrip_sync_and_async(fake_cudart: FakeCudart) -> None:
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    with cu.Stream() as stream, cu.DeviceBuffer(data.nbytes) as buf:
        buf.copy_from_host(data)
        assert read_pointer(buf.ptr, data.nbytes) == data.tobytes()
        out = buf.copy_to_host(np.empty_like(data))
        np.testing.assert_array_equal(out, data)
        buf.copy_from_host(data * 2, stream)
        out2 = buf.copy_to_host(np.empty_like(data), stream)
        stream.synchronize()
        np.testing.assert_array_equal(out2, data * 2)
        ptr = buf.ptr
    assert ptr in fake_cudart.freed
    assert buf.closed
    assert "cudaStreamDestroy" in fake_cudart.calls
    kinds = [k for k, _ in fake_cudart.copies]
    assert kinds == ["cudaMemcpyHostToDevice", "cudaMemcpyDeviceToHost"] * 2


def test_buffer_errors(fake_cudart: FakeCudart) -> None:
    buf = cu.DeviceBuffer(8)
    with pytest.raises(cu.CudaError, match="16 bytes do not fit in a GPU buffer of 8 bytes"):
        buf.copy_from_host(np.zeros(4, dtype=np.float32))
    with pytest.raises(cu.CudaError, match="C-contiguous"):
        buf.copy_from_host(np.zeros((4, 4), dtype=np.float32)[:, ::2])
    with pytest.raises(cu.CudaError, match="writable C-contiguous"):
        ro = np.zeros(2, dtype=np.float32)
        ro.flags.writeable = False
        buf.copy_to_host(ro)
    buf.free()
    buf.free()  # idempotent
    with pytest.raises(cu.CudaError, match="used after free"):
        _ = buf.ptr
    with pytest.raises(cu.CudaError, match="cannot allocate -1 bytes"):
        cu.DeviceBuffer(-1)


def test_zero_byte_buffer_has_a_real_pointer(fake_cudart: FakeCudart) -> None:
    buf = cu.DeviceBuffer(0)
    assert buf.ptr != 0 and buf.nbytes == 0
    buf.free()


def test_malloc_failure(fake_cudart: FakeCudart) -> None:
    fake_cudart.fail["cudaMalloc"] = cudaError_t.cudaErrorMemoryAllocation
    with pytest.raises(cu.CudaError, match="out of GPU memory"):
        cu.DeviceBuffer(1 << 40)


def test_events(fake_cudart: FakeCudart) -> None:
    stream = cu.Stream()
    start, end = cu.Event(), cu.Event()
    start.record(stream)
    end.record(stream)
    end.synchronize()
    assert end.elapsed_ms_since(start) == 1.25
    start.close()
    end.close()
    with pytest.raises(cu.CudaError, match="event used after close"):
        start.record(stream)
    stream.close()
    with pytest.raises(cu.CudaError, match="stream used after close"):
        _ = stream.handle


def test_missing_cuda_python(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setattr(cu, "_cudart", None)
    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with pytest.raises(BackendUnavailableError) as err:
        cu.import_cudart()
    assert str(err.value) == cu.CUDA_MISSING
    assert "pip install 'quant[tensorrt]'" in str(err.value)


# --------------------------------------------------------------------------------------------
# Real GPU
# --------------------------------------------------------------------------------------------


@pytest.mark.cuda
def test_real_device_info() -> None:
    cu.set_device(0)
    info = cu.device_info(0)
    assert info.name and "." in info.compute_capability and info.memory_mb > 0


@pytest.mark.cuda
def test_real_buffer_roundtrip_and_events() -> None:
    cu.set_device(0)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((64, 1024)).astype(np.float32)
    with cu.Stream() as stream, cu.DeviceBuffer(data.nbytes) as a:
        a.copy_from_host(data, stream)
        out = np.empty_like(data)
        start, end = cu.Event(), cu.Event()
        start.record(stream)
        a.copy_to_host(out, stream)
        end.record(stream)
        stream.synchronize()
        elapsed = end.elapsed_ms_since(start)
        start.close()
        end.close()
    np.testing.assert_array_equal(out, data)
    assert elapsed >= 0.0


@pytest.mark.cuda
def test_real_errors_are_one_line() -> None:
    cu.set_device(0)
    with pytest.raises(cu.CudaError, match="out of GPU memory") as err:
        cu.DeviceBuffer(1 << 50)  # 1 PiB
    assert "\n" not in str(err.value)


@pytest.mark.cuda
def test_real_calibrator_batches_land_on_the_gpu() -> None:
    """CalibratorCore with real cudaMalloc'd buffers: the pointers hold the batches."""
    from trt_fixtures import ListDataset

    from quant.backends.tensorrt.calibrator import CalibratorCore

    cu.set_device(0)
    rt = cu.import_cudart()
    images = np.random.default_rng(0).standard_normal((12, 3, 8, 8))
    core = CalibratorCore(
        kind="entropy2",
        dataset=ListDataset({"input": images}),
        input_shapes={"input": (4, 3, 8, 8)},
        input_dtypes={"input": np.float32},
    )
    with core:
        for i in range(3):
            ptrs = core.get_batch(["input"])
            assert ptrs is not None
            back = np.empty((4, 3, 8, 8), dtype=np.float32)
            cu.check(
                rt.cudaMemcpy(back.ctypes.data, ptrs[0], back.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost),
                "cudaMemcpy",
            )
            np.testing.assert_array_equal(back, images[4 * i : 4 * i + 4].astype(np.float32))
        assert core.get_batch(["input"]) is None
        core.raise_if_failed()
    assert core.batches_served == 3
