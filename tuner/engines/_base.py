"""What every external engine is: `Engine` (its name table, launch argv, metric source, KL units,
spec checks, launcher) and what a trainer and the controller agree on: the '{field}' placeholders
of trial.command, the trial's config file, and how a trainer's numbers become our metric names
(`Units`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trials import Problem
from trials import metrics as K
from tuner.engines._placement import PACK, STRICT_PACK, Placement
from tuner.engines._words import hydra_value, hydra_word

__all__ = ["CONFIG_ENV", "LAUNCHERS", "PLACEHOLDER", "SOURCE_FIELDS", "Engine", "TrainerError",
           "Units", "command_argv", "numbers"]

CONFIG_ENV = "PPO_TUNER_TRIAL_CONFIG"  # names the trial's config file (JSON)
# '{policy_lr}' in trial.command: that engine field's value
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
LAUNCHERS = Path(__file__).parent / "launchers"  # scripts of ours that a user's interpreter runs
# Our fields that name the models, data and reward: a launched trial takes them from the user's own
# arguments, so a launch never writes their names.
SOURCE_FIELDS = ("model_path", "value_model_path", "reward", "prompts", "eval_prompts",
                 "max_prompt_length")
_RAY_TMP = "ray-trial-"  # prefix of a private Ray's temp folder


class TrainerError(Exception):
    """The external trainer failed: exited non-zero, went silent, or wrote a report we cannot
    read."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Units:
    """How one engine's logged numbers become ours. The KL is to the reference model: `kl` keys hold
    it in nats summed over the response (our unit); else `kl_per_token` x `length` (mean tokens per
    response). verl and OpenRLHF log no summed KL: their per-token KL (`actor/reward_kl_penalty`,
    `kl`) is each response's mean over its tokens, averaged over the batch, m = mean_i(m_i). The
    product m x L (L = mean_i(L_i)) is then mean_i(m_i x L_i) - cov(m_i, L_i): exact when every
    response has the same length (or m_i and L_i are uncorrelated), an underestimate of the summed
    KL by cov(m_i, L_i) when longer responses drift further per token, an overestimate when shorter
    ones do. verl's `low_var_kl` (k3) also clamps each token's estimate at 10 nats, so a token past
    10 counts as 10."""

    kl: tuple[str, ...] = ()
    kl_per_token: tuple[str, ...] = ()
    length: tuple[str, ...] = ()
    names: dict[str, str] = field(default_factory=dict)  # the engine's key -> our metric name
    # a record without KL is an error; else it is held and merged into the next report
    needs_kl: bool = True
    # our metric names that the engine logs with another meaning: kept as its own
    foreign: tuple[str, ...] = ()

    def kl_of(self, raw: dict[str, float]) -> float | None:
        """nats summed over the response, or None when the record has no KL."""
        for key in self.kl:
            if key in raw:
                return raw[key]
        per_token = next((raw[k] for k in self.kl_per_token if k in raw), None)
        length = next((raw[k] for k in self.length if k in raw), None)
        if per_token is not None and length is not None:
            return per_token * length  # nats/token x tokens
        return None

    def convert(self, raw: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
        """(our metrics, the trainer's other numbers under their own names). Raises TrainerError
        without a KL."""
        ours = {k: v for k, v in raw.items() if k in K.ALL and k not in self.foreign}
        kl = self.kl_of(raw)
        if kl is not None:
            ours[K.KL] = kl
        elif K.KL not in ours:
            lengths = " or ".join(self.length)
            needed = [*self.kl, *(f"{k} with {lengths}" for k in self.kl_per_token)]
            raise TrainerError(f"a report needs {' or '.join(repr(n) for n in needed)}: "
                               f"{json.dumps(raw)[:200]}")
        for theirs, name in self.names.items():
            if theirs in raw:
                ours.setdefault(name, raw[theirs])
        return ours, {k: v for k, v in raw.items() if k not in ours}


def numbers(data: dict[str, Any]) -> dict[str, float]:
    """The numbers of a record (booleans and text left out)."""
    return {str(k): float(v) for k, v in data.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def merge_list(mine: str, ours: str) -> str:
    """The Hydra list override `mine` (key=[a,b] or key=a) with the items of `ours` it lacks."""
    key, _, value = mine.partition("=")
    items = [v.strip().strip("'\"") for v in value.strip().strip("'\"").strip("[]").split(",") if v.strip()]
    items += [v for v in ours.partition("=")[2].strip("[]").split(",") if v not in items]
    return f"{key}={hydra_value(items)}"


def command_argv(command: list[str], engine: dict[str, Any]) -> list[str]:
    """trial.command with each '{field}' replaced by the trial's value of that engine field."""
    return [PLACEHOLDER.sub(lambda m: str(engine[m.group(1)]), arg) for arg in command]


@dataclass(frozen=True)
class Engine:
    """One external engine: its names for our fields (export and launch alike), how its trainer is
    started, how its reports are read, and what a spec must get right for it."""

    name: str
    units: Units
    # a line of the trainer's output holding this is a report; None: its reports go to metrics_file
    marker: str | None
    # (line) -> the report's numbers under the engine's names, None for no report; TrainerError
    # when malformed
    decode: Callable[[str], dict[str, float] | None]
    # our field -> the engine's flags, keys or keywords that carry it; empty: the hyperparameters
    # reach the trainer only as '{field}' placeholders and the trial's config file
    names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # the engine's name -> (value, why): settings that make it run our engine's algorithm
    fixed: Mapping[str, tuple[Any, str]] = field(default_factory=dict)
    style: str = ""  # its launch arguments: "hydra" (key=value), "flag" (--flag value), "" (none)
    example: str = ""  # a trial.command for it, as a spec's fix shows it
    metrics_file: str = ""  # the trainer writes its reports to this file in the trial's folder ...
    metrics_env: str = ""  # ... which this environment variable names to it
    extra: tuple[str, ...] = ()  # arguments after the hyperparameters
    launcher: str = ""  # a script of ours (in LAUNCHERS) the user's interpreter runs
    ray: bool = False  # the trainer starts or joins a Ray of its own
    gpu_args: tuple[str, ...] = ()  # its arguments that count the GPUs it uses (per node, nodes)
    # how its Ray places those GPUs: STRICT_PACK, one group per node (verl); PACK, one group (OpenRLHF)
    gpu_strategy: str = STRICT_PACK
    # settings of the `fixed` table that trial.command may set instead (the launch then leaves them out)
    user_choice: tuple[str, ...] = ()
    # settings of the `fixed` table that only the export writes: a launch leaves them to the engine's
    # default or trial.command
    export_only: tuple[str, ...] = ()
    # our field -> the fields its launch value is computed from, which the spec must then set too
    needs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # a Hydra override that also gives metrics_file's path to the trainer's Ray actors
    path_setting: str = ""
    imports: tuple[str, ...] = ()  # modules trial.command's interpreter must import
    setup: str = ""  # how a user gets an interpreter that imports them

    def launch_names(self, fields: Collection[str] | None = None) -> dict[str, str]:
        """Every name a launch may write -> what writes it: our field (of `fields`, the fields a
        trial passes; None: all), or "" for the `fixed` table's settings it always writes."""
        names = {n: f for f, ns in self.names.items()
                 if f not in SOURCE_FIELDS and (fields is None or f in fields) for n in ns}
        return {**names, **{n: "" for n in self.fixed
                            if n not in self.user_choice and n not in self.export_only}}

    def launch_skips(self, command: Sequence[str]) -> frozenset[str]:
        """The `fixed` table's settings a launch leaves out: the export's alone, and the user's
        choices that trial.command sets."""
        mine = {self._arg_name(a) for a in command if "=" in a or a.startswith("--")}
        return frozenset(self.export_only) | (mine & set(self.user_choice))

    def argv(self, command: list[str], engine: dict[str, Any], args: Sequence[str] = (),
             workdir: Path | None = None) -> list[str]:
        """The trial's argv: trial.command with its placeholders filled in, then `args` (the
        hyperparameters as the engine's launch arguments, from its name table), or our launcher.
        `workdir`: the trial's folder, where the trainer writes metrics_file. A list setting of
        `extra` that trial.command also sets (verl's trainer.logger) is merged into the user's."""
        argv = command_argv(command, engine)
        if not self.names:
            return argv
        if self.launcher:
            return [*argv, str(LAUNCHERS / self.launcher)]
        extra = []
        for word in self.extra:
            i = self._merge_at(argv, word)
            if i is None:
                extra.append(word)
            else:
                argv[i] = merge_list(argv[i], word)
        if self.path_setting and workdir is not None:  # verl logs from its TaskRunner, a Ray worker
            extra.append(hydra_word(self.path_setting, str(workdir / self.metrics_file)))
        return [*argv, *args, *extra]

    def _merge_at(self, argv: list[str], word: str) -> int | None:
        """Where the user's argv sets the list setting `word` sets, if it does."""
        name, _, value = word.partition("=")
        if self.style != "hydra" or not value.startswith("["):
            return None
        return next((i for i, a in enumerate(argv) if "=" in a and self._arg_name(a) == name), None)

    def environ(self, workdir: Path, ray: str, gcs: str = "") -> dict[str, str]:
        """Variables set for the trainer: its metrics file; for an engine that runs its own Ray,
        which Ray: `private` (a local sweep: a Ray of its own, in a temp folder of its own, on free
        ports) or `cluster` (the sweep's cluster, which it joins as a driver of its own at
        `gcs`)."""
        env: dict[str, str] = {}
        if self.metrics_env:
            env[self.metrics_env] = str(workdir / self.metrics_file)
        if self.launcher:  # our launcher imports the engine package `trials` from where it is here
            import trials

            root = str(Path(trials.__file__).resolve().parent.parent)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", ""))
                                                if p)
        if self.ray:
            if ray == "cluster" and gcs:
                env["RAY_ADDRESS"] = gcs
            else:
                # a short folder: Ray's socket paths must stay under 108 bytes, which a trial's
                # folder may not
                env["RAY_ADDRESS"] = "local"
                env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix=_RAY_TMP)
        return env

    def cleanup(self, env: dict[str, str]) -> None:
        """After the trainer is gone: the private Ray's temp folder this engine made (see
        environ)."""
        folder = env.get("RAY_TMPDIR", "")
        if self.ray and Path(folder).name.startswith(_RAY_TMP):
            shutil.rmtree(folder, ignore_errors=True)

    def check(self, command: Sequence[str], gpus: float, cluster: bool,
              fields: Collection[str] | None = None) -> list[Problem]:
        """What trial.command and the trial's GPUs (`gpus`, per trial; `cluster`: the sweep joins
        one) must get right for this engine, before anything is launched. `fields`: the fields a
        trial passes (None: all)."""
        problems = self._check_launch_names(list(command), fields)
        if fields is not None:
            problems += self._check_needs(fields)
        if self.ray:
            problems += self._check_ray_resources(list(command), gpus, cluster)
        return problems

    def placement(self, command: Sequence[str]) -> Placement | None:
        """The GPUs its trainer reserves on a cluster, from trial.command's gpu_args (unset: the
        trainer's default, 8 per node on 1 node); None for an engine without a Ray of its own, or a
        count that is not a number (a '{field}' placeholder)."""
        if not self.ray:
            return None
        given = [self._fixed(list(command), name) for name in self.gpu_args]
        try:
            per_node, nodes = (int(value) if value is not None else default
                               for value, default in zip(given, (8, 1), strict=True))
        except ValueError:
            return None
        sep = "=" if self.style == "hydra" else " "
        source = " x ".join(f"{name}{sep}{value}" for name, value in zip(self.gpu_args, (per_node, nodes),
                                                                         strict=True))
        if self.gpu_strategy == PACK:
            return Placement(1, per_node * nodes, PACK, source)
        return Placement(nodes, per_node, STRICT_PACK, source)

    def _arg_name(self, arg: str) -> str:
        """The setting a fixed argument names: 'key' of a Hydra override '[+]key=value', or the
        '--flag'."""
        name = arg.split("=", 1)[0]
        return name.lstrip("+~") if self.style == "hydra" else name

    def _check_launch_names(self, command: list[str], fields: Collection[str] | None) -> list[Problem]:
        """A fixed argument that sets what the sweep sets from the trial's config would fight it."""
        if not self.names or self.launcher:
            return []
        ours = self.launch_names(fields)
        merged = {w.split("=", 1)[0] for w in self.extra if w.partition("=")[2].startswith("[")}
        ours.update({self._arg_name(a): "" for a in (*self.extra, self.path_setting)
                     if a and self._arg_name(a) not in merged})
        problems = []
        for i, arg in enumerate(command):
            name = self._arg_name(arg)
            if (self.style != "hydra" and not arg.startswith("--")) or name not in ours:
                continue
            of = ours[name]
            if of:
                problems.append(Problem(f"trial.command[{i}]", arg,
                                        f"sets {name}, which each trial sets from {of} (searched, or in base:)",
                                        f"remove it from trial.command, or remove {of} from search_space and "
                                        "base: to keep your value"))
            else:
                problems.append(Problem(f"trial.command[{i}]", arg,
                                        f"sets {name}, which every trial sets to run ppo-tuner's PPO",
                                        "remove it from trial.command"))
        return problems

    def _check_needs(self, fields: Collection[str]) -> list[Problem]:
        """A passed field whose launch value is computed from a field the spec leaves unset: the
        launch would compute it from ppo-tuner's default, not the engine's."""
        return [Problem(f"base.{need}", None,
                        f"is unset, and {name} needs it: {self.name}'s {self.names[name][0]} is computed from it",
                        f"set base.{need} (not in trial.command), or search it")
                for name in sorted(fields) if name in self.needs
                for need in self.needs[name] if need not in fields]

    def _fixed(self, command: list[str], name: str) -> str | None:
        for i, arg in enumerate(command):
            if self.style == "hydra" and self._arg_name(arg) == name and "=" in arg:
                return arg.split("=", 1)[1]
            if self.style == "flag" and arg == name and i + 1 < len(command):
                return command[i + 1]
        return None

    def _check_ray_resources(self, command: list[str], gpus: float, cluster: bool) -> list[Problem]:
        """verl and OpenRLHF run a Ray of their own. Locally: a private one per trial, which sees
        the GPUs Ray Tune reserved for the trial, so their GPU count must be that reservation. On a
        cluster: the trainer joins the sweep's cluster and reserves its own GPUs there, so the
        Tune trial must hold none."""
        per_node, nodes = (self._fixed(command, name) for name in self.gpu_args)
        if cluster:
            if not gpus:
                return []
            return [Problem("resources.gpus_per_trial", gpus,
                            f"would hold GPUs that {self.name}'s own workers then cannot get: on a "
                            "cluster its trainer joins the cluster and reserves its GPUs itself",
                            f"set gpus_per_trial: 0 (the trial holds a CPU; {self.name} takes "
                            f"{self.gpu_args[0]} x {self.gpu_args[1]} GPUs from the cluster)")]
        if not gpus or gpus != int(gpus):
            return [Problem("resources.gpus_per_trial", gpus,
                            f"must be a whole number of GPUs for {self.name}: its private Ray sees "
                            "only the GPUs reserved for the trial (CUDA_VISIBLE_DEVICES)",
                            "set gpus_per_trial: 1 or more (or join a cluster with ray.address)")]
        problems = []
        if nodes not in (None, "1"):
            problems.append(Problem("trial.command", f"{self.gpu_args[1]} {nodes}",
                                    "needs more than one node, and a local sweep gives each "
                                    f"{self.name} trial a private one-node Ray",
                                    "set ray.address to your cluster"))
        if per_node is None or per_node != str(int(gpus)):
            sep = "=" if self.style == "hydra" else " "
            given = f"{self.gpu_args[0]} {per_node or '(its default, 8)'}"
            problems.append(Problem("trial.command", given,
                                    f"must equal resources.gpus_per_trial ({int(gpus)}): the "
                                    "trial's private Ray has that many GPUs",
                                    f"add {self.gpu_args[0]}{sep}{int(gpus)} to trial.command"))
        return problems
