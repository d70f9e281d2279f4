"""What changed since a cache or a statistics file was made: the model graph or weights, and the
calibration data part by part (the data manifest). Used by calibrate (reuse decisions) and by
the stages that read a cache (stale-cache warnings)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quant.config import DataOptions
from quant.pipeline.prepare import PreparedModel

if TYPE_CHECKING:
    from quant.cache.io import LoadedCache
    from quant.datasets.base import Dataset


def data_manifest(dataset: Dataset, data: DataOptions) -> dict[str, Any]:
    """The parts the data fingerprint covers, recorded so that a change can be named.

    The dataset's own ``fingerprint()`` stays the authority on *whether* the data changed (it also
    covers file sizes and mtimes, or file bytes); this manifest only explains *what* changed: the
    file list (as a count and a digest, not the names: calibration sets can be large), the
    preprocessing spec, ``--max-samples``, ``--seed`` and the sample count.
    """
    from quant.fingerprint import hash_bytes

    summary = dataset.summary()
    files = getattr(dataset, "files", None)
    names = [str(f) for f in files] if files is not None else [Path(summary.source).name]
    spec = getattr(dataset, "preprocess", None)
    return {
        "kind": summary.kind,
        "source": summary.source,
        "num_files": len(names),
        "files_sha256": hash_bytes("\n".join(names).encode("utf-8")),
        "preprocess": spec.to_dict() if spec is not None and hasattr(spec, "to_dict") else None,
        "max_samples": data.max_samples,
        "seed": data.seed,
        "num_samples": len(dataset),
    }


def explain_data_change(old: Any, new: Mapping[str, Any]) -> list[str]:
    """Which part of the data changed, from two manifests (see :func:`data_manifest`)."""
    if not isinstance(old, Mapping):
        return ["calibration data changed"]
    reasons: list[str] = []
    if old.get("kind") != new.get("kind"):
        reasons.append(f"data kind changed ({old.get('kind')} -> {new.get('kind')})")

    def samples(m: Mapping[str, Any]) -> str:
        return "all" if m.get("max_samples") is None else str(m.get("max_samples"))

    selection_changed = False
    if old.get("max_samples") != new.get("max_samples"):
        reasons.append(f"--max-samples changed ({samples(old)} -> {samples(new)})")
        selection_changed = True
    if old.get("seed") != new.get("seed"):
        reasons.append(f"--seed changed ({old.get('seed')} -> {new.get('seed')})")
        selection_changed = True
    old_pre, new_pre = old.get("preprocess"), new.get("preprocess")
    if old_pre != new_pre:
        if isinstance(old_pre, Mapping) and isinstance(new_pre, Mapping):
            keys = sorted(k for k in set(old_pre) | set(new_pre) if old_pre.get(k) != new_pre.get(k))
            reasons.append(f"preprocessing changed ({', '.join(keys)})")
        else:
            reasons.append("preprocessing changed")
    if not selection_changed and old.get("files_sha256") != new.get("files_sha256"):
        n_old, n_new = old.get("num_files"), new.get("num_files")
        if n_old != n_new:
            reasons.append(f"data files added or removed ({n_old} -> {n_new} files)")
        else:
            reasons.append(f"data file list changed (same number of files, {n_new}, other names)")
    if not reasons:
        reasons.append("data file contents changed (size, modification time or bytes of the same files)")
    return reasons


def fingerprint_changes(
    stored: Mapping[str, Any],
    prepared: PreparedModel,
    data_fingerprint: str | None,
    manifest: Mapping[str, Any] | None = None,
) -> list[str]:
    """What changed since ``stored`` (a sidecar's calibration or a statistics file's metadata)
    was made: model graph / weights, and the data part by part when a manifest is given."""
    from quant.fingerprint import compare_fingerprints

    reasons = compare_fingerprints(stored, model=prepared.fingerprint, data=data_fingerprint)
    if "calibration data changed" in reasons and manifest is not None:
        i = reasons.index("calibration data changed")
        reasons[i : i + 1] = explain_data_change(stored.get("data_manifest"), manifest)
    return reasons


def stale_reasons(
    loaded: LoadedCache,
    prepared: PreparedModel,
    data_fingerprint: str | None,
    manifest: Mapping[str, Any] | None = None,
) -> list[str]:
    """Why a quant cache no longer fits the model (and the data, when its fingerprint is given)."""
    calib = (loaded.sidecar or {}).get("calibration") or {}
    return fingerprint_changes(calib, prepared, data_fingerprint, manifest)
