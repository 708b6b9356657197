"""Background services: ports chosen where nobody else is handed them, errors that quote the log."""

from __future__ import annotations

import random
import socket
import sys
import time
from pathlib import Path

import pytest

from fleetwatch.app import background
from fleetwatch.core.errors import FleetWatchError


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


def _service(tmp_path: Path, script: str) -> background.Service:
    return background.Service("svc", [sys.executable, "-c", script, "fw-test-service"], {}, tmp_path,
                              tmp_path / "svc.log", tmp_path / "svc.pid", b"fw-test-service")


def test_a_service_killed_at_start_is_started_once_more_and_the_log_says_how_it_ended(tmp_path):
    once, ready = tmp_path / "killed-once", tmp_path / "ready"
    # the first start kills itself without a word, as the kernel's OOM killer would; the second comes up
    script = (
        "import os, pathlib, signal, time\n"
        f"once, ready = pathlib.Path({str(once)!r}), pathlib.Path({str(ready)!r})\n"
        "print('starting', flush=True)\n"
        "if not once.exists():\n"
        "    once.touch(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "ready.touch(); time.sleep(60)\n"
    )
    service = _service(tmp_path, script)
    try:
        background.start_all([service], ready.exists, "svc to be ready", 60, poll_s=0.1)
        pid = background.read_pid(service.pid_file)
        assert background.running(pid, service.marker)
    finally:
        background.stop(background.read_pid(service.pid_file), 5)
    log = service.log.read_text()
    assert log.count("starting") == 2
    assert "--- killed by SIGKILL at start: started again ---" in log


def test_a_service_that_exits_at_every_start_fails_with_its_exit_code_and_log(tmp_path):
    service = _service(tmp_path, "import sys; print('bind failed: address already in use'); sys.exit(3)")
    with pytest.raises(FleetWatchError) as raised:
        background.start_all([service], lambda: False, "svc to be ready", 60, poll_s=0.1)
    message = str(raised.value)
    assert message.startswith(f"svc exited at start (exit code 3): see {service.log}")
    assert "| bind failed: address already in use" in message
    assert service.log.read_text().count("bind failed") == 2  # started twice: once more after the first exit


def test_waiting_gives_up_after_its_bound_and_names_what_it_waited_for(tmp_path):
    service = _service(tmp_path, "import time; time.sleep(60)")
    try:
        with pytest.raises(FleetWatchError, match="gave up waiting 1 s for svc to be ready"):
            background.start_all([service], lambda: False, "svc to be ready", 1, poll_s=0.1)
    finally:
        background.stop(background.read_pid(service.pid_file), 5)


def test_a_service_is_running_from_the_moment_it_is_started(tmp_path):
    # just after start returns, the child can still be exec-ing and show an empty command line
    for _ in range(20):
        service = _service(tmp_path, "import time; time.sleep(30)")
        pid = background.start(service.cmd, env={}, cwd=tmp_path, log=service.log, pid_file=service.pid_file)
        try:
            assert background.running(pid, service.marker)
        finally:
            background.stop(pid, 5)
