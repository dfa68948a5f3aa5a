"""The sweep spec as pydantic models: the shape of the YAML, its defaults, and what each key means.

These models check structure (types, unknown keys, simple bounds). What needs the engine's field
specs (search-space bounds, base values, batch divisibility, KL conditions) is checked in `_check`,
and `_compile` resolves the result into the `CompiledSpec` the controller takes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    WithJsonSchema,
    model_validator,
)

from trials import did_you_mean, field_specs, metrics
from tuner.engines import ENGINES
from tuner.spec import _values
from tuner.spec._errors import spec_error

__all__ = ["TRIAL_FIELDS", "spec_key", "Budget", "Choices", "KLLimitSection", "Mlflow", "Objective",
           "Promote", "Range", "Ray", "Resources", "SamplerSection", "Scheduler", "SweepSpec",
           "TrialSection"]

NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
# what trains a trial (trial.engine): our engine, or one of the external engines
ENGINE_NAMES = ("ppo-tuner", *ENGINES)
# engine field -> key under the spec's `trial:` section
TRIAL_FIELDS = {"model_path": "model", "reward": "reward", "eval_reward": "eval_reward", "prompts": "prompts",
                "eval_prompts": "eval_prompts", "value_model_path": "value_model"}


def spec_key(field: str) -> str:
    """The spec key a user writes for an engine field: `trial.model` for model_path; the other fields
    (under `base:` or `search_space:`) keep their engine name."""
    return f"trial.{TRIAL_FIELDS[field]}" if field in TRIAL_FIELDS else field
_SCALAR_SCHEMA = {"type": ["number", "integer", "string", "boolean", "null"]}


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise spec_error("must be a single value, a range {low, high} or {choices: [...]}",
                     "write e.g. 'policy_lr: {low: 1.0e-6, high: 5.0e-5, log: true}'"
                     " or 'ppo_epochs: {choices: [2, 4]}'")


def _number(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    raise spec_error("must be a number", "write a number such as 0.5 or 1.0e-5")


Scalar = Annotated[Any, BeforeValidator(_scalar), WithJsonSchema(_SCALAR_SCHEMA)]
Number = Annotated[Any, BeforeValidator(_number), WithJsonSchema({"type": "number"})]


def _known_metric(value: str) -> str:
    if value not in metrics.ALL:
        raise spec_error("is not a metric the engine reports", did_you_mean(value, metrics.ALL))
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Section):
    """A numeric range; integer or float follows the engine field's type."""

    low: Number = Field(description="smallest value (inclusive)")
    high: Number = Field(description="largest value (inclusive)")
    log: bool = Field(False, description="sample on a log scale (needs low > 0)")
    step: Number | None = Field(None, description="sample only low, low+step, ...; integer ranges default to 1")
    grid_points: int | None = Field(
        None, ge=2, description="grid sampler only: points to take in a float range (log-spaced "
                                "when log is true)")


class Choices(_Section):
    """A categorical choice among listed values."""

    choices: list[Scalar] = Field(description="the values to choose among (at least one)")


def _entry_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "choices" if "choices" in value else "range"
    if isinstance(value, Choices):
        return "choices"
    return "range" if isinstance(value, Range) else "fixed"


SpaceEntry = Annotated[
    Annotated[Range, Tag("range")] | Annotated[Choices, Tag("choices")] | Annotated[Scalar, Tag("fixed")],
    Discriminator(_entry_kind),
]


class TrialSection(_Section):
    (
        "What every trial trains: these map onto the engine's model_path, reward, eval_reward,"
        " prompts, eval_prompts, value_model_path."
    )

    model: NonEmpty = Field(
        "demo", description="Hugging Face causal LM to fine-tune: a local directory, a hub name, "
                            "or a built-in name: 'demo' (the tiny demo model) or "
                            "'smollm2-135m-instruct' (needs the examples extra)")
    reward: Annotated[NonEmpty, AfterValidator(_values.check_reward)] = Field(
        "trials.demo:reward",
        description="'module:function', 'file.py:function' (relative to the spec file), or a "
                    "sequence-classification reward-model directory")
    eval_reward: Annotated[NonEmpty, AfterValidator(_values.check_reward)] | None = Field(
        None, description="a held-out ('gold') reward the policy never trains on, same forms as reward: the evaluation "
                          "scores the held-out prompts' responses with it too (eval/gold_scores, then the default "
                          "objective), and the sweep flags trials whose training reward rose while it fell")
    prompts: NonEmpty = Field(
        "demo", description="training prompts: a .jsonl file (one {\"prompt\": ...} per line), a "
                            ".txt file (one per line), or 'demo'")
    eval_prompts: NonEmpty | None = Field(
        None, description="held-out evaluation prompts, same formats; empty holds out some "
                          "training prompts")
    value_model: NonEmpty | None = Field(
        None, description="model whose backbone initialises the value model; empty means the "
                          "policy model")
    engine: Literal[ENGINE_NAMES] = Field(
        "ppo-tuner", description="what trains a trial: ppo-tuner (our engine); command (your own trainer, started with "
                                 "trial.command, reporting JSON lines); verl, openrlhf (trial.command starts their PPO "
                                 "with your fixed arguments, the trial's hyperparameters are added in their names, "
                                 "their logs are read) or trl (trial.command is the python of an environment with trl "
                                 "1.12); see docs/own-trainer.md")
    command: list[NonEmpty] | None = Field(
        None, description="engine command: the trainer's argv, e.g. [python, train.py, --lr, '{policy_lr}']; '{field}' "
                          "is replaced by the trial's value of that engine field; the trial's whole config is also in "
                          "the JSON file that $PPO_TUNER_TRIAL_CONFIG names")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="engine command: environment variables set for the trainer")
    report_timeout: Annotated[float, BeforeValidator(_values.parse_duration),
                              WithJsonSchema({"type": ["number", "string"]})] = Field(
        600.0, description="engine command: a trainer that reports nothing for this long (seconds, or '90s', '10m') is "
                           "stopped and its trial recorded FAIL")
    stop_grace: Annotated[float, BeforeValidator(_values.parse_duration),
                          WithJsonSchema({"type": ["number", "string"]})] = Field(
        10.0, description="engine command: seconds between SIGTERM and SIGKILL when a trial's trainer is stopped")

    def launch(self, cluster: bool = False) -> dict[str, Any]:
        """How an external trial's trainer is started (TrialTask.external); empty for our engine. `cluster`:
        the sweep runs on a Ray cluster, which a trainer with a Ray of its own joins (else it starts its own)."""
        if self.engine == "ppo-tuner":
            return {}
        return {"command": list(self.command or ()), "env": dict(self.env), "report_timeout": self.report_timeout,
                "stop_grace": self.stop_grace, "ray": "cluster" if cluster else "private"}


class Objective(_Section):
    """What a trial is scored by."""

    metric: Annotated[str, AfterValidator(_known_metric)] = Field(
        metrics.EVAL_SCORES, description="metric name from the engine's vocabulary, e.g. "
                                         "eval/scores or objective/scores; empty: eval/gold_scores "
                                         "where trial.eval_reward is set, else eval/scores")
    direction: Literal["maximize", "minimize"] = Field("maximize", description="whether a larger metric is better")
    score: Literal["final", "best", "mean_last"] = Field(
        "final", description="the trial's value: the last report, the best report, or the mean of "
                             "the last last_k reports")
    last_k: int = Field(3, ge=1, description="reports averaged when score is mean_last")


def _kl_limit(value: Any) -> Any:
    """`kl_limit: 15` is `kl_limit: {nats: 15}`."""
    if isinstance(value, (dict, KLLimitSection)):
        return value
    number = _number(value)
    if not number > 0:
        raise spec_error("must be > 0", "use a value > 0 (the guidance keeps KL below 15-20 nats)")
    return {"nats": number}


class KLLimitSection(_Section):
    """The KL limit: a number (nats), or a mapping with the forecast and the grace iterations."""

    nats: float = Field(
        15.0, gt=0, description="a trial whose KL to the reference passes this is stopped and "
                                "marked infeasible [nats, summed over the response]")
    forecast: bool = Field(
        False, description="also stop (infeasible, stop reason kl_forecast) a trial whose KL, at "
                           "least half the limit, is on course to pass it before its last "
                           "iteration: the line through its last 3 values, extended to the last "
                           "iteration, passes the limit (bench/README.md: the measured trade-off)")
    grace_iterations: int = Field(
        0, ge=0, description="the first N iterations are not judged: a KL that spikes early and "
                             "falls back below the limit by iteration N+1 neither stops the trial "
                             "nor makes it infeasible")


class Promote(_Section):
    """After the search: its best feasible configs run again at full length with seeds the search never used."""

    top_k: int | None = Field(
        None, ge=0, description="configs to promote: the best feasible trials of the search (0: no promotion); empty: "
                                "3 where the budget allows, budget.trials // 3 below 9 trials (none below 3)")
    iterations: int | None = Field(
        None, ge=1, description="PPO iterations of a promoted run; empty: budget.iterations (the "
                                "full trial length)")
    seeds: int = Field(
        2, ge=1, le=20, description="runs per promoted config, each with a seed no search trial "
                                    "used; the best config is the best mean over them among those "
                                    "feasible in every seed")


class Budget(_Section):
    """How much the sweep may spend."""

    trials: int = Field(8, ge=1, description="trials to run in all")
    iterations: int | None = Field(
        None, ge=1, description="PPO iterations per trial (sets the engine's num_iterations); "
                                "empty: base.num_iterations or the engine default")
    wall_clock: Annotated[float | None, BeforeValidator(_values.parse_duration),
                          WithJsonSchema({"type": ["number", "string", "null"]})] = Field(
        None, description="time limit of the whole sweep: seconds, or a string such as '90s', '30m', '2h'; empty: none")
    max_failures: int = Field(
        1, ge=0, description="retries of a trial that failed (crashed), not of one that was pruned")
    promote: Promote = Field(default_factory=Promote, description=Promote.__doc__)

    @model_validator(mode="before")
    @classmethod
    def _empty_promote(cls, data: Any) -> Any:
        if isinstance(data, dict) and "promote" in data and data["promote"] is None:  # 'promote:' alone: defaults
            return {k: v for k, v in data.items() if k != "promote"}
        return data


class Scheduler(_Section):
    """Early stopping of unpromising trials."""

    type: Literal["asha", "median", "none"] = Field(
        "asha", description="asha: successive halving; median: stop below the median of earlier "
                            "trials; none: run every trial to the end")
    grace_period: int = Field(2, ge=1, description="iterations every trial runs before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="asha: keep 1/reduction_factor of the trials at each rung")


class SamplerSection(_Section):
    """How the next trial's hyperparameters are chosen (Optuna)."""

    type: Literal["tpe", "random", "grid", "cmaes", "gp", "nsga2"] = Field(
        "tpe", description="tpe, random, grid, cmaes, gp, or nsga2 (multi-objective: the metric and objective/kl)")
    seed: int | None = Field(None, ge=0, description="seed of the sampler; empty means the spec's seed")
    n_startup_trials: int | None = Field(
        None, ge=0, description="random trials before the model-based samplers start (nsga2: the "
                                "population size)")
    skip_duplicates: bool = Field(
        True, description="a sampled config that a finished trial already ran (same engine config, "
                          "seed included) is not run again: the study is told that trial's outcome "
                          "and the sampler asked again")


class Resources(_Section):
    """What each trial gets from Ray."""

    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs reserved per trial")
    gpus_per_trial: float = Field(0.0, ge=0, description="GPUs reserved per trial (fractions share a GPU)")
    max_concurrent: int = Field(2, ge=1, description="trials running at once")
    trial_memory_gb: float | None = Field(
        None, gt=0, description="memory one trial may use, in GiB: on GPU trials its GPU's (the "
                                "card's size times gpus_per_trial where trials share a card), else "
                                "the process's RAM. A sampled config whose predicted peak exceeds "
                                "it is recorded infeasible (constraint 'memory') without being "
                                "launched, and so is one that runs out of memory after its "
                                "retries. Empty: no check")


class Ray(_Section):
    """Where the trials run."""

    address: Annotated[str | None, AfterValidator(_values.check_ray_address)] = Field(
        None, description="an existing cluster: 'auto', 'host:6379', 'ray://host:10001' or "
                          "'http://host:8265'; empty starts a local Ray")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray (only without address)")

    @model_validator(mode="after")
    def _local_only(self) -> Ray:
        if self.address is not None and self.num_cpus is not None:
            raise spec_error("applies only to a local Ray, but address is set",
                             "remove num_cpus (the cluster decides) or remove address", subpath="num_cpus",
                             value=self.num_cpus)
        return self


class Mlflow(_Section):
    """Where trials are tracked."""

    tracking_uri: Annotated[str | None, AfterValidator(_values.check_tracking_uri)] = Field(
        None, description="sqlite:///..., postgresql://... or http(s)://host:port; empty means "
                          "sqlite:///<sweep dir>/mlflow.db; ${NAME} is replaced by that "
                          "environment variable where the URI is used")
    experiment: NonEmpty | None = Field(None, description="MLflow experiment name; empty means the spec's name")


def _engine_schema(schema: dict[str, Any], skip: tuple[str, ...] = ()) -> None:
    """Name every engine field in the JSON Schema of base/search_space, so editors can complete them."""
    value = schema.get("additionalProperties")
    value = value if isinstance(value, dict) else {}
    props = {}
    for name, spec in field_specs().items():
        if name in TRIAL_FIELDS or name in skip:
            continue
        doc = f" (documented range {spec.documented[0]:g}..{spec.documented[1]:g})" if spec.documented else ""
        unit = f" [{spec.unit}]" if spec.unit else ""
        props[name] = {**value, "description": f"{spec.help}{unit}{doc}"}
    schema["properties"] = props
    schema["additionalProperties"] = False


def _search_space_schema(schema: dict[str, Any]) -> None:
    value = schema.get("additionalProperties")
    _engine_schema(schema, skip=("num_iterations",))
    schema["properties"]["num_mini_batches"] = {
        **(value if isinstance(value, dict) else {}),
        "description": "sampled instead of mini_batch_size: mini_batch_size = rollout_batch_size // num_mini_batches"}


class SweepSpec(_Section):
    """A hyperparameter sweep: what to train, what to search, how to score, where to run."""

    name: Annotated[str, AfterValidator(_values.check_name)] = Field(
        description="the study's name and the sweep folder's name: letters, digits, '-', '_', '.'")
    trial: TrialSection = Field(default_factory=TrialSection, description=TrialSection.__doc__)
    base: dict[str, Any] = Field(default_factory=dict, json_schema_extra=_engine_schema,
                                 description="engine field -> value fixed for every trial")
    search_space: dict[str, SpaceEntry] = Field(
        default_factory=dict, json_schema_extra=_search_space_schema,
        description="engine field -> {low, high, log?, step?}, {choices: [...]}, or a fixed value")
    objective: Objective = Field(default_factory=Objective, description=Objective.__doc__)
    kl_limit: Annotated[
        KLLimitSection, BeforeValidator(_kl_limit, json_schema_input_type=float | KLLimitSection)
    ] = Field(
        default_factory=KLLimitSection,
        description="a trial whose KL to the reference passes this is stopped and marked "
                    "infeasible [nats, summed over the response]; or {nats, forecast, "
                    "grace_iterations}")
    budget: Budget = Field(default_factory=Budget, description=Budget.__doc__)
    scheduler: Scheduler = Field(default_factory=Scheduler, description=Scheduler.__doc__)
    sampler: SamplerSection = Field(default_factory=SamplerSection, description=SamplerSection.__doc__)
    resources: Resources = Field(default_factory=Resources, description=Resources.__doc__)
    ray: Ray = Field(default_factory=Ray, description=Ray.__doc__)
    storage: Annotated[str | None, AfterValidator(_values.check_storage_url)] = Field(
        None, description="Optuna study database (sqlite:///... or "
                          "postgresql+psycopg://user:${PGPASSWORD}@host:5432/db); empty means "
                          "sqlite:///<sweep dir>/study.db; ${NAME} is replaced by that environment "
                          "variable where the URL is used, so no password need be written in the "
                          "spec")
    storage_outage: Annotated[float, BeforeValidator(_values.parse_duration),
                              WithJsonSchema({"type": ["number", "string"]})] = Field(
        120.0, description="how long the sweep rides through an outage of the study database (a restart, a failover): "
                           "seconds, or a string such as '90s' or '5m'. Meanwhile the trials keep running and their "
                           "results are held and written when it is back; a longer outage stops the sweep as Ctrl-C "
                           "does (resume it with 'tuner resume')")
    mlflow: Mlflow = Field(default_factory=Mlflow, description=Mlflow.__doc__)
    workdir: NonEmpty = Field(
        "sweeps",
        description="the sweep's folder is <workdir>/<name>, relative to the current directory")
    seed: int = Field(0, ge=0, description="seed of the sampler and of every trial (unless base.seed is set)")

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # 'budget:' with nothing under it reads as null in YAML: treat it as all defaults.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (v is None and k in _SECTIONS)}
        return data


_SECTIONS = ("trial", "base", "kl_limit", "search_space", "objective", "budget", "scheduler", "sampler",
             "resources", "ray", "mlflow")
