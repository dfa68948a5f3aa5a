"""The external engines a trial can run: how each is started and where its metrics are read.

Every engine runs under `_external` (start, reports, KL limit, stop, faults); this module says, per
engine, (a) its launch argv: the user's `trial.command` (their interpreter, module and fixed arguments)
followed by the trial's hyperparameters in the engine's own names, through the same mapping as
`tuner export` (`tuner.export.engine_launch`); (b) where its metrics are read as they are written,
without a change to the trainer; (c) how its KL to the reference becomes our unit and which key is
the reward (`Units`).

- command: the JSON-lines protocol on its output (`@ppo-tuner {...}`).
- verl 0.9: its `file` logger (verl/utils/tracking.py FileLogger: one `{"step": n, "data": {...}}` line
  per step, unbuffered, at $VERL_FILE_LOGGER_PATH). KL: `actor/reward_kl_penalty` (the KL to the
  reference in the reward, per-token mean averaged over the batch; ray_trainer.apply_kl_penalty), else
  `actor/kl_loss`; never `actor/ppo_kl` (the policy against its own rollout). x `response_length/mean`.
  Reward: `critic/score/mean`.
- OpenRLHF 0.11: its per-step log line (`✨ Global step N: {...}`, trainer/ppo_trainer.py, the same dict
  its TensorBoard and W&B loggers get, printed before them and with no flush delay). KL: `kl` (per-token
  mean to the reference, experience_maker.py) x `rollout/response_length_mean`. Reward: `rollout/reward_mean`.
- TRL 1.12: our launcher (`launchers/trl_ppo.py`, run by the user's interpreter) builds
  `trl.experimental.ppo.PPOTrainer` and prints TRL's own logs in the protocol; TRL's `objective/kl` is
  already summed over the response (ppo_trainer.py: `mean_kl = kl.sum(1).mean()`).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trials import ConfigError, PPOConfig, Problem
from trials import metrics as K
from tuner.export import engine_launch
from tuner.export._common import hydra_word
from tuner.trial._protocol import PREFIX, PROTOCOL, TrainerError, Units, command_argv, numbers
from tuner.trial._result import last_line

__all__ = ["ENGINES", "Engine", "LAUNCHERS", "check_trainer", "launch_argv"]

LAUNCHERS = Path(__file__).parent / "launchers"
_RAY_TMP = "ray-trial-"  # prefix of a private Ray's temp folder
_OPENRLHF_STEP = re.compile(r"Global step (\d+): (\{.*\})\s*$")


def _protocol_line(line: str) -> dict[str, float]:
    try:
        data = json.loads(line[line.index(PREFIX) + len(PREFIX):])
    except json.JSONDecodeError as exc:
        raise TrainerError(f"a report line is not JSON ({exc.msg}): {line.strip()[:200]}") from None
    if not isinstance(data, dict):
        raise TrainerError(f"a report line must hold a JSON object: {line.strip()[:200]}")
    return numbers(data)


def _verl_line(line: str) -> dict[str, float]:
    """One line of verl's file logger: {"step": n, "data": {metric: value}}."""
    try:
        record = json.loads(line)
        return {"step": float(record["step"]), **numbers(record["data"])}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise TrainerError(f"verl's metrics file has a line we cannot read ({exc}): {line.strip()[:200]}") from None


def _openrlhf_line(line: str) -> dict[str, float] | None:
    """OpenRLHF's `✨ Global step N: {...}` (a Python dict's repr) after its logger's prefix."""
    match = _OPENRLHF_STEP.search(line)
    if match is None:  # another line naming a global step
        return None
    try:
        status = ast.literal_eval(match.group(2))
    except (ValueError, SyntaxError):  # a value that is not a literal (np.float64(...)): take the plain numbers
        status = {k: float(v) for k, v in re.findall(r"'([^']+)': (?:\w+\.\w+\()?(-?[0-9.]+(?:e[-+]?\d+)?|nan|inf)", match.group(2))}
    return {"step": float(match.group(1)), **numbers(status)}


@dataclass(frozen=True)
class Engine:
    """One external engine: how its trainer is started and how its reports are read."""

    name: str
    units: Units
    marker: str | None  # a line of the trainer's output holding this is a report; None: its reports go to metrics_file
    decode: Any  # (line) -> the report's numbers under the engine's names, None for no report; TrainerError when malformed
    export: str = ""  # the export target whose mapping gives the hyperparameters' arguments ("" for command)
    metrics_file: str = ""  # the trainer writes its reports to this file in the trial's folder ...
    metrics_env: str = ""  # ... which this environment variable names to it
    extra: tuple[str, ...] = ()  # arguments after the hyperparameters
    launcher: str = ""  # a script of ours the user's interpreter runs (after trial.command)
    ray: bool = False  # the trainer starts or joins a Ray of its own
    gpu_args: tuple[str, ...] = field(default=())  # its arguments that count the GPUs it uses
    user_choice: tuple[str, ...] = ()  # settings of the export's `fixed` table that trial.command may set instead
    path_setting: str = ""  # a Hydra override that also gives metrics_file's path to the trainer's Ray actors
    imports: tuple[str, ...] = ()  # modules trial.command's interpreter must import (check_trainer)
    setup: str = ""  # how a user gets an interpreter that imports them

    def launch(self, command: list[str], engine: dict[str, Any], workdir: Path | None = None
               ) -> tuple[list[str], Any, list[str]]:
        """(argv, the launch arguments as the exporter gives them, the values the engine cannot express).
        `workdir`: the trial's folder, where the trainer writes metrics_file."""
        argv = command_argv(command, engine)
        if not self.export:
            return argv, None, []
        args, lost = engine_launch(PPOConfig.from_dict(engine), self.export)
        if self.launcher:
            return [*argv, str(LAUNCHERS / self.launcher)], args, lost
        mine = {word.split("=", 1)[0] for word in argv if "=" in word}  # the user's Hydra overrides
        words = [w for w in args if w.split("=", 1)[0] not in mine or w.split("=", 1)[0] not in self.user_choice]
        extra = list(self.extra)
        if self.path_setting and workdir is not None:  # verl logs from its TaskRunner actor, in a Ray worker
            extra.append(hydra_word(self.path_setting, str(workdir / self.metrics_file)))
        return [*argv, *words, *extra], args, lost

    def environ(self, workdir: Path, ray: str, gcs: str = "") -> dict[str, str]:
        """Variables set for the trainer: its metrics file; for an engine that runs its own Ray, which Ray:
        `private` (a local sweep: a Ray of its own, in a temp folder of its own, on free ports) or `cluster`
        (the sweep's cluster, which it joins as a driver of its own at `gcs`)."""
        env: dict[str, str] = {}
        if self.metrics_env:
            env[self.metrics_env] = str(workdir / self.metrics_file)
        if self.launcher:  # our launcher imports the engine package `trials` from where it is here
            import trials

            root = str(Path(trials.__file__).resolve().parent.parent)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        if self.ray:
            if ray == "cluster" and gcs:
                env["RAY_ADDRESS"] = gcs
            else:  # short: Ray's socket paths must stay under 108 bytes, which a trial's folder may not
                env["RAY_ADDRESS"] = "local"
                env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix=_RAY_TMP)
        return env

    def cleanup(self, env: dict[str, str]) -> None:
        """After the trainer is gone: the private Ray's temp folder this engine made (see environ)."""
        folder = env.get("RAY_TMPDIR", "")
        if self.ray and Path(folder).name.startswith(_RAY_TMP):
            shutil.rmtree(folder, ignore_errors=True)


ENGINES: dict[str, Engine] = {
    "command": Engine("command", PROTOCOL, PREFIX, _protocol_line),
    "verl": Engine(
        "verl", Units(kl_per_token=("actor/reward_kl_penalty", "actor/kl_loss"), length=("response_length/mean",),
                      names={"critic/score/mean": K.SCORES, "response_length/mean": K.RESPONSE_LENGTH,
                             "actor/reward_kl_penalty_coeff": K.KL_COEF, "actor/entropy": K.ENTROPY,
                             "actor/pg_loss": K.POLICY_LOSS, "actor/pg_clipfrac": K.CLIPFRAC,
                             "critic/vf_loss": K.VALUE_LOSS, "critic/vf_clipfrac": K.VALUE_CLIPFRAC,
                             "critic/vf_explained_var": K.EXPLAINED_VARIANCE, "actor/lr": K.LR_POLICY,
                             "critic/lr": K.LR_VALUE},
                      needs_kl=False),  # validation before training is logged alone, without KL
        None, _verl_line, export="verl", metrics_file="verl_metrics.jsonl", metrics_env="VERL_FILE_LOGGER_PATH",
        extra=("trainer.logger=[console,file]",), ray=True,
        gpu_args=("trainer.n_gpus_per_node", "trainer.nnodes"), user_choice=("actor_rollout_ref.rollout.name",),
        path_setting="+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH"),
    "openrlhf": Engine(
        "openrlhf", Units(kl_per_token=("kl",), length=("rollout/response_length_mean", "response_length"),
                          names={"rollout/reward_mean": K.SCORES, "reward": K.SCORES,
                                 "rollout/reward_std": K.SCORES_STD,
                                 "rollout/response_length_mean": K.RESPONSE_LENGTH, "policy_loss": K.POLICY_LOSS,
                                 "critic_loss": K.VALUE_LOSS, "actor_lr": K.LR_POLICY, "critic_lr": K.LR_VALUE}),
        "Global step ", _openrlhf_line, export="openrlhf", ray=True,
        gpu_args=("--actor.num_gpus_per_node", "--actor.num_nodes")),
    # TRL's objective/entropy is summed over the response (ours: the per-token mean): kept as trainer/objective/entropy
    "trl": Engine("trl", Units(kl=("objective/kl",), foreign=("objective/entropy",)), PREFIX, _protocol_line,
                  export="trl", launcher="trl_ppo.py", imports=("trl", "torch", "transformers"),
                  setup="bash bench/setup_trl.sh makes bench/.venv-trl with trl 1.12"),
}
_CHECK_SECONDS = 120.0  # the import check's limit (importing torch and trl takes seconds)
_WHERE = "a path relative to the spec's folder, an absolute path, or a name on PATH"


def check_trainer(kind: str, command: list[str], env: dict[str, str]) -> None:
    """Before any trial: trial.command's program exists and is executable, and, for an engine whose
    launcher runs in the user's interpreter (trl), that interpreter imports what it needs (one
    subprocess). A ConfigError naming trial.command[0] otherwise: every trial would fail alike."""
    engine, program = ENGINES[kind], command[0]
    found = shutil.which(program)
    if found is None:
        where = "not found on PATH" if os.sep not in program else (
            "not an executable file" if os.path.exists(program) else "no such file")
        raise ConfigError([Problem("trial.command[0]", program, f"cannot be started: {where}",
                                   f"give the trainer's program or interpreter: {_WHERE} "
                                   "(and chmod +x a script)")])
    if not engine.imports:
        return
    names = ", ".join(engine.imports)
    try:
        proc = subprocess.run([found, "-c", "; ".join(f"import {m}" for m in engine.imports)],
                              env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, errors="replace",
                              timeout=_CHECK_SECONDS)
    except subprocess.TimeoutExpired:
        raise ConfigError([Problem("trial.command[0]", program,
                                   f"did not import {names} within {_CHECK_SECONDS:g} s",
                                   "check that interpreter by hand")]) from None
    except OSError as exc:
        raise ConfigError([Problem("trial.command[0]", program,
                                   f"cannot be started: {exc.strerror}",
                                   f"name a Python interpreter with {names}")]) from None
    if proc.returncode != 0:
        error = last_line(proc.stderr) or f"exit code {proc.returncode}"
        raise ConfigError([Problem("trial.command[0]", program,
                                   f"must import {names} for engine: {kind}, and it failed "
                                   f"with {error}",
                                   f"name an interpreter that has them ({engine.setup})")])


def launch_argv(engine_kind: str, command: list[str], engine: dict[str, Any],
                folder: Path | None = None) -> list[str]:
    """The argv a trial of `engine_kind` with engine config `engine` launches (`tuner export`)."""
    return ENGINES[engine_kind].launch(command, engine, folder)[0]
