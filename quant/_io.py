"""The small I/O layer: atomic writes and output-path checks.

Every file quant writes goes through :func:`atomic_write` / :func:`atomic_output`: the data is
written to a temporary file in the destination's directory, flushed and fsync'ed, then renamed
over the destination with ``os.replace`` (atomic on POSIX). An error or KeyboardInterrupt while
writing removes the temporary file and leaves any previous file untouched; two processes writing
the same path concurrently each rename a complete file, so the result is one of them, never a mix.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from quant.errors import OutputError

_TMP_PREFIX = ".quant-tmp-"


def _describe_os_error(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return f"cannot write '{path}': no space left on device; free some space or choose another output"
    if exc.errno == errno.EFBIG:
        return f"cannot write '{path}': file size limit exceeded; raise the limit or choose another output"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write '{path}': permission denied; choose a writable output location"
    if exc.errno == errno.ENOENT:
        return f"cannot write '{path}': directory '{path.parent}' does not exist; create it first"
    if exc.errno == errno.EISDIR:
        return f"cannot write '{path}': it is a directory; give a file name"
    return f"cannot write '{path}': {exc.strerror or exc}"


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, make_parents: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on clean exit rename it over ``path``.

    The caller writes the temporary file by any means (e.g. ``onnx.save``). On any exception the
    temporary file is removed and the exception propagates; OS errors become :class:`OutputError`.
    """
    dest = Path(path)
    if dest.is_dir():
        raise OutputError(f"cannot write '{dest}': it is a directory; give a file name")
    try:
        if make_parents:
            dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX + dest.name + ".", dir=dest.parent or ".")
    except OSError as exc:
        raise OutputError(_describe_os_error(dest, exc)) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; give the result the usual permissions (umask applied).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
    except OSError as exc:
        _remove_quietly(tmp)
        raise OutputError(_describe_os_error(dest, exc)) from exc
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(tmp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()


def atomic_write(path: str | os.PathLike[str], data: bytes | str, *, make_parents: bool = False) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; return the path."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_output(path, make_parents=make_parents) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(payload)
    return Path(path)


def check_output_not_input(output: str | os.PathLike[str], *inputs: str | os.PathLike[str] | None) -> None:
    """Refuse to write an output over one of the command's inputs."""
    out = Path(output).resolve()
    for inp in inputs:
        if inp is None:
            continue
        if Path(inp).resolve() == out:
            raise OutputError(
                f"output '{output}' is the same file as input '{inp}'; choose another output path"
            )


def ensure_dir(path: str | os.PathLike[str]) -> Path:
    """Create an output directory (and parents) or fail with a clear OutputError."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory '{p}': {exc.strerror or exc}") from exc
    if not os.access(p, os.W_OK):
        raise OutputError(f"output directory '{p}' is not writable; choose a writable location")
    return p
