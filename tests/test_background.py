"""Background services: ports chosen where nobody else is handed them, errors that quote the log."""

from __future__ import annotations

import random
import socket
import sys
import time
from pathlib import Path

from fleetwatch.app import background


def _ephemeral_low() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_free_port_is_below_the_kernels_ephemeral_range_and_bindable():
    for _ in range(20):
        port = background.free_port()
        assert port < _ephemeral_low()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


class _Replay(random.Random):
    """Draws the given ports in order."""

    def __init__(self, ports):
        super().__init__()
        self.ports = list(ports)

    def randrange(self, *args, **kwargs):
        return self.ports.pop(0)


def test_free_port_passes_over_a_port_someone_listens_on():
    taken = background.free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        other = background.free_port()
        assert background.free_port(rng=_Replay([taken, other])) == other


def test_a_service_that_dies_at_start_is_reported_with_the_end_of_its_log(tmp_path):
    log, pid_file = tmp_path / "svc.log", tmp_path / "svc.pid"
    script = "import sys; print('starting'); print('bind failed: address already in use'); sys.exit(3)"
    pid = background.start([sys.executable, "-c", script], env={}, cwd=tmp_path, log=log, pid_file=pid_file)
    deadline = time.monotonic() + 30
    while background.running(pid, b"python") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not background.running(pid, b"python")
    message = background.exit_message("svc", log)
    assert message.startswith(f"svc exited at start: see {log}")
    assert "| bind failed: address already in use" in message
    assert background.exit_message("svc", tmp_path / "missing.log") == f"svc exited at start: see {tmp_path / 'missing.log'}"
