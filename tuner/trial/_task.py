"""What the controller hands one trial: its number, its engine config, its searched values, the KL
limit, the objective, and which trainer runs it (ours, or an external one
and how to start it). It travels as Ray Tune's config dict (`to_config` / `from_config`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from trials import KLLimit

__all__ = ["TrialTask"]


@dataclass(frozen=True)
class TrialTask:
    number: int  # the Optuna trial's number
    engine: dict[str, Any]  # the full engine config (PPOConfig.to_dict())
    params: dict[str, Any]  # the searched values, as sampled
    kl_limit: float  # nats, summed over the response
    objective: dict[str, Any]  # the spec's objective section: metric, direction, score, last_k
    sys_path: list[str] = field(default_factory=list)  # where the driver finds user modules (rewards)
    engine_kind: str = "ppo-tuner"  # the spec's trial.engine: what trains this trial
    external: dict[str, Any] = field(default_factory=dict)  # an external trainer's launch (TrialSection.launch)
    kl_forecast: bool = False  # kl_limit.forecast: also stop where the KL is forecast to pass the limit
    kl_grace_iterations: int = 0  # kl_limit.grace_iterations: iterations the limit does not judge
    source: int | None = None  # a promotion run: the number of the search trial whose config it runs again
    stop_key: str = ""  # the key in Ray's KV store the controller sets once the sweep is stopped
    folder: str = ""  # absolute: the trial's own folder (sweeps/NAME/trials/N), the trainer's cwd
    rerun_of: str = ""  # a re-run of an interrupted trial's config: that trial's folder, whose checkpoint it resumes

    def kl_stopper(self) -> KLLimit:
        """The KL limit as this trial's stopper (trials.KLLimit), with the spec's forecast and grace."""
        return KLLimit(self.kl_limit, forecast=self.kl_forecast, grace_iterations=self.kl_grace_iterations,
                       last_iteration=int(self.engine["num_iterations"]))

    def to_config(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TrialTask:
        return cls(**{k: config[k] for k in cls.__dataclass_fields__ if k in config})
