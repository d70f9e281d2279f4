"""Swap float modules for their fake-quantized wrappers, by type and by module name.

:func:`quantize_model` deep-copies the model and replaces, in the copy, every module whose type
is exactly one of :data:`quant.qat.modules.QUANT_MODULES` and whose qualified name (as in
``model.named_modules()``, e.g. ``layer1.0.conv1``) matches an ``include`` pattern and no
``exclude`` pattern (shell wildcards, :mod:`fnmatch`). torch.nn itself is never patched: only the
returned model contains wrappers.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
from collections.abc import Iterator, Sequence

from torch import nn

from quant.errors import UsageError
from quant.qat.modules import QUANT_MODULES, ActQuantizer, QuantModule

log = logging.getLogger(__name__)


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def quantize_model(
    model: nn.Module,
    *,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
) -> nn.Module:
    """Return a copy of ``model`` with Conv1d/2d/3d, ConvTranspose2d, Linear and ``quant.qat.Add``
    modules replaced by fake-quantized wrappers (the input model is not modified).

    Raises UsageError when nothing would be quantized, and when an ``include`` or ``exclude``
    pattern matches no quantizable module (usually a typo in a module name).
    """
    if isinstance(include, str) or isinstance(exclude, str):
        raise UsageError("include/exclude must be sequences of patterns, e.g. ('features.*',), not a string")
    if any(isinstance(m, QuantModule) for m in model.modules()):
        raise UsageError("model already contains quant.qat wrappers; pass the float model to quantize_model()")
    new_model = copy.deepcopy(model)
    candidates = [
        (name, mod) for name, mod in new_model.named_modules() if name and type(mod) in QUANT_MODULES
    ]
    if not candidates and type(new_model) in QUANT_MODULES:
        raise UsageError(
            f"model is a bare {type(new_model).__name__}; wrap it in a container module (e.g. nn.Sequential) to quantize it"
        )
    types = ", ".join(sorted(t.__name__ for t in QUANT_MODULES))
    if not candidates:
        raise UsageError(f"no module to quantize: the model has no {types} module")
    names = [name for name, _ in candidates]
    for label, patterns in (("include", include), ("exclude", exclude)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise UsageError(
                    f"{label} pattern {pattern!r} matches no quantizable module; "
                    f"quantizable modules are: {', '.join(names[:12]) or '(none)'}{' ...' if len(names) > 12 else ''}"
                )
    chosen = [(n, m) for n, m in candidates if _matches(n, include) and not _matches(n, exclude)]
    if not chosen:
        raise UsageError(f"no module to quantize: the model has no {types} module left after include/exclude")
    for name, mod in chosen:
        wrapper_type = QUANT_MODULES[type(mod)]
        wrapper = wrapper_type.from_float(mod)  # type: ignore[attr-defined]
        parent_name, _, attr = name.rpartition(".")
        parent = new_model.get_submodule(parent_name) if parent_name else new_model
        setattr(parent, attr, wrapper)
        for qname, quantizer in wrapper.quantizers().items():
            quantizer.qualified_name = f"{name}.{qname}"
    log.debug("quantized %d of %d quantizable modules", len(chosen), len(candidates))
    return new_model


def quant_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The wrappers of a quantized model (convolutions, linears, adds) by qualified name."""
    from quant.qat.modules import QuantAdd

    for name, mod in model.named_modules():
        if isinstance(mod, QuantModule | QuantAdd):
            yield name, mod


def quantizers(model: nn.Module) -> dict[str, ActQuantizer]:
    """Every activation quantizer of a quantized model by qualified name (``<module>.input_quantizer``)."""
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, ActQuantizer)}


def amax_dict(model: nn.Module) -> dict[str, float | None]:
    """Current activation amax of every quantizer (None when uncalibrated or disabled)."""
    out: dict[str, float | None] = {}
    for name, q in quantizers(model).items():
        out[name] = float(q.amax.item()) if q.is_calibrated and q.enabled else None
    return out
