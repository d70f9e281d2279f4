"""Options shared by the commands that run in shards: --shard K/N, --shards N, --executor, --ray-address."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def shard_options(*, what: str = "samples") -> Callable[[F], F]:
    """Add the sharding options; ``what`` says what a shard splits (samples or layers)."""

    def decorate(fn: F) -> F:
        for option in reversed(
            [
                click.option("--shard", default=None, metavar="K/N",
                             help=f"Run only shard K of N (a deterministic 1/N of the {what}) and write a "
                             "partial report; merge the shards' reports with 'quant merge-reports'."),
                click.option("--shards", type=click.IntRange(min=1), default=None, metavar="N",
                             help="Split the run into N shard tasks on --executor and merge them into one "
                             "report (exactly what one unsharded run gives)."),
                click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                             help="Where --shards tasks run: in this process, or as Ray tasks (pip install "
                             "'quant[ray]'; a local Ray unless --ray-address)."),
                click.option("--ray-address", default=None, metavar="ADDRESS",
                             help="A running Ray cluster for --executor ray (e.g. auto, or the head's host:6379)."),
            ]
        ):
            fn = option(fn)
        return fn

    return decorate


def check_shard_options(shard: str | None, shards: int | None, executor: str, ray_address: str | None) -> None:
    """UsageError (click's) for combinations that mean nothing."""
    if shard is not None and shards is not None:
        raise click.UsageError("--shard K/N runs one shard, --shards N runs them all: give one of them")
    if (executor != "local" or ray_address is not None) and shards is None:
        raise click.UsageError("--executor / --ray-address need --shards N (the number of shard tasks)")
    if ray_address is not None and executor != "ray":
        raise click.UsageError("--ray-address needs --executor ray")
