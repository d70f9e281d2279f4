"""A folder of image files, decoded in threads and streamed batch by batch.

Listing: every file under the root (recursively) whose extension is an image one
(:data:`IMAGE_EXTENSIONS`, case-insensitive), sorted by its relative POSIX path. Hidden files and
folders (name starting with ".") are ignored: macOS "._x.jpg" AppleDouble files are a classic
source of undecodable "images". Labels: when every image lies in a direct subfolder of the root,
the sorted names of those subfolders are the classes (class index = position, plain string
order as torchvision's ImageFolder: "10" sorts before "2"); subfolders without images still count
as classes so indices keep matching the folder names. Otherwise the dataset has no labels.

Memory: only ``batch_size + 2 * workers`` decoded images exist at a time (bounded read-ahead);
the whole set is never in memory. The last batch may be smaller than ``batch_size``, and with
``on_bad_image="skip"`` any batch can be a little smaller when images are skipped at the end of
the listing: consumers handle any batch size.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import struct
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from quant.datasets._common import (
    canonical_json,
    check_batch_size,
    hash_file,
    select_indices,
    selection_key,
)
from quant.datasets.base import Batch, DataSummary
from quant.datasets.preprocess import PreprocessSpec, preprocess_image
from quant.errors import DataError, UsageError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
ON_BAD_IMAGE: tuple[str, ...] = ("fail", "skip")


def default_workers() -> int:
    """Decoding threads: Pillow releases the GIL while decoding, so a few threads help."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class _Listing:
    files: tuple[str, ...]  # relative POSIX paths, sorted
    labels: tuple[int, ...] | None
    class_names: tuple[str, ...]


def _list_images(root: Path) -> _Listing:
    rel_paths: list[str] = []
    non_image = 0
    seen: set[str] = set()
    # Symlinked folders are followed (datasets are often assembled with links); a link back up
    # the tree is visited once, not forever.
    for dirpath, dirnames, filenames in os.walk(root, onerror=None, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath).relative_to(root)
        for name in filenames:
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                rel_paths.append((base / name).as_posix())
            else:
                non_image += 1
    if not rel_paths:
        if non_image == 0 and not any(root.iterdir()):
            raise DataError(
                f"data '{root}': the folder is empty; expected image files "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))}), directly or in one subfolder per class"
            )
        raise DataError(
            f"data '{root}': no image files found ({non_image} other files); expected files ending in "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}, directly or in one subfolder per class"
        )
    rel_paths.sort()
    if all(p.count("/") == 1 for p in rel_paths):
        class_names = tuple(
            sorted(e.name for e in root.iterdir() if e.is_dir() and not e.name.startswith("."))
        )
        index = {name: i for i, name in enumerate(class_names)}
        labels = tuple(index[p.split("/", 1)[0]] for p in rel_paths)
        return _Listing(tuple(rel_paths), labels, class_names)
    return _Listing(tuple(rel_paths), None, ())


@dataclass(frozen=True)
class _Decoded:
    index: int  # position in the selection
    array: np.ndarray | None
    error: str | None


def _decode(path: Path, spec: PreprocessSpec) -> tuple[np.ndarray | None, str | None]:
    """Decode and preprocess one file; (array, None) or (None, reason)."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    try:
        with Image.open(path) as img:
            w, h = img.size
            if limit is not None and w * h > limit:
                return None, (
                    f"{w}x{h} = {w * h} pixels exceeds Pillow's decompression-bomb limit of "
                    f"{limit} pixels (raise PIL.Image.MAX_IMAGE_PIXELS if the image is genuine)"
                )
            img.load()
            return preprocess_image(img, spec), None
    except Image.DecompressionBombError as exc:
        return None, f"decompression-bomb protection: {exc}"
    except DataError as exc:
        return None, str(exc)
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError) as exc:
        # Pillow's decoders raise all of these on malformed files (SyntaxError from some parsers).
        return None, str(exc) or type(exc).__name__


class ImageFolderDataset:
    """Images under ``root`` preprocessed by ``preprocess`` into model input ``input_name``.

    ``max_samples`` / ``seed``: a random subset (``numpy.random.default_rng(seed)``) kept in
    sorted order. ``on_bad_image``: "fail" raises DataError naming the file; "skip" logs a
    warning (once per file), leaves the image out and counts it in ``summary()``.
    ``workers``: decoding threads (0 decodes in the calling thread; default up to 4).
    ``content_fingerprint``: hash the file bytes instead of (size, mtime_ns); used for the
    embedded demo, whose mtimes differ per install.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        input_name: str,
        preprocess: PreprocessSpec,
        dtype: np.dtype | type = np.float32,
        max_samples: int | None = None,
        seed: int = 0,
        on_bad_image: Literal["fail", "skip"] | str = "fail",
        workers: int | None = None,
        content_fingerprint: bool = False,
        kind: str = "image-folder",
    ) -> None:
        self._root = Path(root)
        if not self._root.exists():
            raise DataError(f"data '{root}': no such file or directory")
        if not self._root.is_dir():
            raise DataError(f"data '{root}': not a folder; expected a folder of images")
        if on_bad_image not in ON_BAD_IMAGE:
            raise UsageError(f"on_bad_image must be 'fail' or 'skip', got {on_bad_image!r}")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
            raise UsageError(f"workers must be a non-negative integer or None, got {workers!r}")
        self._input_name = input_name
        self._spec = preprocess
        self._dtype = np.dtype(dtype)
        self._max_samples = max_samples
        self._seed = int(seed)
        self._on_bad_image = on_bad_image
        self._workers = default_workers() if workers is None else workers
        self._content_fingerprint = content_fingerprint
        self._kind = kind
        listing = _list_images(self._root)
        selected = select_indices(len(listing.files), max_samples, seed)
        self._files = tuple(listing.files[i] for i in selected)
        self._labels = (
            np.asarray([listing.labels[i] for i in selected], dtype=np.int64)
            if listing.labels is not None
            else None
        )
        self._class_names = listing.class_names
        self._total_found = len(listing.files)
        self._skipped: list[str] = []
        self._warned: set[str] = set()
        self._fingerprint: str | None = None

    # --- Dataset protocol -------------------------------------------------------------------
    @property
    def input_names(self) -> tuple[str, ...]:
        return (self._input_name,)

    @property
    def has_labels(self) -> bool:
        return self._labels is not None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    @property
    def files(self) -> tuple[str, ...]:
        """Relative paths of the selected images, in iteration order."""
        return self._files

    @property
    def labels(self) -> np.ndarray | None:
        """Labels of the selected images (a copy), or None."""
        return None if self._labels is None else self._labels.copy()

    @property
    def preprocess(self) -> PreprocessSpec:
        return self._spec

    @property
    def skipped(self) -> tuple[str, ...]:
        """Relative paths of the images skipped in the last (or current) iteration."""
        return tuple(self._skipped)

    def __len__(self) -> int:
        return len(self._files)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        check_batch_size(batch_size)
        return self._iterate(int(batch_size))

    def sample_range(self, start: int, stop: int) -> ImageFolderDataset:
        """The same data set restricted to selected samples ``start`` to ``stop - 1`` (a shard:
        :mod:`quant.datasets.shard`); only those images are ever read."""
        part = copy.copy(self)
        part._files = self._files[start:stop]
        part._labels = None if self._labels is None else self._labels[start:stop].copy()
        part._skipped = []
        part._warned = set()
        part._fingerprint = None
        return part

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(
                canonical_json(
                    {
                        "kind": "image-folder",
                        "preprocess": self._spec.to_dict(),
                        "dtype": self._dtype.str,
                        "selection": selection_key(self._max_samples, self._seed),
                        "content": self._content_fingerprint,
                    }
                )
            )
            for rel in self._files:
                path = self._root / rel
                h.update(rel.encode("utf-8") + b"\0")
                if self._content_fingerprint:
                    h.update(hash_file(path).digest())
                else:
                    try:
                        st = path.stat()
                    except OSError as exc:
                        raise DataError(f"cannot read image '{path}': {exc.strerror or exc}") from exc
                    h.update(f"{st.st_size}:{st.st_mtime_ns}\n".encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def summary(self) -> DataSummary:
        return DataSummary(
            source=str(self._root),
            kind=self._kind,
            num_samples=len(self._files) - len(self._skipped),
            num_skipped=len(self._skipped),
            skipped=tuple(self._skipped),
            class_names=self._class_names,
            preprocess=self._spec.to_dict(),
        )

    # --- iteration ----------------------------------------------------------------------------
    def _results(self, window: int) -> Iterator[_Decoded]:
        """Decoded images in selection order, at most ``window`` decoded ahead of the consumer."""
        spec = self._spec
        paths = [self._root / rel for rel in self._files]
        if self._workers == 0:
            for i, p in enumerate(paths):
                arr, err = _decode(p, spec)
                yield _Decoded(i, arr, err)
            return
        executor = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="quant-decode")
        try:
            pending: deque[Future[tuple[np.ndarray | None, str | None]]] = deque()
            nxt = 0
            for i in range(len(paths)):
                while nxt < len(paths) and len(pending) < window:
                    pending.append(executor.submit(_decode, paths[nxt], spec))
                    nxt += 1
                arr, err = pending.popleft().result()
                yield _Decoded(i, arr, err)
        finally:
            executor.shutdown(wait=True, cancel_futures=True)

    def _iterate(self, batch_size: int) -> Iterator[Batch]:
        self._skipped = []
        samples: list[np.ndarray] = []
        labels: list[int] = []
        yielded = 0
        for item in self._results(window=batch_size + 2 * self._workers):
            rel = self._files[item.index]
            if item.array is None:
                path = self._root / rel
                if self._on_bad_image == "fail":
                    raise DataError(
                        f"cannot decode image '{path}': {item.error}; remove it or pass --on-bad-image skip"
                    )
                self._skipped.append(rel)
                if rel not in self._warned:
                    self._warned.add(rel)
                    logger.warning("skipping image '%s': %s", path, item.error)
                continue
            samples.append(item.array)
            if self._labels is not None:
                labels.append(int(self._labels[item.index]))
            if len(samples) == batch_size:
                yield self._make_batch(samples, labels)
                yielded += len(samples)
                samples, labels = [], []
        if samples:
            yield self._make_batch(samples, labels)
            yielded += len(samples)
        if yielded == 0 and self._skipped:
            raise DataError(
                f"data '{self._root}': all {len(self._skipped)} selected images were unreadable "
                f"(first: '{self._skipped[0]}'); check the files"
            )

    def _make_batch(self, samples: list[np.ndarray], labels: list[int]) -> Batch:
        # np.stack allocates a new array: batches never share memory with each other.
        feed = np.stack(samples).astype(self._dtype, copy=False)
        lab = np.asarray(labels, dtype=np.int64) if self._labels is not None else None
        return Batch(feed={self._input_name: feed}, labels=lab)
