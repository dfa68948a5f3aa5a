"""Sweeps on a Ray cluster: submitted as Ray jobs through the cluster's Job Submission API.

`submit_sweep` packs a spec with the files it names and sends it as a job whose driver runs
`tuner run` on the cluster; `list_jobs`, `job_logs`, `follow_logs` and `cancel_job` watch and stop
jobs. The address is the head's dashboard (`http://HEAD:8265`, or RAY_ADDRESS); the Ray token is
sent where this machine has one. `unshared_nodes` finds the nodes that do not share a folder with
this one (a verl sweep's folder must be shared).
"""

from __future__ import annotations

from tuner.cluster._address import auth_token, connect, dashboard_address, shown
from tuner.cluster._jobs import (
    FINISHED,
    JobRow,
    cancel_job,
    follow_logs,
    job_logs,
    job_status,
    list_jobs,
    submit_sweep,
)
from tuner.cluster._package import STOP_ENV, JobPackage, package_sweep
from tuner.cluster._storage import unshared_nodes

__all__ = ["FINISHED", "STOP_ENV", "JobPackage", "JobRow", "auth_token", "cancel_job", "connect",
           "dashboard_address", "follow_logs", "job_logs", "job_status", "list_jobs", "package_sweep",
           "shown", "submit_sweep", "unshared_nodes"]
