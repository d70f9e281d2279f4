"""The executor interface and the in-process executor (see :mod:`quant.executors`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from quant.errors import UsageError

log = logging.getLogger(__name__)

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "ShardTask", "TaskReport", "make_executor"]

EXECUTORS = ("local", "ray")

TaskFn = Callable[[Mapping[str, Any]], Any]


@dataclass(frozen=True)
class ShardTask:
    """One task: ``label`` for messages (e.g. ``"shard 2/4"``), ``options`` for the function."""

    label: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskReport:
    """How a task ran: attempts (more than 1: retried after a failure), seconds, where."""

    label: str
    attempts: int
    seconds: float
    node: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "attempts": self.attempts, "seconds": self.seconds, "node": self.node}


class Executor(Protocol):
    """Runs shard tasks; results in task order. ``reports`` describes the last :meth:`run`."""

    name: str
    reports: list[TaskReport]

    def run(self, fn: TaskFn, tasks: Sequence[ShardTask]) -> list[Any]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """Every task in this process, one after the other (the reference the others must match)."""

    name = "local"

    def __init__(self) -> None:
        self.reports: list[TaskReport] = []

    def run(self, fn: TaskFn, tasks: Sequence[ShardTask]) -> list[Any]:
        self.reports = []
        results = []
        for task in tasks:
            start = time.perf_counter()
            results.append(fn(task.options))
            self.reports.append(TaskReport(task.label, 1, time.perf_counter() - start, "local"))
            log.info("%s done in %.1f s", task.label, self.reports[-1].seconds)
        return results

    def close(self) -> None:
        return None

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_executor(
    name: str,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    max_retries: int = 2,
) -> Executor:
    """The executor called ``name`` (``local`` or ``ray``); UsageError naming --executor otherwise.

    ``address`` (Ray only): a running cluster (``ray://host:10001`` or ``host:6379``, or
    ``auto``); None starts a local Ray for this process with ``num_cpus`` CPUs (default: all).
    """
    if name == "local":
        if address is not None:
            raise UsageError("--ray-address needs --executor ray")
        return LocalExecutor()
    if name == "ray":
        from quant.executors.ray import RayExecutor

        return RayExecutor(address=address, num_cpus=num_cpus, max_retries=max_retries)
    raise UsageError(f"--executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
