"""The scale-out path: one night's feature and scoring jobs on a real Spark standalone cluster.

A master and one worker start on loopback from the installed pyspark package; the jobs are
submitted with spark-submit to ``spark://127.0.0.1:<port>`` through the FLEETWATCH_SPARK_MASTER
setting a cluster user would change, and everything started here is stopped by PID.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fleetwatch.app.background import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START = dt.date(2026, 1, 1)


def _wait_for(url: str, ok, timeout: float = 60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            data = json.load(urllib.request.urlopen(url, timeout=2))
            if ok(data):
                return data
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} did not become ready in {timeout} s")


@pytest.fixture
def standalone_cluster(tmp_path):
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    port, ui = free_port(), free_port()
    env = {**os.environ, "SPARK_HOME": str(spark_home), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_LOG_DIR": str(tmp_path / "logs"), "SPARK_WORKER_DIR": str(tmp_path / "work"),
           "PYSPARK_PYTHON": sys.executable}
    cls = str(spark_home / "bin" / "spark-class")
    logs = open(tmp_path / "cluster.log", "w")
    master = subprocess.Popen([cls, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                               "--port", str(port), "--webui-port", str(ui)], env=env, stdout=logs, stderr=logs)
    worker = subprocess.Popen([cls, "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}",
                               "--cores", "1", "--memory", "1g", "--webui-port", str(free_port())],
                              env=env, stdout=logs, stderr=logs)
    try:
        _wait_for(f"http://127.0.0.1:{ui}/json/", lambda d: d.get("aliveworkers", 0) >= 1)
        yield f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui}/json/"
    finally:
        for proc in (worker, master):
            proc.terminate()
        for proc in (worker, master):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        logs.close()


def _submit(job: str, master: str, dataset: str, day: dt.date, env: dict) -> subprocess.CompletedProcess:
    import jobs

    cmd = [str(Path(sys.executable).parent / "spark-submit"), "--master", master,
           "--conf", f"spark.executorEnv.PYSPARK_PYTHON={sys.executable}",
           str(Path(jobs.__file__).parent / f"{job}.py"), "--dataset", dataset, "--date", day.isoformat()]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)


def test_features_and_scoring_run_on_a_standalone_cluster(settings, spark, standalone_cluster, monkeypatch):
    from feature_store.pipeline import build_features
    from fleetwatch.core.alerts_store import AlertsStore
    from fleetwatch.core.lake import Lake
    from fleetwatch.core.publishing import publish_alerts
    from fleetwatch.core.quality import validate_partition
    from fleetwatch.core.settings import Settings
    from fleetwatch.core.synthetic import generate_fleet
    from models.training import train_models

    master, status_url = standalone_cluster
    monkeypatch.setenv("FLEETWATCH_MIN_HISTORY_DAYS", "1")
    s = Settings()
    generate_fleet(s, "cl", entities=3, days=2, start=START, seed=3)
    day1, day2 = START, START + dt.timedelta(days=1)
    for day in (day1, day2):
        validate_partition(spark, s, "cl", day)
    build_features(spark, s, "cl", day1)
    train_models(spark, s, "cl", day1)  # the champion, trained in-process on day 1

    env = {**os.environ, "FLEETWATCH_SPARK_MASTER": master, "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    for job in ("build_features", "score_partition"):
        done = _submit(job, master, "cl", day2, env)
        assert done.returncode == 0, done.stderr[-3000:]

    status = json.load(urllib.request.urlopen(status_url, timeout=5))
    names = [app["name"] for app in status.get("completedapps", [])]
    assert any("build_features-cl" in n for n in names) and any("score_partition-cl" in n for n in names), names

    lake = Lake(s.lake_root)
    assert lake.days(lake.zone("scores", "cl")) == [day2]
    n = publish_alerts(s, "cl", day2)
    alerts = AlertsStore(s.alerts_db_url).frame(dataset="cl")
    assert len(alerts) == n and set(alerts["dt"]) <= {day2}
    assert set(alerts["entity_id"]) <= {"srv-000", "srv-001", "srv-002"}
