"""In-process runs keep the console for people: their output goes to a log file, one line per task."""

from __future__ import annotations

import subprocess
import sys

from fleetwatch.app.run_output import output_to, task_lines


def test_output_to_sends_this_process_and_its_children_to_the_file(tmp_path, capfd):
    log = tmp_path / "logs" / "run.log"
    with output_to(log):
        print("from python")
        print("an error", file=sys.stderr)
        subprocess.run(["echo", "from a child"], check=True)
    print("after")

    assert log.read_text().splitlines() == ["from python", "an error", "from a child"]
    captured = capfd.readouterr()
    assert captured.out == "after\n" and captured.err == ""


def test_task_lines_give_each_task_that_ran_then_the_others_by_state():
    tasks = [("validate", "success", 40.04), ("features", "failed", 3.0), ("score", "upstream_failed", None),
             ("publish", "upstream_failed", None), ("drift_check", "skipped", None)]

    lines = task_lines(tasks)

    assert [line.split() for line in lines] == [
        ["validate", "success", "40.0", "s"], ["features", "failed", "3.0", "s"],
        ["upstream_failed:", "score,", "publish"], ["skipped:", "drift_check"],
    ]
