"""Checks of the trial's engine: which trainer runs a trial, how an external one is started, and whether
the resources can work for it (before anything is launched)."""

from __future__ import annotations

from trials import did_you_mean, field_specs
from tuner.spec._check_space import Found
from tuner.spec._models import TRIAL_FIELDS, SweepSpec
from tuner.trial._engines import ENGINES
from tuner.trial._protocol import PLACEHOLDER

__all__ = ["check_engine"]

_EXAMPLES = {
    "command": "command: [python, train.py, --lr, '{policy_lr}']",
    "verl": "command: [/opt/verl/bin/python, -m, verl.trainer.main_ppo, data.train_files=..., trainer.n_gpus_per_node=1]",
    "openrlhf": "command: [/opt/openrlhf/bin/python, -m, openrlhf.cli.train_ppo_ray, --actor.model_name_or_path, ...]",
    "trl": "command: [bench/.venv-trl/bin/python] (an environment with trl 1.12)",
}


def check_engine(spec: SweepSpec, found: Found) -> None:
    """The trial section's engine keys: an external engine needs its command, ours takes none."""
    trial = spec.trial
    if trial.engine == "ppo-tuner":
        for key in ("command", "env"):
            if getattr(trial, key):
                found.error(f"trial.{key}", getattr(trial, key), "applies only to an external engine",
                            f"set trial.engine (command, verl, openrlhf, trl), or remove trial.{key}")
        return
    if not trial.command:
        found.error("trial.command", trial.command, f"is needed with engine: {trial.engine}",
                    f"give the trainer's argv, e.g. {_EXAMPLES[trial.engine]}")
        return
    specs = field_specs()
    for i, arg in enumerate(trial.command):
        for name in PLACEHOLDER.findall(arg):
            if name not in specs or name in TRIAL_FIELDS:
                found.error(f"trial.command[{i}]", arg, f"'{{{name}}}' is not an engine field",
                            did_you_mean(name, [n for n in specs if n not in TRIAL_FIELDS]))
    if spec.resources.trial_memory_gb is not None:
        found.error("resources.trial_memory_gb", spec.resources.trial_memory_gb,
                    "predicts our engine's memory only", f"remove it for engine: {trial.engine}")
    _check_launch_names(spec, found)
    if ENGINES[trial.engine].ray:
        _check_ray_resources(spec, found)


def _arg_name(arg: str, style: str) -> str:
    """The setting a fixed argument names: 'key' of a Hydra override '[+]key=value', or the '--flag'."""
    return arg.split("=", 1)[0].lstrip("+~") if style == "hydra" else arg.split("=", 1)[0]


def _check_launch_names(spec: SweepSpec, found: Found) -> None:
    """A fixed argument that sets what the sweep sets from the trial's config would fight it."""
    engine = ENGINES[spec.trial.engine]
    if not engine.export or engine.launcher:
        return
    from tuner.export import LAUNCH_TARGETS

    style = "hydra" if engine.export == "verl" else "flag"
    ours = LAUNCH_TARGETS[engine.export].launch_names() | {_arg_name(a, style) for a in (*engine.extra, engine.path_setting)}
    ours -= {*engine.user_choice, ""}
    for i, arg in enumerate(spec.trial.command or ()):
        if (style == "hydra" or arg.startswith("--")) and _arg_name(arg, style) in ours:
            found.error(f"trial.command[{i}]", arg, "sets what the sweep sets from each trial's config",
                        "remove it; give its value in base: (engine field names) or search it in search_space")


def _fixed(command: list[str], name: str, style: str) -> str | None:
    for i, arg in enumerate(command):
        if style == "hydra" and _arg_name(arg, style) == name and "=" in arg:
            return arg.split("=", 1)[1]
        if style == "flag" and arg == name and i + 1 < len(command):
            return command[i + 1]
    return None


def _check_ray_resources(spec: SweepSpec, found: Found) -> None:
    """verl and OpenRLHF run a Ray of their own. Locally: a private one per trial, which sees the GPUs Ray
    Tune reserved for the trial, so their GPU count must be that reservation. On a cluster: the trainer
    joins the sweep's cluster and reserves its own GPUs there, so the Tune trial must hold none."""
    engine, gpus = ENGINES[spec.trial.engine], spec.resources.gpus_per_trial
    command = list(spec.trial.command or ())
    style = "hydra" if engine.export == "verl" else "flag"
    per_node, nodes = (_fixed(command, name, style) for name in engine.gpu_args)
    if spec.ray.address is not None:
        if gpus:
            found.error("resources.gpus_per_trial", gpus, f"would hold GPUs that {engine.name}'s own workers then "
                        "cannot get: on a cluster its trainer joins the cluster and reserves its GPUs itself",
                        f"set gpus_per_trial: 0 (the trial holds a CPU; {engine.name} takes {engine.gpu_args[0]} "
                        f"x {engine.gpu_args[1]} GPUs from the cluster)")
        return
    if not gpus or gpus != int(gpus):
        found.error("resources.gpus_per_trial", gpus, f"must be a whole number of GPUs for {engine.name}: its "
                    "private Ray sees only the GPUs reserved for the trial (CUDA_VISIBLE_DEVICES)",
                    "set gpus_per_trial: 1 or more (or join a cluster with ray.address)")
        return
    if nodes not in (None, "1"):
        found.error("trial.command", f"{engine.gpu_args[1]} {nodes}", "needs more than one node, and a local sweep "
                    f"gives each {engine.name} trial a private one-node Ray", "set ray.address to your cluster")
    if per_node is None or per_node != str(int(gpus)):
        found.error("trial.command", f"{engine.gpu_args[0]} {per_node or '(its default, 8)'}",
                    f"must equal resources.gpus_per_trial ({int(gpus)}): the trial's private Ray has that many GPUs",
                    f"add {engine.gpu_args[0]}{'=' if style == 'hydra' else ' '}{int(gpus)} to trial.command")
