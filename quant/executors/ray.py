"""Shard tasks as Ray tasks (extra ``pip install 'quant[ray]'``; Ray imported only here).

Each task gets only its options (paths and numbers) and reads its shard of the data itself on
the worker, so nothing large goes through the driver or Ray's object store; results are the
small partial reports. A task whose worker process dies (killed, out of memory, node lost) is
retried by Ray up to ``max_retries`` times; every start is counted by a small actor, so retries
are reported (``reports``, and a warning). An error raised by quant inside a task is not
retried (it would fail again) and is raised on the driver as itself, prefixed with the task's
label. Ctrl-C cancels every task of the run (``ray.cancel(force=True)``) and re-raises: the
caller has written nothing yet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from quant.errors import BackendUnavailableError, QuantError
from quant.executors.base import ShardTask, TaskFn, TaskReport

log = logging.getLogger(__name__)

__all__ = ["RayExecutor", "import_ray"]


def import_ray() -> Any:
    """The ``ray`` module, or BackendUnavailableError naming the extra."""
    try:
        import ray
    except ImportError as exc:
        raise BackendUnavailableError(
            f"--executor ray needs Ray, which is not installed ({exc}); pip install 'quant[ray]'"
        ) from exc
    return ray


def _run_task(fn: TaskFn, label: str, options: Mapping[str, Any], attempts: Any) -> tuple[Any, str, float]:
    """On the worker: count this attempt, run the task, say where and how long."""
    import ray

    ray.get(attempts.start.remote(label))
    start = time.perf_counter()
    result = fn(options)
    return result, ray.get_runtime_context().get_node_id(), time.perf_counter() - start


class _Attempts:
    """Counts the starts of each task (a Ray actor holding a dict)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def start(self, label: str) -> int:
        self.counts[label] = self.counts.get(label, 0) + 1
        return self.counts[label]

    def get(self) -> dict[str, int]:
        return dict(self.counts)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class RayExecutor:
    """Runs shard tasks on Ray: the cluster at ``address``, or a local Ray started for this
    process with ``num_cpus`` CPUs (shut down by :meth:`close`). ``task_cpus``: CPUs each task
    reserves (the tasks' ONNX Runtime threads should match it)."""

    name = "ray"

    def __init__(
        self,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        max_retries: int = 2,
        task_cpus: int = 1,
    ) -> None:
        self._ray = import_ray()
        self.max_retries = max_retries
        self.task_cpus = task_cpus
        self.reports: list[TaskReport] = []
        self._started = False
        if not self._ray.is_initialized():
            try:
                self._ray.init(
                    address=address,
                    num_cpus=None if address is not None else num_cpus,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    log_to_driver=False,
                )
            except ConnectionError as exc:
                raise QuantError(
                    f"cannot reach the Ray cluster at --ray-address {address}: {_first_line(exc)}; "
                    "start it with 'ray start --head' or check the address"
                ) from exc
            self._started = True

    @property
    def cluster_cpus(self) -> int:
        """CPUs of the Ray cluster (all nodes)."""
        return int(self._ray.cluster_resources().get("CPU", 0))

    def run(self, fn: TaskFn, tasks: Sequence[ShardTask]) -> list[Any]:
        ray = self._ray
        attempts = ray.remote(num_cpus=0)(_Attempts).remote()
        remote = ray.remote(_run_task).options(
            max_retries=self.max_retries, retry_exceptions=False, num_cpus=self.task_cpus
        )
        refs = [remote.remote(fn, t.label, dict(t.options), attempts) for t in tasks]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(tasks)
        where: list[tuple[str, float]] = [("", 0.0)] * len(tasks)
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                for ref in done:
                    i = index[ref]
                    try:
                        value, node, seconds = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        cause = getattr(exc, "cause", None)
                        if isinstance(cause, QuantError):
                            raise type(cause)(f"{tasks[i].label}: {cause}") from cause
                        raise QuantError(
                            f"{tasks[i].label} failed: {_first_line(cause or exc)}; see the worker's log"
                        ) from exc
                    except ray.exceptions.RayError as exc:
                        raise QuantError(
                            f"{tasks[i].label} failed after {self.max_retries + 1} attempts "
                            f"({type(exc).__name__}: {_first_line(exc)}); check the Ray workers"
                        ) from exc
                    results[i] = value
                    where[i] = (node, seconds)
                    log.info("%s done in %.1f s", tasks[i].label, seconds)
        except BaseException:
            # Ctrl-C or a failed task: stop the others; nothing has been written.
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        counts = ray.get(attempts.get.remote())
        ray.kill(attempts)
        self.reports = [
            TaskReport(t.label, counts.get(t.label, 1), where[i][1], where[i][0]) for i, t in enumerate(tasks)
        ]
        for r in self.reports:
            if r.attempts > 1:
                log.warning("%s was retried by Ray: %d attempts (a worker failed)", r.label, r.attempts)
        return results

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
