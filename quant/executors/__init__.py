"""Executors: where the shards of a command run.

A *shard task* is a module-level function of one plain, picklable ``dict`` of options (paths,
numbers, names: never data) that opens the model and its shard of the data itself and returns
a small JSON-able result (a partial report). An executor runs a list of such tasks and gives
their results back in task order; the caller merges them (:mod:`quant.report.merge`,
:meth:`quant.calibrators.stats.StatsCollector.merge`) and writes the one output file, so an
interrupted or failed run leaves no partial output.

- ``local`` (:class:`LocalExecutor`): the tasks one after the other in this process.
- ``ray`` (:class:`~quant.executors.ray.RayExecutor`, extra ``pip install 'quant[ray]'``): each
  task is a Ray task, on a local Ray started for the run or on a cluster (``--ray-address``);
  a task whose worker dies is retried by Ray (``max_retries``) and the retry is reported;
  Ctrl-C cancels the running tasks.
"""

from __future__ import annotations

from quant.executors.base import EXECUTORS, Executor, LocalExecutor, ShardTask, TaskReport, make_executor

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "ShardTask", "TaskReport", "make_executor"]
