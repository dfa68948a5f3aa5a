"""An external trainer as a trial (`trial.engine: command | verl | openrlhf | trl`): start it, read its
reports, stop it. What differs per engine (its argv, where its reports are, their units) is its
`tuner.engines.Engine`; the argv is made in `_launch`. The trainer's
output goes to the trial's trainer.log; report lines (or, for verl, the lines of its metrics file) are
queued as they are written.

The trial's config reaches the trainer as '{field}' placeholders in its argv and as the JSON file that
$PPO_TUNER_TRIAL_CONFIG names (number, params, engine, kl_limit, and the engine's launch
arguments). The n-th report is the trial's iteration n; the one numbered engine.num_iterations
(budget.iterations) is its last.

The trainer runs in its own process group. Whenever the trial ends (its last report, the KL limit, the
scheduler, a fault) the group gets SIGTERM, then SIGKILL after `stop_grace` seconds.
"""

from __future__ import annotations

import json
import math
import os
import queue
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trials import metrics as K
from trials.process import die_with_parent, stop_group
from tuner.engines import (
    CONFIG_ENV,
    PLACEHOLDER,
    PREFIX,
    Engine,
    TrainerError,
    command_argv,
    parse_report,
)
from tuner.engines import engine as engine_named
from tuner.trial._admission import Admission
from tuner.trial._launch import launch
from tuner.trial._result import StopReason, TrialReport
from tuner.trial._scoring import Scorer, scheduler_score
from tuner.trial._task import TrialTask

__all__ = [
    "CONFIG_ENV", "PLACEHOLDER", "PREFIX", "TrainerError", "TrainerProcess", "command_argv",
    "parse_report", "run_command",
]

LOG_FILE = "trainer.log"  # the trainer's stdout and stderr, in the trial's folder
_TAIL_LINES = 30  # of the log, in a failed trial's error
_TIMEOUT, _STOPPED, _EOF = "timeout", "stopped", "eof"
_POLL = 0.02  # s between reads of a metrics file: the most a report waits to be seen
_DRAIN = 2.0  # s the last reports of an exited trainer are waited for (its end marker comes sooner)
_STEP = "step"  # the trainer's own step number in a decoded report (verl's file logger, OpenRLHF's global step)


class TrainerProcess:
    """The trainer in its own process group; a thread copies its output to the log and queues the report
    lines (those holding `marker`); where the trainer writes its reports to a file (`metrics_path`), a
    second thread reads that file as it grows and queues its lines instead."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, marker: str | None = PREFIX,
                 metrics_path: Path | None = None):
        self.log_path = cwd / LOG_FILE
        self.tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self.lines: queue.Queue[tuple[float, str] | None] = queue.Queue()
        self.marker, self._output_done = marker, threading.Event()
        try:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
                                         start_new_session=True, preexec_fn=die_with_parent)
        except OSError as exc:
            raise TrainerError(f"trial.command could not be started: {exc}") from None
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, args=(metrics_path is None,), name=f"trainer-{self.pid}",
                                        daemon=True)
        self._reader.start()
        if metrics_path is not None:
            threading.Thread(target=self._follow, args=(metrics_path,), name=f"metrics-{self.pid}", daemon=True).start()

    def _read(self, last: bool) -> None:
        assert self.proc.stdout is not None
        # a retried trial's attempts, one after another; line-buffered: a child the trainer left may hold
        # its output open past the trial's end, and what the trainer last wrote must be in the log by then
        with self.log_path.open("a", buffering=1) as log:
            for line in self.proc.stdout:
                log.write(line)
                self.tail.append(line.rstrip("\n"))
                if self.marker is not None and self.marker in line:
                    self.lines.put((time.perf_counter(), line))
        self._output_done.set()
        if last:
            self.lines.put(None)

    def _follow(self, path: Path) -> None:
        """Queue each complete line the trainer appends to `path`, polled every _POLL s, until its output ends."""
        handle, partial = None, b""
        try:
            while True:
                # its output ended, or it exited (children it left may hold its output open): one last read
                done = self._output_done.is_set() or self.proc.poll() is not None
                if handle is None and path.exists():
                    handle = path.open("rb")
                chunk = handle.read() if handle is not None else b""
                if chunk:
                    *complete, partial = (partial + chunk).split(b"\n")
                    now = time.perf_counter()
                    for line in complete:
                        if line.strip():
                            self.lines.put((now, line.decode("utf-8", "replace")))
                if done:
                    break
                time.sleep(_POLL)
        finally:
            if handle is not None:
                handle.close()
            self.lines.put(None)

    def next_report(self, timeout: float, stop_requested: Callable[[], bool]) -> tuple[float, str] | str:
        """The next report line with the time it was read, or _EOF, _TIMEOUT, _STOPPED."""
        deadline = time.monotonic() + timeout
        while True:
            if stop_requested():
                return _STOPPED
            left = deadline - time.monotonic()
            if left <= 0:
                return _TIMEOUT
            try:
                item = self.lines.get(timeout=min(0.1, left))
            except queue.Empty:
                if self.proc.poll() is None:
                    continue
                # it exited; its output pipe may stay open in children it left (data loaders): read what is
                # buffered, waiting for the readers as long as a loaded machine may keep them from running
                try:
                    item = self.lines.get(timeout=_DRAIN)
                except queue.Empty:
                    return _EOF
            return _EOF if item is None else item

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self) -> str:
        self._reader.join(timeout=_DRAIN)
        return "\n".join(self.tail)

    def stop(self, grace: float) -> None:
        """SIGTERM to the process group, SIGKILL after `grace` seconds; leaves nothing of the group running.
        Then waits (bounded) for its output to be copied, so the trial's trainer.log is whole when it ends."""
        stop_group(self.proc, grace)
        self._reader.join(timeout=_DRAIN)


def run_command(task: TrialTask, emit: Callable[[dict[str, Any]], Any], workdir: Path,
                stop_requested: Callable[[], bool] = lambda: False, env: dict[str, str] | None = None,
                ray_address: str = "", admission: Admission | None = None) -> None:
    """Run the task's external trainer to its end, emitting a TrialReport result per report.

    Stops it after its last report, past the KL limit, or when `stop_requested()` (checked before
    it is started too: then it never starts); raises TrainerError
    on a fault (with the log's tail). `emit` may raise (Ray stops the trial): the trainer is stopped too.
    `ray_address`: the sweep's cluster, which an engine with a Ray of its own joins (else it starts its own);
    `admission`: there, the trainer starts once its GPUs can be placed (`_admission`), and if the trial is
    stopped while it waits, it never starts.
    """
    ext, objective, engine = task.external, task.objective, engine_named(task.engine_kind)
    direction, last = objective["direction"], int(task.engine["num_iterations"])
    limit = task.kl_stopper()
    scorer = Scorer(objective["metric"], direction, objective["score"], objective["last_k"], math.nan)
    argv, args, lost = launch(task.engine_kind, ext["command"], task.engine, workdir, task.number, ext.get("fields"))
    config = workdir / "trial_config.json"
    config.write_text(json.dumps({"number": task.number, "params": task.params, "engine": task.engine,
                                  "kl_limit": task.kl_limit, "launch": args, "not_expressed": lost},
                                 indent=1))
    environ = {**os.environ, **engine.environ(workdir, ext.get("ray", "private"), ray_address),
               **ext.get("env", {}), CONFIG_ENV: str(config), **(env or {})}
    started = time.perf_counter()
    metrics_path = workdir / engine.metrics_file if engine.metrics_file else None
    earlier = earlier_steps(engine, workdir) if engine.checkpoint else {}
    try:
        # the sweep stopped while this trial was being set up or waited for GPUs: no trainer starts
        if stop_requested() or (admission is not None and not admission.wait()):
            _give_up(engine, environ, admission)
            return
        trainer = TrainerProcess(argv, environ, workdir, engine.marker, metrics_path)
    except TrainerError:
        _give_up(engine, environ, admission)
        raise
    if admission is not None:
        admission.launched(lambda: trainer.proc.poll() is None)
    try:
        count, previous, held = 0, started, {}

        def report(metrics: dict[str, float], own: dict[str, float]) -> bool:
            """Emit the trial's next iteration; whether the KL limit stops it there."""
            nonlocal count
            count += 1
            over = limit(count, metrics)
            score = scorer.update(metrics)
            reason = StopReason.of_kl(limit) if over else StopReason.COMPLETED if count == last else None
            emit(TrialReport(metrics=metrics, objective=score, scheduler_score=scheduler_score(score, over, direction),
                             kl_max=limit.kl_max, stop_reason=reason, start_seconds=0.0, pid=trainer.pid,
                             trainer=own).to_result())
            return over

        while count < last:
            item = trainer.next_report(float(ext["report_timeout"]), stop_requested)
            if item == _STOPPED:
                return
            if item == _TIMEOUT:
                waiting = admission.waiting_for() if admission is not None else ""
                raise TrainerError(f"TrainerTimeout: no report for {ext['report_timeout']:g} s (trial.report_timeout) "
                                   f"after {count} reports{'. ' + waiting if waiting else ''}; log tail:\n"
                                   f"{trainer.log_tail()}")
            if item == _EOF:
                break
            at, line = item
            raw = engine.decode(line)
            if raw is None:
                continue
            if not engine.units.needs_kl and engine.units.kl_of(raw) is None and K.KL not in raw:
                held.update(raw)  # a record without KL (verl's validation before training): merged into the next
                continue
            raw, held = {**held, **raw}, {}
            if admission is not None:  # it trains, so its GPUs are placed: the next trial may be admitted
                admission.close()
            # a trainer resumed from its checkpoint at step s-1 reports step s first: the steps before it are
            # this trial's own, reported by its earlier attempt, and are reported again as its iterations
            for step in range(count + 1, int(raw.get(_STEP, 0)) if engine.checkpoint else 0):
                if step not in earlier:
                    raise TrainerError(f"the trainer resumed at step {int(raw[_STEP])}, but this trial's earlier "
                                       f"attempts reported no step {step}: was its checkpoint folder another "
                                       f"trial's?; log tail:\n{trainer.log_tail()}")
                if report(*engine.units.convert(earlier[step])):
                    return
            metrics, own = engine.units.convert(raw)
            metrics.setdefault(K.ITERATION_SECONDS, at - previous)
            previous = at
            if report(metrics, own):
                return
        _check_exit(trainer, count, last, float(ext["report_timeout"]))
    finally:
        trainer.stop(float(ext.get("stop_grace", 10.0)))
        _give_up(engine, environ, admission)


def _give_up(engine: Engine, environ: dict[str, str], admission: Admission | None) -> None:
    """What a trial leaves once its trainer is gone or never started: a private Ray's folder, its lease."""
    engine.cleanup(environ)
    if admission is not None:
        admission.close()


def earlier_steps(engine: Engine, workdir: Path) -> dict[int, dict[str, float]]:
    """An engine that resumes from its checkpoints: the reports of this trial's earlier attempts in its
    folder, by the trainer's step (a later attempt's report of a step replaces an earlier one's). Its
    metrics file is then set aside (as <file>.<n>), so that this attempt's reports are read from a new one."""
    path = workdir / engine.metrics_file if engine.metrics_file else workdir / LOG_FILE
    found: dict[int, dict[str, float]] = {}
    # the metrics files of the attempts before the last, set aside in order, then the last one's
    aside = sorted((p for p in workdir.glob(f"{engine.metrics_file}.*") if p.suffix[1:].isdigit()),
                   key=lambda p: int(p.suffix[1:])) if engine.metrics_file else []
    files = [p for p in (*aside, path) if p.is_file()]
    if not files:
        return found
    held: dict[str, float] = {}
    for line in (line for p in files for line in p.read_text(errors="replace").splitlines()):
        if engine.marker is not None and engine.marker not in line or not line.strip():
            continue
        try:
            raw = engine.decode(line)
        except TrainerError:  # a line cut short when the attempt was killed
            continue
        if raw is None or _STEP not in raw:
            continue
        if not engine.units.needs_kl and engine.units.kl_of(raw) is None and K.KL not in raw:
            held.update(raw)
            continue
        found[int(raw[_STEP])], held = {**held, **raw}, {}
    if engine.metrics_file and path.is_file():
        path.rename(path.with_name(f"{path.name}.{len(aside) + 1}"))
    return found


def _check_exit(trainer: TrainerProcess, count: int, last: int, timeout: float) -> None:
    """After the last report: the trainer may finish (save, clean up) within the timeout. Before it: a fault."""
    if count == last:  # done; it may still save and clean up
        trainer.wait(timeout)
        return
    code = trainer.wait()
    if code != 0:
        raise TrainerError(f"TrainerExited: the trainer exited with code {code} after {count} reports; "
                           f"log tail:\n{trainer.log_tail()}", retryable=True)
    raise TrainerError(f"TrainerExited: the trainer exited (code 0) after {count} of {last} reports: pass "
                       "'{num_iterations}' to it (one report per iteration) or lower budget.iterations; "
                       f"log tail:\n{trainer.log_tail()}")
