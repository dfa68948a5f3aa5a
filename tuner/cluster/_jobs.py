"""Sweeps as Ray jobs: submit one, list them, read or follow a job's log, stop one.

Every call goes through Ray's Job Submission API (`ray.job_submission.JobSubmissionClient`) to the
dashboard of the cluster's head; `connect` in `_address` makes the client.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.cluster._address import api_errors, connect
from tuner.cluster._package import JobPackage, package_sweep

__all__ = ["FINISHED", "JobRow", "cancel_job", "follow_logs", "job_logs", "job_status", "list_jobs", "submit_sweep"]

FINISHED = ("SUCCEEDED", "FAILED", "STOPPED")
SWEEP_KEY, SPEC_KEY = "ppo_tuner.sweep", "ppo_tuner.spec"  # job metadata: the sweep's name, its spec file


@dataclass
class JobRow:
    job_id: str
    status: str
    sweep: str  # the sweep's name, "" for jobs not submitted by tuner
    spec_file: str  # the spec's file name, "" for jobs not submitted by tuner
    start_time: float | None  # seconds since the epoch
    end_time: float | None
    message: str


def submit_sweep(spec_path: str | Path, address: str, env: list[str] | None = None) -> tuple[str, JobPackage]:
    """Submit the sweep of a spec file as a Ray job; returns the job id and what was sent."""
    with tempfile.TemporaryDirectory(prefix="ppo-tuner-job-") as tmp:
        package = package_sweep(spec_path, Path(tmp) / "job", env)  # checked before the cluster is asked
        client = connect(address)
        job_id = f"sweep-{package.spec.name}-{secrets.token_hex(3)}"
        with api_errors(address, hide=package.secrets()):
            client.submit_job(entrypoint=package.entrypoint(), submission_id=job_id,
                              runtime_env=package.runtime_env(),
                              metadata={SWEEP_KEY: package.spec.name, SPEC_KEY: package.spec_file})
    return job_id, package


def _row(info: Any) -> JobRow:
    def seconds(ms: int | None) -> float | None:
        return ms / 1000 if ms else None

    return JobRow(job_id=info.submission_id or info.job_id or "?", status=str(info.status.value),
                  sweep=(info.metadata or {}).get(SWEEP_KEY, ""),
                  spec_file=(info.metadata or {}).get(SPEC_KEY, ""), start_time=seconds(info.start_time),
                  end_time=seconds(info.end_time), message=" ".join((info.message or "").split()))


def list_jobs(address: str) -> list[JobRow]:
    """Every job the cluster knows, oldest first."""
    client = connect(address)
    with api_errors(address):
        jobs = client.list_jobs()
    return sorted((_row(j) for j in jobs), key=lambda r: r.start_time or 0.0)


def job_status(address: str, job_id: str, client: Any = None) -> JobRow:
    client = client or connect(address)
    with api_errors(address, job_id):
        return _row(client.get_job_info(job_id))


def job_logs(address: str, job_id: str) -> str:
    client = connect(address)
    with api_errors(address, job_id):
        client.get_job_info(job_id)  # an unknown job is a ConfigError, not an empty log
        return client.get_job_logs(job_id)


def follow_logs(address: str, job_id: str, write: Callable[[str], Any]) -> JobRow:
    """Write the job's log as it grows until the job ends; returns its final state."""
    client = connect(address)
    job_status(address, job_id, client)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    with api_errors(address, job_id):
        asyncio.run(tail())
    row = job_status(address, job_id, client)
    for _ in range(20):  # the log can close a moment before the status is final
        if row.status in FINISHED:
            break
        time.sleep(0.5)
        row = job_status(address, job_id, client)
    return row


def cancel_job(address: str, job_id: str, wait: float = 90.0) -> tuple[JobRow, bool]:
    """Ask the job to stop, and wait up to `wait` seconds for it to end. Returns its state and whether
    it was still running (False: it had already ended)."""
    client = connect(address)
    row = job_status(address, job_id, client)
    if row.status in FINISHED:
        return row, False
    with api_errors(address, job_id):
        client.stop_job(job_id)
    deadline = time.monotonic() + wait
    while row.status not in FINISHED and time.monotonic() < deadline:
        time.sleep(1.0)
        row = job_status(address, job_id, client)
    return row, True
