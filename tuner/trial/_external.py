"""An external trainer as a trial (`trial.engine: command`): start it, read its reports, stop it.

The protocol: the trainer prints one line per logged step on stdout (or stderr),

    @ppo-tuner {"step": 3, "kl": 4.2, "reward": 0.61, "loss": 0.9}

a JSON object after the prefix. `kl` is nats summed over the response (our unit); a trainer that logs
the per-token mean gives `kl_per_token` and `response_length` instead (mean tokens per response), and
their product is taken (exact when every response has the mean length). `reward` becomes
objective/scores, `eval_reward` eval/scores; a key that is one of our metric names is taken as is; every
number is also kept under trainer/<key>. Every other line goes to the trial's trainer.log only.

The trial's config reaches the trainer as '{field}' placeholders in its argv and as the JSON file that
$PPO_TUNER_TRIAL_CONFIG names (number, params, engine, kl_limit). The n-th report is the trial's
iteration n; the one numbered engine.num_iterations (budget.iterations) is its last.

The trainer runs in its own process group. Whenever the trial ends (its last report, the KL limit, the
scheduler, a fault) the group gets SIGTERM, then SIGKILL after `stop_grace` seconds.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trials import metrics as K
from tuner.trial._result import StopReason, TrialReport
from tuner.trial._scoring import Scorer, scheduler_score
from tuner.trial._task import TrialTask

__all__ = ["CONFIG_ENV", "PLACEHOLDER", "PREFIX", "TrainerError", "TrainerProcess", "command_argv", "parse_report", "run_command"]

PREFIX = "@ppo-tuner "  # a report line: this, then one JSON object
CONFIG_ENV = "PPO_TUNER_TRIAL_CONFIG"  # names the trial's config file (JSON)
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")  # '{policy_lr}' in trial.command: that engine field's value
LOG_FILE = "trainer.log"  # the trainer's stdout and stderr, in the trial's folder
_TAIL_LINES = 30  # of the log, in a failed trial's error
_TIMEOUT, _STOPPED, _EOF = "timeout", "stopped", "eof"


class TrainerError(Exception):
    """The external trainer failed: exited non-zero, went silent, or wrote a report we cannot read."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


def parse_report(line: str) -> tuple[dict[str, float], dict[str, float]] | None:
    """A report line's metrics under our names and the trainer's own numbers; None for another line."""
    if not line.startswith(PREFIX):
        return None
    try:
        data = json.loads(line[len(PREFIX):])
    except json.JSONDecodeError as exc:
        raise TrainerError(f"a report line is not JSON ({exc.msg}): {line.strip()[:200]}") from None
    if not isinstance(data, dict):
        raise TrainerError(f"a report line must hold a JSON object: {line.strip()[:200]}")
    raw = {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    ours = {k: v for k, v in raw.items() if k in K.ALL}
    if "kl" in raw:
        ours[K.KL] = raw["kl"]  # nats, summed over the response
    elif "kl_per_token" in raw and "response_length" in raw:
        ours[K.KL] = raw["kl_per_token"] * raw["response_length"]  # nats/token x tokens
    elif K.KL not in ours:
        raise TrainerError("a report needs 'kl' (nats summed over the response), or 'kl_per_token' with "
                           f"'response_length': {line.strip()[:200]}")
    for theirs, name in (("reward", K.SCORES), ("eval_reward", K.EVAL_SCORES), ("response_length", K.RESPONSE_LENGTH)):
        if theirs in raw:
            ours.setdefault(name, raw[theirs])
    return ours, {k: v for k, v in raw.items() if k not in K.ALL}


def _die_with_parent() -> None:
    """In the child: SIGKILL when the thread that started it dies (a worker killed outright)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class TrainerProcess:
    """The trainer in its own process group; a thread copies its output to the log and queues reports."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path):
        self.log_path = cwd / LOG_FILE
        self.tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self.lines: queue.Queue[tuple[float, str] | None] = queue.Queue()
        try:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        except OSError as exc:
            raise TrainerError(f"trial.command could not be started: {exc}") from None
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, name=f"trainer-{self.pid}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.log_path.open("w") as log:
            for line in self.proc.stdout:
                log.write(line)
                self.tail.append(line.rstrip("\n"))
                if line.startswith(PREFIX):
                    self.lines.put((time.perf_counter(), line))
                    log.flush()
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
                # it exited; its output pipe may stay open in children it left (data loaders): read what is buffered
                try:
                    item = self.lines.get(timeout=0.2)
                except queue.Empty:
                    return _EOF
            return _EOF if item is None else item

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self) -> str:
        self._reader.join(timeout=0.2)
        return "\n".join(self.tail)

    def stop(self, grace: float) -> None:
        """SIGTERM to the process group, SIGKILL after `grace` seconds; leaves nothing of the group running."""
        if self.proc.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)
            self.wait(grace)
        _signal_group(self.pid, signal.SIGKILL)  # the leader's children too, even when it exited by itself
        self.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def command_argv(command: list[str], engine: dict[str, Any]) -> list[str]:
    """trial.command with each '{field}' replaced by the trial's value of that engine field."""
    return [PLACEHOLDER.sub(lambda m: str(engine[m.group(1)]), arg) for arg in command]


def run_command(task: TrialTask, emit: Callable[[dict[str, Any]], Any], workdir: Path,
                stop_requested: Callable[[], bool] = lambda: False, env: dict[str, str] | None = None) -> None:
    """Run the task's external trainer to its end, emitting a TrialReport result per report line.

    Stops it after its last report, past the KL limit, or when `stop_requested()`; raises TrainerError
    on a fault (with the log's tail). `emit` may raise (Ray stops the trial): the trainer is stopped too.
    """
    ext, objective = task.external, task.objective
    direction, last = objective["direction"], int(task.engine["num_iterations"])
    limit = task.kl_stopper()
    scorer = Scorer(objective["metric"], direction, objective["score"], objective["last_k"], math.nan)
    config = workdir / "trial_config.json"
    config.write_text(json.dumps({"number": task.number, "params": task.params, "engine": task.engine,
                                  "kl_limit": task.kl_limit}, indent=1))
    environ = {**os.environ, **ext.get("env", {}), CONFIG_ENV: str(config), **(env or {})}
    started = time.perf_counter()
    trainer = TrainerProcess(command_argv(ext["command"], task.engine), environ, workdir)
    try:
        count, previous = 0, started
        while count < last:
            item = trainer.next_report(float(ext["report_timeout"]), stop_requested)
            if item == _STOPPED:
                return
            if item == _TIMEOUT:
                raise TrainerError(f"TrainerTimeout: no report for {ext['report_timeout']:g} s (trial.report_timeout) "
                                   f"after {count} reports; log tail:\n{trainer.log_tail()}")
            if item == _EOF:
                break
            at, line = item
            metrics, own = parse_report(line) or ({}, {})
            count += 1
            metrics.setdefault(K.ITERATION_SECONDS, at - previous)
            previous = at
            over = limit(count, metrics)
            score = scorer.update(metrics)
            reason = StopReason.of_kl(limit) if over else StopReason.COMPLETED if count == last else None
            emit(TrialReport(metrics=metrics, objective=score, scheduler_score=scheduler_score(score, over, direction),
                             kl_max=limit.kl_max, stop_reason=reason, start_seconds=0.0, pid=trainer.pid,
                             trainer=own).to_result())
            if over:
                return
        _check_exit(trainer, count, last, float(ext["report_timeout"]))
    finally:
        trainer.stop(float(ext.get("stop_grace", 10.0)))


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
