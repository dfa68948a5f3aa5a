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
from importlib import metadata
from pathlib import Path
from typing import Any

from trials import Problem
from trials import metrics as K
from tuner.engines._placement import STRICT_PACK, Layout, Placement
from tuner.engines._words import flag_words, hydra_word, merge_list

__all__ = ["CHECKPOINTS", "CONFIG_ENV", "LAUNCHERS", "PLACEHOLDER", "SOURCE_FIELDS", "TRIAL_PLACEHOLDERS",
           "Engine", "TrainerError", "Units", "command_argv", "numbers", "trial_values"]

CONFIG_ENV = "PPO_TUNER_TRIAL_CONFIG"  # names the trial's config file (JSON)
# '{policy_lr}' in trial.command: that engine field's value; '{trial_dir}', '{trial_number}': the trial's
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# the placeholders that name the trial, not a hyperparameter: its own folder (absolute; a retry of the
# trial runs in the same one) and its number in the study
TRIAL_PLACEHOLDERS = ("trial_dir", "trial_number")
CHECKPOINTS = "checkpoints"  # the trainer's checkpoints, by default: this folder in the trial's folder
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


def trial_values(folder: Path | None, number: int | None) -> dict[str, str]:
    """The values of TRIAL_PLACEHOLDERS for the trial with this folder and number (those known)."""
    values = {"trial_dir": str(folder) if folder is not None else None,
              "trial_number": str(number) if number is not None else None}
    return {k: v for k, v in values.items() if v is not None}


def command_argv(command: list[str], engine: dict[str, Any], trial: Mapping[str, str] | None = None
                 ) -> list[str]:
    """trial.command with each '{field}' replaced by the trial's value of that engine field, and
    '{trial_dir}', '{trial_number}' by `trial`'s (`trial_values`)."""
    values = {**engine, **(trial or {})}
    return [PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), arg) for arg in command]


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
    gpu_args: tuple[str, ...] = ()  # its arguments that count the actor's GPUs (per node, nodes)
    # (trial.command's setting of a name: its value, "" for a bare flag, None) -> the GPUs its roles
    # reserve in its own Ray
    layout: Callable[[Callable[[str], str | None]], Layout | None] | None = None
    # how its Ray places those GPUs: STRICT_PACK, one group per node (verl); PACK, groups on as few
    # nodes as Ray can (OpenRLHF)
    gpu_strategy: str = STRICT_PACK
    ray_pin: str = ""  # the Ray version its release pins: on a cluster, that must be the cluster's
    # (trial.command's setting of a name, rollout_batch_size, mini_batch_size, micro_batch_size per GPU;
    # None: the trial does not pass it) -> (why its trainer refuses these batch sizes at start-up, the
    # fix); ("", "") where it takes them
    batches: Callable[[Callable[[str], str | None], int | None, int | None, int | None], tuple[str, str]] | None = None
    # settings of the `fixed` table that trial.command may set instead (the launch then leaves them out)
    user_choice: tuple[str, ...] = ()
    # settings that only the export writes (of the `fixed` table, or a section's, as OpenRLHF's vLLM
    # engines): a launch leaves them to the engine's default or trial.command
    export_only: tuple[str, ...] = ()
    # our field -> the fields its launch value is computed from, which the spec must then set too
    needs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # (trial.command's setting of a name) -> our fields a trial must pass, as what its trainer refuses
    # without them (its defaults), and the fix: verl's null micro-batch sizes
    required: Callable[[Callable[[str], str | None]], Mapping[str, tuple[str, str]]] | None = None
    # a Hydra override that also gives metrics_file's path to the trainer's Ray actors
    path_setting: str = ""
    # its setting that names where it saves checkpoints and resumes from: unless trial.command sets it,
    # each trial's own CHECKPOINTS folder, so that a retried trial resumes its own and no other's
    checkpoint: str = ""
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
             workdir: Path | None = None, number: int | None = None) -> list[str]:
        """The trial's argv: trial.command with its placeholders filled in, then `args` (the
        hyperparameters as the engine's launch arguments, from its name table), or our launcher.
        `workdir`: the trial's folder, where the trainer writes metrics_file and, unless
        trial.command names another, its checkpoints; `number`: the trial's. A list setting of
        `extra` that trial.command also sets (verl's trainer.logger) is merged into the user's."""
        argv = command_argv(command, engine, trial_values(workdir, number))
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
        if self.checkpoint and workdir is not None and self._setting(argv, self.checkpoint) is None:
            extra += self._words(self.checkpoint, str(workdir / CHECKPOINTS))
        return [*argv, *args, *extra]

    def _merge_at(self, argv: list[str], word: str) -> int | None:
        """Where the user's argv sets the list setting `word` sets, if it does."""
        name, _, value = word.partition("=")
        if self.style != "hydra" or not value.startswith("["):
            return None
        return next((i for i, a in enumerate(argv) if "=" in a and self._arg_name(a) == name), None)

    def _words(self, name: str, value: Any) -> list[str]:
        """One setting as this engine's launch words."""
        return [hydra_word(name, value)] if self.style == "hydra" else flag_words(name, value)

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
        if fields is not None and self.required is not None:
            required = self.required(lambda name: self._setting(list(command), name))
            problems += [Problem(f"base.{name}", None, why, fix) for name, (why, fix) in required.items()
                         if name not in fields]
        if self.ray:
            problems += self._check_ray_resources(list(command), gpus, cluster)
        return problems

    def check_batches(self, command: Sequence[str], rollout: int | None, mini: int | None, micro: int | None
                      ) -> tuple[str, str]:
        """(why, fix) where this engine's trainer, launched with trial.command, refuses a trial with these
        batch sizes (our fields: rollout_batch_size, mini_batch_size, micro_batch_size per GPU; None for one
        the trial does not pass, which is trial.command's or the engine's default) before it trains;
        ("", "") where it takes them, or where the engine checks none."""
        if self.batches is None:
            return "", ""
        return self.batches(lambda name: self._setting(list(command), name), rollout, mini, micro)

    def placement(self, command: Sequence[str]) -> Placement | None:
        """The placement groups its trainer asks for on a cluster, from its GPU layout (`layout`, every role
        that does not share another's GPUs) as trial.command sets it up. None for an engine without a Ray
        of its own, or a count that is not a number (a '{field}' placeholder)."""
        layout = self.layout(lambda name: self._setting(list(command), name)) if self.ray and self.layout else None
        return Placement.of(layout, self.gpu_strategy) if layout is not None else None

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

    def _setting(self, command: list[str], name: str) -> str | None:
        """The value trial.command gives setting `name`: a Hydra override's, a flag's next word, ""
        for a flag given bare (argparse store_true); None where it is not given."""
        for i, arg in enumerate(command):
            if self.style == "hydra" and self._arg_name(arg) == name and "=" in arg:
                return arg.split("=", 1)[1]
            if self.style == "flag" and arg.split("=", 1)[0] == name:
                if "=" in arg:
                    return arg.split("=", 1)[1]
                following = command[i + 1] if i + 1 < len(command) else "--"
                return "" if following.startswith("--") else following
        return None

    def _check_ray_resources(self, command: list[str], gpus: float, cluster: bool) -> list[Problem]:
        """verl and OpenRLHF run a Ray of their own. Locally: a private one per trial, which sees
        the GPUs Ray Tune reserved for the trial, so the GPUs its roles reserve must be that
        reservation. On a cluster: the trainer joins the sweep's cluster and reserves its own GPUs
        there, so the Tune trial must hold none, and its Ray must be the cluster's version."""
        if cluster:
            return self._check_cluster(gpus)
        if not gpus or gpus != int(gpus):
            return [Problem("resources.gpus_per_trial", gpus,
                            f"must be a whole number of GPUs for {self.name}: its private Ray sees "
                            "only the GPUs reserved for the trial (CUDA_VISIBLE_DEVICES)",
                            "set gpus_per_trial: 1 or more (or join a cluster with ray.address)")]
        assert self.layout is not None, f"{self.name} runs a Ray of its own but has no GPU layout"
        layout = self.layout(lambda name: self._setting(command, name))
        problems: list[Problem] = []
        if layout is None:  # a count that is no whole number (an interpolation): the trainer judges it
            return problems
        if layout.error:
            return [Problem("trial.command", layout.roles, layout.error, layout.error_fix)]
        if layout.nodes > 1:
            return [Problem("trial.command", layout.roles,
                            f"needs more than one node ({layout.nodes}), and a local sweep gives each "
                            f"{self.name} trial a private one-node Ray", "set ray.address to your cluster")]
        if layout.gpus != int(gpus):
            problems.append(Problem("trial.command", layout.roles,
                                    f"reserves {layout.gpus} GPUs, which must equal resources.gpus_per_trial "
                                    f"({int(gpus)}): the trial's private Ray has that many GPUs, and {self.name} "
                                    "waits for the rest forever",
                                    layout.fix.format(gpus=int(gpus))))
        return problems

    def _check_cluster(self, gpus: float) -> list[Problem]:
        problems = []
        here = _installed("ray")
        if self.ray_pin and here and here != self.ray_pin:
            problems.append(Problem("ray.address", "(a cluster)",
                                    f"cannot work for {self.name}: its release pins ray=={self.ray_pin}, and a "
                                    f"driver of that Ray cannot join this cluster's Ray {here}",
                                    "run the sweep locally (no ray.address): each trial's trainer starts a "
                                    f"private Ray {self.ray_pin} of its own environment on the trial's GPUs"))
        if gpus:
            problems.append(Problem("resources.gpus_per_trial", gpus,
                                    f"would hold GPUs that {self.name}'s own workers then cannot get: on a "
                                    "cluster its trainer joins the cluster and reserves its GPUs itself",
                                    f"set gpus_per_trial: 0 (the trial holds a CPU; {self.name} takes "
                                    f"{self.gpu_args[0]} x {self.gpu_args[1]} GPUs from the cluster)"))
        return problems


def _installed(package: str) -> str:
    """The installed version of `package` ("" where it is not installed), without importing it."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""
