"""The small I/O layer: atomic writes and output-path checks.

Every file quant writes goes through :func:`atomic_write` / :func:`atomic_output`: the data is
written to a temporary file in the destination's directory, flushed and fsync'ed, then renamed
over the destination with ``os.replace`` (atomic on POSIX). An error or KeyboardInterrupt while
writing removes the temporary file and leaves any previous file untouched; two processes writing
the same path concurrently each rename a complete file, so the result is one of them, never a mix.

Files that belong together (a cache, its sidecar and its statistics) are written inside
:func:`commit_together`: each is written and fsync'ed to its temporary file, and only when all
are complete are they renamed into place, one after the other, under an advisory lock on their
directories (so two processes never interleave their sets) and with Ctrl-C / SIGTERM held back
until the renames are done (so an interrupt never splits the set).

Temporary files are hidden and named ``.quant-tmp-<pid>-<random>-<file name>.tmp``; nothing in
quant reads them. A process killed with SIGKILL cannot remove its own: the next quant write into
the same directory removes those whose process no longer exists (on this machine).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import logging
import os
import re
import secrets
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from quant.errors import OutputError

log = logging.getLogger(__name__)

_TMP_PREFIX = ".quant-tmp-"
_TMP_RE = re.compile(r"\.quant-tmp-(\d+)-[0-9a-f]{8}-.+\.tmp")

# The pending renames of the innermost open commit_together() block (None outside one).
_GROUP: contextvars.ContextVar[list[tuple[Path, Path]] | None] = contextvars.ContextVar(
    "quant_commit_group", default=None
)


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
    if exc.errno == errno.ENOTDIR:
        return f"cannot write '{path}': a part of the path is a file, not a directory; choose another output"
    return f"cannot write '{path}': {exc.strerror or exc}"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists but belongs to someone else
        return True
    return True


def remove_stale_temps(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove quant temporary files in ``directory`` whose writing process no longer exists.

    Only names of the form ``.quant-tmp-<pid>-<random>-<name>.tmp`` are considered, and only when
    no process ``<pid>`` is alive on this machine (a process killed mid-write). Returns what was
    removed. Errors are ignored: this is housekeeping.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    me = os.getpid()
    for entry in entries:
        m = _TMP_RE.fullmatch(entry.name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid == me or _pid_alive(pid):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    if removed:
        log.info(
            "removed %d temporary file(s) left in '%s' by an interrupted quant process",
            len(removed),
            directory,
        )
    return removed


def _create_temp(dest: Path) -> Path:
    directory = dest.parent
    remove_stale_temps(directory)
    for _ in range(100):
        tmp = directory / f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{dest.name}.tmp"
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(directory))


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (best effort; not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, make_parents: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on clean exit rename it over ``path``.

    The caller writes the temporary file by any means (e.g. ``onnx.save``). On any exception the
    temporary file is removed and the exception propagates; OS errors become :class:`OutputError`.
    Inside :func:`commit_together` the rename waits for the end of that block.
    """
    dest = Path(path)
    if dest.is_dir():
        raise OutputError(f"cannot write '{dest}': it is a directory; give a file name")
    try:
        if make_parents:
            dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temp(dest)
    except OSError as exc:
        raise OutputError(_describe_os_error(dest, exc)) from exc
    group = _GROUP.get()
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # The temporary file is created 0600; give the result the usual permissions (umask applied).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if group is None:
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        else:
            for i, (earlier, d) in enumerate(group):
                if d == dest:  # written twice in one group: the last version wins
                    _remove_quietly(earlier)
                    del group[i]
                    break
            group.append((tmp, dest))
    except OSError as exc:
        _remove_quietly(tmp)
        raise OutputError(_describe_os_error(dest, exc)) from exc
    except BaseException:
        _remove_quietly(tmp)
        raise


@contextlib.contextmanager
def commit_together() -> Iterator[None]:
    """Write several files as one set: all of them replace their previous versions, or none.

    Inside the block, :func:`atomic_output` / :func:`atomic_write` write complete temporary
    files but do not rename them; at the end of the block they are renamed in the order they
    were written, under an advisory lock on their directories, with SIGINT / SIGTERM deferred
    until the last rename. An exception in the block removes the temporary files and leaves
    every previous file untouched. Nested blocks join the outermost one.
    """
    if _GROUP.get() is not None:
        yield
        return
    pending: list[tuple[Path, Path]] = []
    token = _GROUP.set(pending)
    try:
        yield
    except BaseException:
        for tmp, _ in pending:
            _remove_quietly(tmp)
        raise
    finally:
        _GROUP.reset(token)
    _commit(pending)


def _commit(pending: Sequence[tuple[Path, Path]]) -> None:
    directories = sorted({dest.parent.resolve() for _, dest in pending}, key=str)
    try:
        with _directory_locks(directories), _interrupts_deferred():
            for i, (tmp, dest) in enumerate(pending):
                try:
                    os.replace(tmp, dest)
                except OSError as exc:
                    for later, _ in pending[i:]:
                        _remove_quietly(later)
                    raise OutputError(_describe_os_error(dest, exc)) from exc
    except BaseException:
        for tmp, _ in pending:
            _remove_quietly(tmp)
        raise
    for directory in directories:
        _fsync_dir(directory)


@contextlib.contextmanager
def _directory_locks(directories: Sequence[Path]) -> Iterator[None]:
    """Exclusive advisory (flock) locks on ``directories``, taken in sorted order (no deadlock)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the renames are still each atomic
        yield
        return
    fds: list[int] = []
    try:
        for directory in directories:
            try:
                fd = os.open(directory, os.O_RDONLY)
            except OSError:
                continue
            fds.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:  # e.g. a file system without locks
                log.debug("cannot lock '%s' (%s); writing without the lock", directory, exc)
        yield
    finally:
        for fd in fds:
            os.close(fd)  # closing the descriptor releases its flock


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT / SIGTERM back until the block ends, then deliver them to the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[signal.Signals] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(signum))

    previous: dict[signal.Signals, Any] = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, hold)
    except (ValueError, OSError):  # not the main interpreter / thread
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            first = received[0]
            handler = previous[first]
            if callable(handler):
                handler(first, None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), first)


def _remove_quietly(tmp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()


def atomic_write(path: str | os.PathLike[str], data: bytes | str, *, make_parents: bool = False) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; return the path."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_output(path, make_parents=make_parents) as tmp, open(tmp, "wb") as fh:
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


def check_schema_header(
    doc: object,
    *,
    schema: str,
    max_version: int,
    label: str,
    kind: str,
    fix: str,
    error: type[Exception],
) -> int:
    """Validate the ``schema`` / ``schema_version`` header of a JSON document quant wrote.

    ``label`` names the file in messages (e.g. ``sidecar 'x.cache.json'``), ``kind`` what it should
    be (``quant calibration sidecar``), ``fix`` what to do about a bad version. Returns the version.
    """
    if not isinstance(doc, dict) or doc.get("schema") != schema:
        raise error(f"{label} is not a {kind} (no schema '{schema}'); rename or delete it")
    version = doc.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise error(f"{label} has no valid schema_version; {fix}")
    if version > max_version:
        raise error(
            f"{label} has schema_version {version}, newer than this quant understands ({max_version}); upgrade quant"
        )
    return version
