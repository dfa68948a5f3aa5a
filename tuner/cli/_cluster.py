"""`tuner submit | jobs | logs | cancel`: sweeps as Ray jobs on a cluster, from the terminal."""

from __future__ import annotations

import argparse
import sys
import time

_ADDRESS_HELP = "the cluster's Ray dashboard, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="run a sweep on a Ray cluster, as a Ray job; prints the job id")
    p.add_argument("spec", help="sweep spec YAML; the files it names relative to it travel with it")
    p.add_argument("--address", help=_ADDRESS_HELP)
    p.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                   help="an environment variable for the job (its value here, or VALUE); repeatable")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", help="list the jobs of a Ray cluster")
    p.add_argument("--address", help=_ADDRESS_HELP)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("logs", help="print a job's log (--follow: as it grows, until the job ends)")
    p.add_argument("job", help="job id, as printed by tuner submit")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    p.add_argument("--address", help=_ADDRESS_HELP)
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("cancel", help="stop a job: its trials stop, and 'tuner resume' can continue its sweep")
    p.add_argument("job", help="job id, as printed by tuner submit")
    p.add_argument("--address", help=_ADDRESS_HELP)
    p.set_defaults(func=cmd_cancel)


def _note(text: str) -> None:
    print(text, file=sys.stderr)


def cmd_submit(args: argparse.Namespace) -> int:
    from tuner.cluster import dashboard_address, shown, submit_sweep

    address = dashboard_address(args.address)
    job_id, package = submit_sweep(args.spec, address, args.env)
    spec = package.spec
    for warning in spec.warnings():
        _note(f"warning: {warning}")
    for name in package.unset:
        _note(f"note: the spec refers to ${{{name}}}, which is not set here: the job uses the cluster's value")
    if spec.storage is None or spec.storage.startswith("sqlite"):
        _note("note: the study is in SQLite on the cluster's head, in the job's folder; give the spec a "
              "PostgreSQL storage URL to read it from elsewhere (tuner status, tuner resume)")
    sent = f" with {', '.join(package.files)}" if package.files else ""
    _note(f"submitted sweep {spec.name} ({package.spec_file}{sent}) to {shown(address)} as job {job_id}")
    _note(f"follow it: tuner logs {job_id} --follow   |   stop it: tuner cancel {job_id}")
    print(job_id)
    return 0


def _when(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else "-"


def _took(start: float | None, end: float | None) -> str:
    if not start:
        return "-"
    seconds = int((end or time.time()) - start)
    return (f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600
            else f"{seconds // 60}m{seconds % 60:02d}s")


def cmd_jobs(args: argparse.Namespace) -> int:
    from tuner.cluster import dashboard_address, list_jobs, shown

    address = dashboard_address(args.address)
    rows = list_jobs(address)
    if not rows:
        print(f"no jobs on {shown(address)}")
        return 0
    width = max(len("JOB"), *(len(r.job_id) for r in rows))
    print(f"{'JOB':<{width}}  {'STATUS':<9}  {'SWEEP':<20}  {'STARTED':<19}  {'TOOK':>7}")
    for r in rows:
        print(f"{r.job_id:<{width}}  {r.status:<9}  {r.sweep or '-':<20}  {_when(r.start_time):<19}  "
              f"{_took(r.start_time, r.end_time):>7}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from tuner.cluster import dashboard_address, follow_logs, job_logs

    address = dashboard_address(args.address)
    if not args.follow:
        sys.stdout.write(job_logs(address, args.job))
        return 0

    def write(chunk: str) -> None:
        sys.stdout.write(chunk)
        sys.stdout.flush()

    row = follow_logs(address, args.job, write)
    _note(f"job {row.job_id}: {row.status}" + (f" ({row.message})" if row.message else ""))
    return 0 if row.status == "SUCCEEDED" else 1


def cmd_cancel(args: argparse.Namespace) -> int:
    from tuner.cluster import cancel_job, dashboard_address

    address = dashboard_address(args.address)
    row, was_running = cancel_job(address, args.job)
    if not was_running:
        print(f"job {row.job_id} had already ended ({row.status}); nothing to stop")
        return 0
    if row.status not in ("STOPPED", "SUCCEEDED", "FAILED"):
        print(f"job {row.job_id} was asked to stop and is {row.status}; check with: tuner jobs", file=sys.stderr)
        return 1
    print(f"job {row.job_id}: {row.status}")
    if row.sweep and row.status == "STOPPED":
        print(f"sweep {row.sweep} stopped; submit {row.spec_file or 'its spec'} again to continue it "
              "(or run tuner resume SPEC where the study's database is reachable)", file=sys.stderr)
    return 0
