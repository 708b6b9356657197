"""Keep the console for people: in-process DAG runs write Airflow's task logs and the Spark jobs'
output (relayed by spark-submit) to a log file, and the console shows one line per task."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Send what this process and its children write to stdout and stderr to ``path`` (appended) while inside.

    Redirects the file descriptors (1, 2 and those of ``sys.stdout`` and ``sys.stderr``, which differ
    under a test's capture), not just the Python streams: Airflow configures its loggers with the
    streams of their time, and child processes inherit descriptors.
    """
    fds = {1, 2}
    for stream in (sys.stdout, sys.stderr):
        try:
            fds.add(stream.fileno())
        except (AttributeError, ValueError, io.UnsupportedOperation):
            pass
    fds = sorted(fds)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in fds]
    try:
        with path.open("ab") as log:
            for fd in fds:
                os.dup2(log.fileno(), fd)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
    finally:
        for fd, copy in zip(fds, saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def console_beside(console: Console) -> Console:
    """A console like ``console`` that writes to the terminal itself, so it still reaches the
    person while :func:`output_to` sends stdout to a file; ``console`` where stdout has no descriptor."""
    try:
        fd = os.dup(sys.stdout.fileno())
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return console
    return Console(
        file=os.fdopen(fd, "w", buffering=1),
        force_terminal=console.is_terminal,
        color_system=console.color_system,
        width=console.width,
    )


def task_lines(tasks: list[tuple[str, str, float | None]]) -> list[str]:
    """One line per task that ran (its state and seconds), then one per state of those that did not
    run (skipped, upstream_failed)."""
    lines = [f"  {task:<16} {state:<8} {seconds:6.1f} s" for task, state, seconds in tasks if seconds is not None]
    idle: dict[str, list[str]] = {}
    for task, state, seconds in tasks:
        if seconds is None:
            idle.setdefault(state, []).append(task)
    lines += [f"  {state}: {', '.join(names)}" for state, names in idle.items()]
    return lines
