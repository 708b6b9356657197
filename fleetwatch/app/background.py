"""Long-running services started in the background: one process group each, a PID file and a log.

``start`` runs a command in its own session (so its children share its process group), logging
to a file and recording its PID; ``running`` tells a live process of that command from a zombie
or a PID since reused by another program; ``stop`` ends the whole group (SIGTERM, then SIGKILL);
``start_all`` starts services, restarting one that exits before they are ready.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fleetwatch.core.errors import FleetWatchError

_log = logging.getLogger(__name__)

# the services this process started, by PID: polling them (``_reap``) keeps how they ended
_children: dict[int, subprocess.Popen] = {}


def start(cmd: Sequence[str], *, env: Mapping[str, str], cwd: Path, log: Path, pid_file: Path) -> int:
    """Start ``cmd`` in a new session, output appended to ``log``; its PID, also written to ``pid_file``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(cmd), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def free_port(*, rng: random.Random | None = None, attempts: int = 200) -> int:
    """A TCP port on 127.0.0.1 that nothing holds now, drawn below the kernel's ephemeral range.

    Ports the kernel hands out for ``bind(0)`` and outgoing connections (Spark's drivers, block
    managers and Python workers take many) come from that range, so a port chosen there can be taken
    by someone else before the service that was meant to get it starts listening.
    """
    rng = rng or random.Random()
    high = _ephemeral_low()
    low = 20000 if high > 21000 else 1024
    for _ in range(attempts):
        port = rng.randrange(low, high)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free TCP port on 127.0.0.1 in {low}-{high - 1} after {attempts} tries")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def exit_message(what: str, log: Path, lines: int = 15, pid: int | None = None) -> str:
    """'<what> exited at start (<how>): see <log>' with the log's last lines, so the error says why.

    ``how`` (an exit code, or the signal that killed it) is known when this process started
    ``pid`` and has collected it: a process killed by a signal writes nothing to its log.
    """
    try:
        tail = log.read_text(errors="replace").rstrip().splitlines()[-lines:]
    except OSError:
        tail = []
    quoted = "".join(f"\n  | {line}" for line in tail)
    how = exit_reason(pid)
    how = f" ({how})" if how else ""
    return f"{what} exited at start{how}: see {log}" + (f"; its last lines:{quoted}" if quoted else "")


def exit_reason(pid: int | None) -> str | None:
    """'exit code N' or 'killed by SIGNAME' for a child of this process that ended, else None."""
    proc = _children.get(pid) if pid is not None else None
    code = proc.poll() if proc is not None else None
    if code is None:
        return None
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def running(pid: int | None, marker: bytes, *, exec_wait_s: float = 2.0) -> bool:
    """Whether ``pid`` is a live process whose command line holds ``marker``."""
    if pid is None:
        return False
    _reap(pid)
    deadline = time.monotonic() + exec_wait_s
    while True:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        # a process that is still exec-ing its command (just after ``start`` returns) shows an empty
        # command line for a moment: look again rather than call it dead
        if cmdline or time.monotonic() > deadline:
            return marker in cmdline
        time.sleep(0.01)


def stop(pid: int, wait_s: float) -> None:
    """SIGTERM to the process (a service then stops its own children), then to what is left of its
    group, then SIGKILL."""
    for send, wait in ((lambda: os.kill(pid, signal.SIGTERM), wait_s), (lambda: os.killpg(pid, signal.SIGTERM), 5.0)):
        try:
            send()
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_alive(pid):
                return
            time.sleep(0.5)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    _reap(pgid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _reap(pid: int) -> None:
    """Collect ``pid`` if this process started it (``up`` and ``down`` in one process, as in tests),
    keeping how it ended for ``exit_reason``."""
    if pid in _children:
        _children[pid].poll()
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


@dataclass(frozen=True)
class Service:
    """A service to start: its command and environment, where it logs and records its PID, and the
    bytes its command line holds while it runs (``running``'s marker)."""

    name: str
    cmd: Sequence[str]
    env: Mapping[str, str]
    cwd: Path
    log: Path
    pid_file: Path
    marker: bytes


def start_all(services: Sequence[Service], ready: Callable[[], bool], what: str, wait_s: float, *,
              restarts: int = 1, poll_s: float = 1.0) -> None:
    """Start ``services`` and wait until ``ready()``; a service that exits meanwhile starts again,
    at most ``restarts`` times.

    A service can die at start for a reason of the moment (a signal, a port taken between choosing
    and binding it); starting it once more is what a supervisor's restart policy does. Raises
    ``FleetWatchError`` naming the service, how it ended and its log's last lines when it exits
    once more than allowed, or naming ``what`` when ``ready`` is not met within ``wait_s``.
    The caller stops what started.
    """
    pids = {s.name: start(s.cmd, env=s.env, cwd=s.cwd, log=s.log, pid_file=s.pid_file) for s in services}
    left = {s.name: restarts for s in services}
    deadline = time.monotonic() + wait_s
    while not ready():
        for s in services:
            if running(pids[s.name], s.marker):
                continue
            message = exit_message(s.name, s.log, pid=pids[s.name])
            if left[s.name] <= 0:
                raise FleetWatchError(message)
            left[s.name] -= 1
            _log.warning("%s; starting it again", message)
            with s.log.open("a") as out:
                out.write(f"--- {exit_reason(pids[s.name]) or 'exited'} at start: started again ---\n")
            pids[s.name] = start(s.cmd, env=s.env, cwd=s.cwd, log=s.log, pid_file=s.pid_file)
        if time.monotonic() > deadline:
            raise FleetWatchError(f"gave up waiting {wait_s:.0f} s for {what}: see {services[0].log.parent}")
        time.sleep(poll_s)
