"""A CPU stand-in for the ``tensorrt`` module, to run quant's builder, runner and inspection flow.

It is not TensorRT: it implements the slice of the Python API quant calls, with behaviour close
enough to exercise quant's orchestration (flags, profiles, calibrator callbacks, cache headers,
engine files and sidecars, I/O binding) on machines without a GPU:

- ``OnnxParser`` reads the ONNX model into a network of inputs and one layer per node; ops of a
  non-standard domain fail to parse (as an unknown custom layer would);
- ``Builder.build_serialized_network`` drives an attached calibrator like TensorRT does
  (read_calibration_cache; when there is no cache of the calibrator's algorithm, get_batch until
  it returns nothing, computing max |x| of every tensor with ONNX Runtime from the bytes at the
  returned pointers; write_calibration_cache) and returns a "plan" holding the model;
- ``IExecutionContext.execute_async_v3`` runs the model with ONNX Runtime, reading inputs from and
  writing outputs to the bound addresses (host memory under :class:`trt_fixtures.FakeCudart`).

Use :func:`make_module` with the version to pretend to be (11.x drops the INT8/FP16 flags).
"""

from __future__ import annotations

import ctypes
import enum
import json
import types
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

PLAN_MAGIC = b"FAKEPLAN"


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    INT64 = 8


_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
       DataType.INT32: np.int32, DataType.BOOL: np.bool_, DataType.INT64: np.int64}
_FROM_ONNX = {TensorProto.FLOAT: DataType.FLOAT, TensorProto.FLOAT16: DataType.HALF, TensorProto.INT8: DataType.INT8,
              TensorProto.INT32: DataType.INT32, TensorProto.BOOL: DataType.BOOL, TensorProto.INT64: DataType.INT64}


def nptype(dt: DataType) -> Any:
    return _NP[DataType(dt)]


class BuilderFlag10(enum.IntEnum):
    FP16 = 0
    INT8 = 1
    TF32 = 7


class BuilderFlag11(enum.IntEnum):
    TF32 = 7


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class ProfilingVerbosity(enum.IntEnum):
    LAYER_NAMES_ONLY = 0
    NONE = 1
    DETAILED = 2


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class LayerType(enum.IntEnum):
    CONSTANT = 0
    GENERIC = 1


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class TensorLocation(enum.IntEnum):
    DEVICE = 0
    HOST = 1


class TensorFormat(enum.IntEnum):
    LINEAR = 0


class LayerInformationFormat(enum.IntEnum):
    ONELINE = 0
    JSON = 1


class Dims(tuple[int, ...]):
    def __new__(cls, shape: Any = ()) -> Dims:
        return super().__new__(cls, (int(d) for d in shape))


class ILogger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    def __init__(self) -> None:
        self.base_initialized = True

    def log(self, severity: Any, msg: str) -> None:
        pass


class IInt8Calibrator:
    ALGORITHM = ""

    def __init__(self) -> None:
        self.base_initialized = True


class IInt8EntropyCalibrator2(IInt8Calibrator):
    ALGORITHM = "EntropyCalibration2"


class IInt8MinMaxCalibrator(IInt8Calibrator):
    ALGORITHM = "MinMaxCalibration"


class IInt8EntropyCalibrator(IInt8Calibrator):
    ALGORITHM = "EntropyCalibration"


def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
    return True


# --------------------------------------------------------------------------------------------
# Network and parser
# --------------------------------------------------------------------------------------------


class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: DataType) -> None:
        self.name = name
        self.shape = Dims(shape)
        self.dtype = dtype
        self.is_shape_tensor = False
        self.dynamic_range: tuple[float, float] | None = None

    def set_dynamic_range(self, lo: float, hi: float) -> bool:
        self.dynamic_range = (lo, hi)
        return True


class ILayer:
    def __init__(self, name: str, type_: LayerType, outputs: list[ITensor]) -> None:
        self.name = name
        self.type = type_
        self._outputs = outputs

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_output(self, i: int) -> ITensor:
        return self._outputs[i]


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[ITensor] = []
        self.layers: list[ILayer] = []
        self.model: onnx.ModelProto | None = None

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, i: int) -> ITensor:
        return self.inputs[i]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, i: int) -> ILayer:
        return self.layers[i]


class ParserError:
    def __init__(self, desc: str, node: int, node_name: str) -> None:
        self._desc, self._node, self._name = desc, node, node_name

    def desc(self) -> str:
        return self._desc

    def node(self) -> int:
        return self._node

    def node_name(self) -> str:
        return self._name


def _dims(vi: onnx.ValueInfoProto) -> tuple[int, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
                 for d in vi.type.tensor_type.shape.dim)


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: Any) -> None:
        self.network = network
        self.errors: list[ParserError] = []
        self.parsed_from: str = ""

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> ParserError:
        return self.errors[i]

    def parse_from_file(self, path: str) -> bool:
        self.parsed_from = "file"
        return self._load(onnx.load(path))

    def parse(self, data: bytes, path: str | None = None) -> bool:
        self.parsed_from = "bytes"
        return self._load(onnx.load_from_string(bytes(data)))

    def _load(self, model: onnx.ModelProto) -> bool:
        for i, node in enumerate(model.graph.node):
            if node.domain not in ("", "ai.onnx"):
                self.errors.append(ParserError(
                    f"No importer registered for op: {node.op_type}. Attempting to import as plugin.", i, node.name))
                return False
        net = self.network
        inits = {t.name for t in model.graph.initializer}
        for vi in model.graph.input:
            if vi.name not in inits:
                net.inputs.append(ITensor(vi.name, _dims(vi), _FROM_ONNX[vi.type.tensor_type.elem_type]))
        for node in model.graph.node:
            kind = LayerType.CONSTANT if node.op_type == "Constant" else LayerType.GENERIC
            net.layers.append(ILayer(node.name or node.op_type, kind, [ITensor(o, (), DataType.FLOAT) for o in node.output]))
        net.model = model
        return True


# --------------------------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------------------------


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}

    def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
        assert isinstance(lo, Dims) and isinstance(opt, Dims) and isinstance(hi, Dims)
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


class ITimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)

    def serialize(self) -> memoryview:
        return memoryview(b"fake-timing-cache:" + self.data[-8:])


class IBuilderConfig:
    def __init__(self, flag_enum: Any) -> None:
        self._flag_enum = flag_enum
        self.flags: set[Any] = {flag_enum.TF32}
        self.pool_limits: dict[Any, int] = {}
        self.builder_optimization_level = 3
        self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY
        self.int8_calibrator: Any = None
        self.profiles: list[IOptimizationProfile] = []
        self.calibration_profile: IOptimizationProfile | None = None
        self.timing_cache: ITimingCache | None = None

    def set_flag(self, flag: Any) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: Any) -> None:
        self.flags.discard(flag)

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self.pool_limits[pool] = size

    def create_timing_cache(self, data: bytes) -> ITimingCache:
        return ITimingCache(data)

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        if cache.data.startswith(b"other-gpu"):
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache:
        assert self.timing_cache is not None
        return self.timing_cache

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_calibration_profile(self, profile: IOptimizationProfile) -> bool:
        self.calibration_profile = profile
        return True


def _session(model: onnx.ModelProto, extra: list[str] | None = None) -> Any:
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    for name in extra or ():
        if name not in present:
            m.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _read(ptr: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(ctypes.string_at(ptr, n), dtype=dtype).reshape(shape).copy()


class Builder:
    last: Builder | None = None

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self.module: Any = None  # set by make_module
        self.calibration_batches = 0
        Builder.last = self

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        self.network_flags = flags
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        self.config = IBuilderConfig(self.module.BuilderFlag)
        return self.config

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def _error(self, msg: str) -> None:
        self.logger.log(ILogger.Severity.ERROR, msg)

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> memoryview | None:
        assert network.model is not None
        profile = config.profiles[0].shapes if config.profiles else {}
        for t in network.inputs:
            if -1 in t.shape and t.name not in profile:
                self._error(f"Network has dynamic or shape inputs, but no optimization profile has been defined. ({t.name})")
                return None
        scales: dict[str, float] = {}
        calib = config.int8_calibrator
        if calib is not None and getattr(self.module.BuilderFlag, "INT8", None) in config.flags:
            if not getattr(calib, "base_initialized", False):
                raise RuntimeError("calibrator did not call its TensorRT base class __init__")
            scales = self._calibrate(network, config, calib)
            if scales is None:
                return None
        inputs = []
        for t in network.inputs:
            lo, opt, hi = profile.get(t.name, (tuple(t.shape),) * 3)
            inputs.append({"name": t.name, "shape": list(t.shape), "dtype": int(t.dtype),
                           "min": list(lo), "opt": list(opt), "max": list(hi)})
        outputs = [{"name": o.name, "shape": list(_dims(o)), "dtype": int(_FROM_ONNX[o.type.tensor_type.elem_type])}
                   for o in network.model.graph.output]
        doc = {
            "model": network.model.SerializeToString().hex(),
            "inputs": inputs,
            "outputs": outputs,
            "flags": sorted(f.name for f in config.flags),
            "scales": scales,
            "detailed": config.profiling_verbosity == ProfilingVerbosity.DETAILED,
            "dynamic_ranges": {t.name: t.dynamic_range for lay in network.layers for t in lay._outputs if t.dynamic_range},
        }
        return memoryview(PLAN_MAGIC + json.dumps(doc).encode())

    def _calibrate(self, network: INetworkDefinition, config: IBuilderConfig, calib: Any) -> Any:
        # the TensorRT calibrator base anywhere in the subclass's MRO (mixins may come first)
        algorithm = next((c.ALGORITHM for c in type(calib).__mro__ if "ALGORITHM" in vars(c)), "")
        version = self.module.__version__.split(".")
        major, minor, patch = int(version[0]), int(version[1]), int(version[2])
        number = major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch
        header = f"TRT-{number}-{algorithm}"
        cache = calib.read_calibration_cache()
        if cache is not None and bytes(cache).decode().split("\n", 1)[0].strip() == header:
            text = bytes(cache).decode()
            calib.write_calibration_cache(memoryview(bytes(cache)))  # TensorRT writes back what it used
            return {ln.rpartition(": ")[0]: 0.0 for ln in text.splitlines()[1:] if ln}
        names = [t.name for t in network.inputs]
        shapes = {}
        cal_profile = config.calibration_profile.shapes if config.calibration_profile else {}
        for t in network.inputs:
            shapes[t.name] = cal_profile[t.name][1] if t.name in cal_profile else tuple(t.shape)
            if -1 in shapes[t.name]:
                self._error("Calibration profile must be set for dynamic inputs")
                return None
        assert calib.get_batch_size() >= 1
        assert network.model is not None
        tensors = [o for n in network.model.graph.node for o in n.output if o]
        sess = _session(network.model, tensors)
        out_names = [o.name for o in sess.get_outputs()]
        amax: dict[str, float] = {}
        while True:
            ptrs = calib.get_batch(names)
            if not ptrs:
                break
            self.calibration_batches += 1
            feed = {n: _read(p, shapes[n], nptype(t.dtype)) for n, p, t in zip(names, ptrs, network.inputs, strict=True)}
            for n, v in feed.items():
                amax[n] = max(amax.get(n, 0.0), float(np.abs(v).max()))
            for n, v in zip(out_names, sess.run(out_names, feed), strict=True):
                amax[n] = max(amax.get(n, 0.0), float(np.abs(v).max()))
        if not self.calibration_batches:
            self._error("Calibration failure occurred with no scaling factors detected.")
            return None
        import struct

        lines = [header] + [f"{n}: {struct.unpack('>I', struct.pack('>f', a / 127.0))[0]:x}" for n, a in amax.items()]
        calib.write_calibration_cache(memoryview(("\n".join(lines) + "\n").encode()))
        return amax


# --------------------------------------------------------------------------------------------
# Runtime
# --------------------------------------------------------------------------------------------


class EngineInspector:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine

    def get_engine_information(self, fmt: LayerInformationFormat) -> str:
        assert fmt == LayerInformationFormat.JSON
        model = self.engine.model
        int8 = "INT8" in self.engine.doc["flags"]
        fmt_text = "Four wide channel vectorized row major Int8 format" if int8 else "Row major linear FP32"
        if not self.engine.doc["detailed"]:
            layers: list[Any] = [n.name or n.op_type for n in model.graph.node]
        else:
            layers = [
                {"Name": n.name or n.op_type, "LayerType": "Fake" + n.op_type, "ParameterType": n.op_type,
                 "Inputs": [{"Name": i, "Dimensions": [], "Format/Datatype": fmt_text} for i in n.input[:1]],
                 "Outputs": [{"Name": o, "Dimensions": [], "Format/Datatype": fmt_text} for o in n.output],
                 "TacticName": "fake_tactic", "StreamId": 0, "Metadata": f"[ONNX Layer: {n.name}]"}
                for n in model.graph.node
            ]
        return json.dumps({"Layers": layers, "Bindings": [t["name"] for t in self.engine.io]})


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {t["name"]: tuple(t["shape"]) for t in engine.doc["inputs"]}
        self.addresses: dict[str, int] = {}
        self.executions = 0
        self._sess: Any = None

    def set_input_shape(self, name: str, shape: Any) -> bool:
        assert isinstance(shape, Dims)
        t = self.engine.by_name[name]
        if not all(lo <= d <= hi for d, lo, hi in zip(shape, t["min"], t["max"], strict=True)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = int(ptr)
        return True

    def get_tensor_shape(self, name: str) -> Dims:
        if name in self.shapes:
            return Dims(self.shapes[name])
        batch = next(iter(self.shapes.values()))[0]
        return Dims(batch if d == -1 else d for d in self.engine.by_name[name]["shape"])

    def execute_async_v3(self, stream_handle: int) -> bool:
        assert isinstance(stream_handle, int)
        if self._sess is None:
            self._sess = _session(self.engine.model)
        self.executions += 1
        feed = {t["name"]: _read(self.addresses[t["name"]], self.shapes[t["name"]], nptype(DataType(t["dtype"])))
                for t in self.engine.doc["inputs"]}
        names = [t["name"] for t in self.engine.doc["outputs"]]
        for name, value in zip(names, self._sess.run(names, feed), strict=True):
            arr = np.ascontiguousarray(value)
            ctypes.memmove(self.addresses[name], arr.ctypes.data, arr.nbytes)
        return True


class ICudaEngine:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.model = onnx.load_from_string(bytes.fromhex(doc["model"]))
        self.io = [*doc["inputs"], *doc["outputs"]]
        self.by_name = {t["name"]: t for t in self.io}
        self._inputs = {t["name"] for t in doc["inputs"]}

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    def get_tensor_name(self, i: int) -> str:
        return str(self.io[i]["name"])

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name in self._inputs else TensorIOMode.OUTPUT

    def get_tensor_location(self, name: str) -> TensorLocation:
        return TensorLocation.DEVICE

    def get_tensor_format(self, name: str) -> TensorFormat:
        return TensorFormat.LINEAR

    def get_tensor_format_desc(self, name: str) -> str:
        return "Row major linear FP32"

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType(self.by_name[name]["dtype"])

    def get_tensor_shape(self, name: str) -> Dims:
        return Dims(self.by_name[name]["shape"])

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[Dims]:
        t = self.by_name[name]
        return [Dims(t["min"]), Dims(t["opt"]), Dims(t["max"])]

    def create_execution_context(self) -> IExecutionContext:
        self.context = IExecutionContext(self)
        return self.context

    def create_engine_inspector(self) -> EngineInspector:
        return EngineInspector(self)


class Runtime:
    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, data: bytes) -> ICudaEngine | None:
        data = bytes(data)
        if not data.startswith(PLAN_MAGIC):
            self.logger.log(ILogger.Severity.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization (Magic tag does not match)")
            return None
        return ICudaEngine(json.loads(data[len(PLAN_MAGIC):]))


def make_module(version: str = "10.3.0.26") -> types.ModuleType:
    """A fresh fake ``tensorrt`` module pretending to be ``version``."""
    mod = types.ModuleType("tensorrt")
    major = int(version.split(".")[0])
    names = [
        "DataType", "nptype", "MemoryPoolType", "ProfilingVerbosity", "NetworkDefinitionCreationFlag", "LayerType",
        "TensorIOMode", "TensorLocation", "TensorFormat", "LayerInformationFormat", "Dims", "ILogger",
        "IInt8Calibrator", "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator", "IInt8EntropyCalibrator",
        "init_libnvinfer_plugins", "OnnxParser", "Runtime",
    ]
    for name in names:
        setattr(mod, name, globals()[name])
    mod.BuilderFlag = BuilderFlag11 if major >= 11 else BuilderFlag10  # type: ignore[attr-defined]
    mod.__version__ = version  # type: ignore[attr-defined]

    class _Builder(Builder):
        def __init__(self, logger: Any) -> None:
            super().__init__(logger)
            self.module = mod

    mod.Builder = _Builder  # type: ignore[attr-defined]
    return mod
