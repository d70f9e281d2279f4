"""A real TensorRT acceptance check of an ONNX (Q/DQ) model: NVIDIA's ONNX parser and builder,
without writing an engine (``quant build --check-trt``, ``quant run``, ``quant inspect --trt``).

TensorRT-RTX is preferred where it is installed: it parses and builds ahead of time on a machine
without a GPU, with TensorRT's own ONNX parser and strongly typed Q/DQ builder. TensorRT (8.6-11)
is used otherwise, on its GPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from quant.backends.tensorrt.flavors import flavor_available, import_flavor
from quant.backends.tensorrt.network import NetworkView
from quant.backends.tensorrt.options import ShapeProfile, default_batch_profiles, resolve_profiles
from quant.errors import BackendUnavailableError, ModelError, QuantError

log = logging.getLogger(__name__)


def check_flavor() -> str:
    """The flavour the check uses: ``tensorrt-rtx`` when installed, else ``tensorrt`` when
    installed; BackendUnavailableError naming the extra otherwise."""
    for name in ("tensorrt-rtx", "tensorrt"):
        if flavor_available(name):
            return name
    raise BackendUnavailableError(
        "checking with TensorRT needs TensorRT-RTX (pip install 'quant[tensorrt-rtx]', no GPU needed) "
        "or TensorRT with a GPU (pip install 'quant[tensorrt]')"
    )


def trt_network_view(
    model: str | Path,
    *,
    flavor: str | None = None,
    build: bool = False,
    shapes: Sequence[ShapeProfile] = (),
    compute_capabilities: Sequence[str] = (),
) -> NetworkView:
    """What TensorRT's ONNX parser makes of ``model``: layers by type, Q/DQ layers, or the
    parser's errors (returned, not raised). With ``build``, the builder runs too (nothing is
    written) and a failure raises QuantError with TensorRT's message."""
    from quant.backends.tensorrt import network as nw

    trt, caps = import_flavor(flavor or check_flavor())
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"model '{path}': no such file")
    logger = nw.make_logger(trt)
    builder = trt.Builder(logger)
    nw.load_plugins(trt, logger, ())
    network, parser, ok = nw.parse_onnx_unchecked(
        trt, caps, builder, logger, model_path=path, onnx_bytes=None, strongly_typed=True
    )
    if not ok:
        errors = tuple(nw.parser_errors(parser)) or (logger.last_error() or "the parser gave no details",)
        return NetworkView(
            source=str(path), trt=caps.describe, num_layers=0, layer_types={}, quantize_layers=(),
            dequantize_layers=(), inputs=(), outputs=(), parser_errors=errors,
        )
    view = nw.network_view(caps, network, source=str(path))
    if not build:
        return view
    inputs = nw.network_inputs(trt, network)
    shapes, auto = default_batch_profiles(inputs, shapes)
    profiles = resolve_profiles(inputs, shapes)
    config = builder.create_builder_config()
    nw.configure(trt, config, flags=(), clear_flags=("TF32",), workspace_mb=None, optimization_level=None)
    if caps.has_compute_capabilities:
        nw.set_compute_capabilities(trt, config, compute_capabilities)
    if profiles:
        config.add_optimization_profile(nw.make_profile(trt, builder, profiles))
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        detail = " ".join((logger.last_error() or "see the TensorRT messages above (run with --verbose)").split())
        raise QuantError(f"{caps.flavor.label} could not build an engine from '{path}': {detail}")
    notes = tuple(f"profile {p.text} (only the batch is dynamic: batch 1, 8, 32 assumed; --shapes to choose)" for p in auto)
    return replace(
        view, built=True, engine_bytes=int(serialized.nbytes), build_seconds=round(seconds, 3), messages=notes
    )


def check_with_tensorrt(
    model: str | Path,
    *,
    flavor: str | None = None,
    shapes: Sequence[ShapeProfile] = (),
    compute_capabilities: Sequence[str] = (),
) -> NetworkView:
    """Parse and build ``model`` with real TensorRT (no engine is written): quant's Q/DQ rules
    first, then TensorRT's parser and builder. ModelError (the parser, naming the node) or
    QuantError (the builder) with TensorRT's own message on failure."""
    from quant.backends.tensorrt.builder import has_qdq
    from quant.backends.tensorrt.qdq_rules import check_qdq_rules
    from quant.graph.load import load_model

    name = flavor or check_flavor()
    _, caps = import_flavor(name)
    proto = load_model(model)
    if has_qdq(proto):
        check_qdq_rules(proto, source=str(model), trt=caps.flavor.label)
    view = trt_network_view(model, flavor=name, build=True, shapes=shapes, compute_capabilities=compute_capabilities)
    if not view.parsed:
        raise ModelError(f"{caps.flavor.label} cannot parse '{model}': {view.parser_errors[0]}")
    log.info(
        "%s accepted '%s': %d layers (%d Q, %d DQ), engine %d bytes in %.2f s",
        view.trt, model, view.num_layers, len(view.quantize_layers), len(view.dequantize_layers),
        view.engine_bytes or 0, view.build_seconds or 0.0,
    )
    return view


__all__ = ["check_flavor", "check_with_tensorrt", "trt_network_view"]
