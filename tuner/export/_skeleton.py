"""The export every target shares: its sections in file order, each target overriding only where it differs.

An `Exporter` walks a PPOConfig section by section into an `Out`: 1. models and data, 2. optimisation,
3. batches, 4. KL, 5. losses, 6. generation, 7. LoRA and memory, 8. the run; then it writes the settings
the target needs to run ppo-tuner's algorithm (its `fixed` table) and renders the file. A step written
here is what every target that does not override it does; a target module keeps its conversions,
the steps where it really differs, and its renderer (its name tables are its engine's, in
`tuner.engines`, which the launch of a trial uses too).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, ClassVar

from trials import PPOConfig, parse_reward
from tuner.export._common import (
    NOT_APPLICABLE,
    Out,
    check_demo,
    comment_lines,
    header,
    lora_alpha_int,
    micro,
    not_applicable,
    per_token_kl_target,
    warmup_iterations,
)

SECTIONS = ("models", "data", "optimisation", "batches", "kl", "losses", "generation", "memory", "run")
LAUNCH_SECTIONS = SECTIONS[2:]  # a launched trial's: its models, data and reward are in the user's own arguments


class Exporter:
    """One export target; calling it with a config (and optional provenance) gives (text, warnings).

    A target supplies the steps every target does its own way, each `(self, out, c)`: `reward(out, c, ref)`,
    `data` (the prompts and their length), `schedule`, `whitening` (of advantages and rewards), `sampling`
    (top_k and top_p), `adapter` (the policy's LoRA settings, when lora_rank > 0), `checkpointing` and
    `run`; and `body(out, c)`, the settings in its syntax below the header comments.
    """

    target: ClassVar[str]  # the target's name as warnings say it
    title: ClassVar[str]  # the header's first line: what the file is and which release's names it uses
    notes: ClassVar[tuple[str, ...]] = ()  # more header lines
    plumbing: ClassVar[tuple[str, ...]] = NOT_APPLICABLE  # our run plumbing the target does not take
    names: ClassVar[Mapping[str, tuple[str, ...]]]  # our field -> the target's names (its documented table)
    fixed: ClassVar[Mapping[str, tuple[Any, str]]]  # target name -> (value, why): settings our algorithm needs
    optimizers: ClassVar[Mapping[str, str]]  # our optimizer -> the target's
    kl_estimators: ClassVar[Mapping[str, str]] = {"k1": "k1", "k3": "k3"}  # ours -> the target's
    critic_default: ClassVar[str] = ""  # said when value_model_path is empty, if the target's default differs
    kl_caveat: ClassVar[str] = ""  # added to the warning about its per-token KL target
    shared_value: ClassVar[str]  # what the target does for value_backbone shared (a value head on the policy's base)
    frozen_dtypes: ClassVar[str]  # how the target chooses the dtype of frozen weights
    frozen_default: ClassVar[str] = "auto"  # a frozen_dtype the target's default already gives

    def __call__(self, config: PPOConfig, source: dict | None = None,
                 mean_length: float | None = None) -> tuple[str, list[str]]:
        out = self.settings(config, SECTIONS, mean_length=mean_length)
        lines = comment_lines(header(self.title, source))
        lines += comment_lines([*self.notes, not_applicable(config, self.plumbing)])
        return "\n".join(lines + self.body(out, config)) + "\n", out.warnings

    def settings(self, config: PPOConfig, sections: tuple[str, ...], fields: Collection[str] | None = None,
                 skip: Collection[str] = (), mean_length: float | None = None) -> Out:
        """The target's settings for `config`, section by section (names from SECTIONS), then its `fixed` table;
        only those of `fields` (None: all), none of the names in `skip`."""
        out = Out(self.target, self.names, only=fields, skip=skip, mean_length=mean_length)
        for section in sections:
            getattr(self, section)(out, config)
        written = {name for name, _, _ in out.items}
        for name, (value, why) in self.fixed.items():
            if name not in written:  # a section may have written it with the config's value (verl's rollout.name)
                out.put((name,), value, why)  # names of no field: always written, unless skipped
        return out

    def launch(self, config: PPOConfig, fields: Collection[str] | None = None,
               skip: Collection[str] = ()) -> tuple[Any, list[str]]:
        """The hyperparameters of `config` as the target's launch arguments (`args`), and the lost values.
        The models, data and reward (section 1) are the user's, in their fixed arguments. `fields`: the fields
        the launch passes (None: all); `skip`: the target's names it leaves out."""
        out = self.settings(config, LAUNCH_SECTIONS, fields, skip)
        return self.args(out), out.warnings

    def args(self, out: Out) -> Any:
        """`out` as what the target's trainer takes at launch: argv words, or keyword arguments."""
        raise NotImplementedError

    # -- 1. models and data ----------------------------------------------------------------------------

    def models(self, out: Out, c: PPOConfig) -> None:
        check_demo(out, "model_path", c.model_path)
        out.set("model_path", c.model_path, "policy and reference")
        check_demo(out, "value_model_path", c.value_model_path)
        if "value_model_path" in self.names:  # else the critic is built outside the target's config
            out.set("value_model_path", *self.critic_start(c))
        self.reward(out, c, parse_reward(c.reward))

    def critic_start(self, c: PPOConfig) -> tuple[str, str]:
        """The critic's initial weights, and why."""
        if c.value_backbone == "shared":
            return c.model_path, "value_backbone shared: the critic starts from the policy's base, model_path"
        if c.value_model_path:
            return c.value_model_path, ""
        return c.model_path, f"value_model_path empty: the critic starts from model_path{self.critic_default}"

    # -- 2. optimisation -------------------------------------------------------------------------------

    def optimisation(self, out: Out, c: PPOConfig) -> None:
        out.set("policy_lr", c.policy_lr)
        self.value_lr(out, c)
        self.optimizer(out, c)
        self.schedule(out, c)
        self.warmup(out, c)
        self.max_grad_norm(out, c)

    def value_lr(self, out: Out, c: PPOConfig) -> None:
        out.set("value_lr", c.value_lr)

    def optimizer(self, out: Out, c: PPOConfig) -> None:
        """A target whose only Adam is AdamW and which exempts biases and norm weights from weight decay."""
        name = self.names["optimizer"][0]
        if c.optimizer == "adam" and c.weight_decay > 0:
            out.lost("optimizer", c.optimizer, f"has AdamW only: weight_decay {c.weight_decay:g} is applied "
                     "decoupled, not as an L2 penalty in the gradient")
        out.set("optimizer", self.optimizers[c.optimizer],
                f"optimizer {c.optimizer}: {self.target}'s {name} {self.optimizers[c.optimizer]} is AdamW")
        if c.weight_decay > 0:
            out.lost("weight_decay", c.weight_decay, "exempts biases and norm weights from weight decay "
                     "(ppo-tuner decays every parameter)")
        out.set("weight_decay", c.weight_decay)

    def warmup(self, out: Out, c: PPOConfig) -> None:
        """A target that steps its schedule once per PPO iteration: warmup_steps in whole iterations."""
        iterations, exact = warmup_iterations(c)
        if not exact:
            per = c.ppo_epochs * c.num_mini_batches
            unit = "iteration" if iterations == 1 else "iterations"
            out.lost("warmup_steps", c.warmup_steps, f"steps its schedule once per PPO iteration ({per} optimizer "
                     f"steps); exported {iterations} {unit}, that is {iterations * per} optimizer steps")
        out.set("warmup_steps", iterations, "PPO iterations")

    def max_grad_norm(self, out: Out, c: PPOConfig) -> None:
        out.set("max_grad_norm", c.max_grad_norm, "each model's gradient norm, as ppo-tuner")

    # -- 3. batches ------------------------------------------------------------------------------------

    def batches(self, out: Out, c: PPOConfig) -> None:
        out.set("rollout_batch_size", c.rollout_batch_size, "prompts per iteration")
        out.set("mini_batch_size", c.mini_batch_size, "global samples per optimizer step")
        out.set("micro_batch_size", micro(c), "per GPU" if c.micro_batch_size else
                f"micro_batch_size empty: mini_batch_size (per GPU in {self.target})")
        out.set("ppo_epochs", c.ppo_epochs)

    # -- 4. KL -----------------------------------------------------------------------------------------

    def kl(self, out: Out, c: PPOConfig) -> None:
        """A target whose adaptive controller compares the KL averaged over response tokens with its target."""
        adaptive = c.kl_mode == "adaptive"
        out.set("kl_coef", c.kl_coef, "initial beta" if adaptive else "fixed beta")
        if adaptive:
            target = per_token_kl_target(c, out.mean_length)
            name = self.names["kl_target"][0]
            if out.mean_length:
                how = (f"kl_target / {out.mean_length:g}, the trial's mean response length (its last report), exact "
                       "when every response has that length")
            else:
                how = ("kl_target / response_length, the maximum (no mean length was logged): with shorter responses "
                       "it holds the summed KL below kl_target, at kl_target x mean length / response_length")
            out.lost("kl_target", c.kl_target, "compares the KL averaged over response tokens with its target; "
                     f"exported {name} {target:g} = {how}{self.kl_caveat}")
            out.set("kl_target", target, "kl_mode adaptive, per response token")
            horizon = round(c.kl_horizon)
            if horizon != c.kl_horizon:
                out.lost("kl_horizon", c.kl_horizon, f"takes a whole number of samples; exported {horizon}")
            out.set("kl_horizon", horizon, "samples")
        else:
            self.kl_unused(out, c)
        self.kl_estimator(out, c)

    def kl_unused(self, out: Out, c: PPOConfig) -> None:
        out.note(f"kl_mode fixed: kl_target={c.kl_target!r} and kl_horizon={c.kl_horizon!r} are unused")

    def kl_estimator(self, out: Out, c: PPOConfig) -> None:
        out.set("kl_estimator", self.kl_estimators[c.kl_estimator],
                f"kl_estimator {c.kl_estimator}, per-token KL in the reward")

    # -- 5. losses -------------------------------------------------------------------------------------

    def losses(self, out: Out, c: PPOConfig) -> None:
        for name in ("cliprange", "cliprange_value", "gae_lambda", "gamma"):
            out.set(name, getattr(c, name))
        self.value_loss(out, c)
        self.entropy(out, c)
        self.whitening(out, c)

    def value_loss(self, out: Out, c: PPOConfig) -> None:
        """A target that trains the critic with an optimizer of its own on an unweighted loss."""
        if c.vf_coef != 1.0:
            out.lost("vf_coef", c.vf_coef, "trains the critic with its own optimizer on the unweighted loss "
                     "0.5 * max(...), as vf_coef 1.0; under Adam a loss weight changes little beyond gradient clipping")
        else:
            out.note(f"vf_coef 1.0: {self.target}'s critic loss is unweighted, the same")

    def entropy(self, out: Out, c: PPOConfig) -> None:
        out.set("ent_coef", c.ent_coef)

    # -- 6. generation ---------------------------------------------------------------------------------

    def generation(self, out: Out, c: PPOConfig) -> None:
        out.set("response_length", c.response_length, "tokens")
        out.set("temperature", c.temperature, "also the temperature of the log-probs, as ppo-tuner")
        self.sampling(out, c)
        self.rollout(out, c)
        self.chat(out, c)

    def rollout(self, out: Out, c: PPOConfig) -> None:
        """A target with no rollout-engine setting: rollout_engine is among the run plumbing."""

    def chat(self, out: Out, c: PPOConfig) -> None:
        """A target whose prompts reach the model as written: the chat template is applied beforehand."""
        if c.chat_template is True:
            out.lost("chat_template", True, "has no chat-template setting: write the prompt file already in the "
                     "model's chat template (a user turn and the generation prompt)")
        else:
            out.note(f"chat_template {c.chat_template}: {self.target} passes the prompts as written (with "
                     "auto, ppo-tuner wraps plain prompts where the tokenizer has a template)")

    # -- 7. LoRA and memory ----------------------------------------------------------------------------

    def memory(self, out: Out, c: PPOConfig) -> None:
        if c.lora_rank:
            self.adapter(out, c)
        else:
            out.note("lora_rank 0: full fine-tuning, every weight of the policy trained (lora_alpha, lora_dropout "
                     "and lora_target_modules unused)")
        self.value_backbone(out, c)
        self.checkpointing(out, c)
        if c.frozen_dtype in ("auto", self.frozen_default):
            out.note(f"frozen_dtype {c.frozen_dtype}: {self.target} {self.frozen_dtypes}")
        else:
            out.lost("frozen_dtype", c.frozen_dtype, f"has no dtype for frozen weights alone: it {self.frozen_dtypes}")

    def value_backbone(self, out: Out, c: PPOConfig) -> None:
        if c.value_backbone == "separate":
            out.note("value_backbone separate: the critic is a model of its own, every weight trained")
        else:
            out.lost("value_backbone", c.value_backbone,
                     f"has no value head on the policy's frozen base: {self.shared_value}")

    def whole_alpha(self, out: Out, c: PPOConfig) -> int:
        """lora_alpha for a target that takes an integer (so the adapter's scale lora_alpha / lora_rank may move)."""
        alpha = lora_alpha_int(c)
        if alpha != c.lora_alpha:
            out.lost("lora_alpha", c.lora_alpha, f"takes a whole-number alpha; exported {alpha}, a scale of "
                     f"{alpha / c.lora_rank:g} instead of {c.lora_alpha / c.lora_rank:g}")
        return alpha
