"""Long-running services started in the background: one process group each, a PID file and a log.

``start`` runs a command in its own session (so its children share its process group), logging
to a file and recording its PID; ``running`` tells a live process of that command from a zombie
or a PID since reused by another program; ``stop`` ends the whole group (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def start(cmd: Sequence[str], *, env: Mapping[str, str], cwd: Path, log: Path, pid_file: Path) -> int:
    """Start ``cmd`` in a new session, output appended to ``log``; its PID, also written to ``pid_file``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(cmd), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
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


def exit_message(what: str, log: Path, lines: int = 15) -> str:
    """'<what> exited at start: see <log>' with the log's last lines, so the error says why."""
    try:
        tail = log.read_text(errors="replace").rstrip().splitlines()[-lines:]
    except OSError:
        tail = []
    quoted = "".join(f"\n  | {line}" for line in tail)
    return f"{what} exited at start: see {log}" + (f"; its last lines:{quoted}" if quoted else "")


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def running(pid: int | None, marker: bytes) -> bool:
    """Whether ``pid`` is a live process whose command line holds ``marker``."""
    if pid is None:
        return False
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and marker in cmdline


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
    """Collect ``pid`` if this process started it (``up`` and ``down`` in one process, as in tests)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
