"""trials.process's orphan handling, in a real process tree: a process that starts a child which leaves a
grandchild in a session of its own (as a Ray worker leaves a trial's server when it ends)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

# The tree under test, run in a fresh interpreter (a subreaper flag would stay on pytest's process):
# MIDDLE starts ORPHAN in a session of its own and exits at once; ORPHAN outlives it by LINGER seconds.
SCRIPT = """
import json, os, subprocess, sys, time
from trials.process import adopt_orphans, descendants, end_descendants
adopt, linger, grace = sys.argv[1] == "adopt", float(sys.argv[2]), float(sys.argv[3])
adopted = adopt_orphans() is False and adopt_orphans() is True if adopt else False  # off, then on
kept = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # there before: kept
before = descendants()
orphan_code = "import os, sys, time; print(os.getpid(), flush=True); time.sleep(float(sys.argv[1]))"
middle = subprocess.run([sys.executable, "-c",
    "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2]], "
    "start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True); "
    "print(p.stdout.readline().strip())",
    orphan_code, str(linger)], capture_output=True, text=True, check=True)
orphan = int(middle.stdout.strip())
found = any(pid == orphan for pid, _ in descendants())
started = time.monotonic()
killed = end_descendants(before, grace)
took = time.monotonic() - started
state = "gone"
try:
    with open(f"/proc/{orphan}/stat") as f:
        state = f.read().rpartition(")")[2].split()[0]
except OSError:
    pass
print(json.dumps({"adopted": adopted, "found": found, "killed": killed, "orphan": orphan, "took": took,
                  "state": state, "kept_alive": kept.poll() is None}))
kept.kill()
if not adopt:
    os.kill(orphan, 9)
"""


def run_tree(adopt: bool, linger: float, grace: float) -> dict:
    done = subprocess.run([sys.executable, "-c", SCRIPT, "adopt" if adopt else "no", str(linger), str(grace)],
                          capture_output=True, text=True, timeout=120, cwd=os.getcwd())
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_an_orphan_that_ends_within_the_grace_is_waited_for_not_killed():
    seen = run_tree(adopt=True, linger=2.0, grace=30.0)
    assert seen["adopted"] and seen["found"], seen
    assert seen["killed"] == [] and seen["state"] == "gone" and seen["kept_alive"], seen
    assert 1.0 < seen["took"] < 20.0, seen  # it waited for the orphan's end, no longer


def test_an_orphan_that_outlives_the_grace_is_killed_and_reaped():
    started = time.monotonic()
    seen = run_tree(adopt=True, linger=120.0, grace=1.0)
    assert seen["killed"] == [seen["orphan"]] and seen["state"] == "gone" and seen["kept_alive"], seen
    assert time.monotonic() - started < 60


def test_without_adoption_the_orphan_is_out_of_reach():
    """What adopt_orphans is for: without it the orphan goes to init, and nothing below this process
    names it (the check above could fail)."""
    seen = run_tree(adopt=False, linger=120.0, grace=1.0)
    assert not seen["found"] and seen["killed"] == [] and seen["state"] not in ("gone", "Z"), seen
