"""Wall time and peak memory of the demo (what ``make demo`` runs), after install.

Runs ``fleetwatch demo`` as a child process in a fresh temporary home and samples, every
``--interval`` seconds, the resident set size of its whole process tree (the CLI, Airflow's
task runs, every spark-submit JVM and Spark's Python workers): the peak of the sum is what the
machine must hold at once; the largest single process is printed beside it. The demo's own
summary (alerts, precision, recall) is echoed at the end.

    .venv/bin/python -m benchmarks.demo_run                       # the default size
    .venv/bin/python -m benchmarks.demo_run --entities 20 --days 21
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil


class TreePeak(threading.Thread):
    """Peak summed RSS of a process and all its descendants, and the largest single RSS."""

    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_sum = self.peak_single = 0
        self.peak_processes = 0
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._halt.wait(self.interval):
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            sizes = []
            for proc in tree:
                try:
                    sizes.append(proc.memory_info().rss)
                except psutil.Error:
                    continue
            self.peak_sum = max(self.peak_sum, sum(sizes))
            self.peak_single = max(self.peak_single, max(sizes, default=0))
            self.peak_processes = max(self.peak_processes, len(sizes))

    def stop(self) -> None:
        self._halt.set()
        self.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=None, help="default: the demo's")
    parser.add_argument("--days", type=int, default=None, help="default: the demo's")
    parser.add_argument("--interval", type=float, default=0.5, help="memory sampling interval (s)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home (its path is printed)")
    args = parser.parse_args(argv)

    fleetwatch = Path(sys.executable).with_name("fleetwatch")
    command = [str(fleetwatch), "demo"]
    if args.entities:
        command += ["--entities", str(args.entities)]
    if args.days:
        command += ["--days", str(args.days)]
    home = Path(tempfile.mkdtemp(prefix="fleetwatch-demo-"))
    env = {**os.environ, "FLEETWATCH_HOME": str(home / ".fleetwatch"), "COLUMNS": "160"}
    load_start = os.getloadavg()
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env, cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = TreePeak(child.pid, args.interval)
    sampler.start()
    tail: list[str] = []
    for line in child.stdout:
        tail = (tail + [line.rstrip()])[-30:]
    code = child.wait()
    seconds = time.perf_counter() - started
    sampler.stop()
    summary = [line for line in tail if line.startswith(("partitions", "registered", "alerts written", "precision", "wall"))]
    print("\n".join(summary) if code == 0 else "\n".join(tail))
    print(
        f"\n`{' '.join(['fleetwatch', *command[1:]])}`: exit {code}, wall time {seconds:.0f} s, "
        f"peak memory of the process tree {sampler.peak_sum / 2**30:.2f} GiB (largest single process "
        f"{sampler.peak_single / 2**30:.2f} GiB, up to {sampler.peak_processes} processes at once); "
        f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB; load average at start "
        f"{load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f}"
    )
    if args.keep:
        print(f"home kept: {home}")
    else:
        shutil.rmtree(home, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
