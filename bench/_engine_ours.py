"""Our engine's side of bench/engine_vs_trl.py, run in a process of its own (its own peak RSS).

    python bench/_engine_ours.py speed  WORKLOAD_JSON ITERATIONS WARMUP
    python bench/_engine_ours.py limit  WORKLOAD_JSON ITERATIONS WARMUP
    python bench/_engine_ours.py parity WORKLOAD_JSON REPLAY.pt OUT_DIR

speed: seconds per phase of steady iterations. limit: the same iterations, each followed by every
unavoidable model call of an iteration measured alone (on copies of the models, so training is
untouched). parity: the iterations of a replayed rollout, step by step (see _parity.py). Prints one JSON line.
"""

from __future__ import annotations

import copy
import sys
import time
from typing import Any

import torch
from _common import Workload, grad_norm, load, peak_rss_mib, serve


def _phases(metrics: dict[str, float]) -> dict[str, float]:
    from trials import metrics as K

    it, gen, score = metrics[K.ITERATION_SECONDS], metrics[K.GENERATE_SECONDS], metrics[K.SCORE_SECONDS]
    sync = metrics.get(K.SYNC_SECONDS, 0.0)  # vLLM rollouts: the policy's weights to the server, inside generate
    return {"iteration": it, "generate": gen - sync, "sync": sync, "score": score, "update": it - gen - score,
            "gc": 0.0}


def speed(w: Workload, iterations: int, warmup: int, with_floor: bool = False) -> dict[str, Any]:
    from trials import PPOTrainer

    # +1: the last iteration would also evaluate; the run stops after the last timed one instead
    trainer = PPOTrainer(w.engine_config(num_iterations=warmup + iterations + 1))
    floor = Floor(trainer.state, w) if with_floor else None
    rows: list[dict[str, float]] = []
    clip, clipped = [0.0], torch.nn.utils.clip_grad_norm_

    def timed_clip(*args: Any, **kwargs: Any) -> Any:  # work TRL's PPO does not do: two gradient norms a step
        t = time.perf_counter()
        try:
            return clipped(*args, **kwargs)
        finally:
            clip[0] += time.perf_counter() - t

    torch.nn.utils.clip_grad_norm_ = timed_clip

    def report(iteration: int, metrics: dict[str, float]) -> bool:
        if warmup < iteration <= warmup + iterations:
            rows.append({**_phases(metrics), "clip": clip[0], **(floor.measure() if floor else {})})
        clip[0] = 0.0
        return iteration >= warmup + iterations

    load_before = load()
    trainer.train(report)
    return {"side": "ours", "rows": rows, "load": [load_before, load()], "peak_rss_mib": peak_rss_mib()}


class Floor:
    """Each unavoidable model call of one iteration, timed alone: the generation (HF generate), the
    reference and value forwards over the rollout, and per mini-batch the policy and value forward
    plus backward and a fused AdamW step over what trains. Copies of the models (lr 0), so the run is
    untouched (under LoRA the reference is the policy's copy with its adapter disabled)."""

    def __init__(self, run: Any, w: Workload):
        self.run, self.w = run, w
        self.policy, self.value = copy.deepcopy(run.policy), copy.deepcopy(run.value)
        params = [p for p in (*self.policy.parameters(), *self.value.parameters()) if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=0.0, fused=True)
        self.enc = run.tokenizer(run.train_prompts[:w.rollout], return_tensors="pt", padding=True,
                                 add_special_tokens=False)

    def measure(self) -> dict[str, float]:
        from trials._lora import reference

        w, enc, P = self.w, self.enc, self.enc["input_ids"].shape[1]
        t0 = time.perf_counter()
        with torch.no_grad():
            seq = self.policy.generate(**enc, generation_config=self.run.generation_config)
        t1 = time.perf_counter()
        attn = torch.cat([enc["attention_mask"], torch.ones_like(seq[:, P:])], 1)
        pos = (attn.cumsum(1) - 1).clamp(min=0)
        with torch.no_grad():
            with reference(self.policy, self.run.ref) as ref:  # under LoRA: the copy with its adapter off
                ref(input_ids=seq, attention_mask=attn, position_ids=pos)
            t2 = time.perf_counter()
            with self.value.active():
                self.value(seq, attn, pos)
        t3 = time.perf_counter()
        backward = step = 0.0
        for _ in range(w.epochs):
            for s in range(0, w.rollout, w.mini):
                sl = slice(s, s + w.mini)
                t4 = time.perf_counter()
                logits = self.policy(input_ids=seq[sl], attention_mask=attn[sl], position_ids=pos[sl]).logits
                logp = torch.log_softmax(logits[:, P - 1:-1].float() / w.temperature, -1)
                logp = logp.gather(-1, seq[sl, P:, None]).squeeze(-1)
                logp.mean().backward()
                with self.value.active():
                    self.value(seq[sl], attn[sl], pos[sl])[:, P - 1:-1].square().mean().backward()
                t5 = time.perf_counter()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                backward, step = backward + t5 - t4, step + time.perf_counter() - t5
        return {"floor_generate": t1 - t0, "floor_ref": t2 - t1, "floor_value": t3 - t2,
                "floor_forward_backward": backward, "floor_optimizer": step}


def parity(w: Workload, replay_path: str, out_dir: str) -> dict[str, Any]:
    """The replayed rollout's iterations (see bench/_parity.py): per optimizer step the losses, clip
    fractions, approx KL and both models' gradient norms before the step; per iteration the metrics and
    the per-token rewards that go into GAE."""
    from trials import PPOTrainer
    from trials import _engine as E
    from trials import _math as M
    from trials import _update as U
    from trials import metrics as K
    from trials._rollout import forward_logits, logprobs_of, response_mask

    replay = torch.load(replay_path)
    prompts, responses, orders = replay["prompts"], replay["responses"], iter(replay["orders"])
    trainer = PPOTrainer(w.engine_config(num_iterations=replay["iterations"]))
    run, sample, randperm = trainer.state, E._generate, torch.randperm

    def replayed(run: Any, batch: list[str], with_logprobs: bool = False) -> Any:
        if batch != prompts:  # the evaluations sample as usual
            return sample(run, batch, with_logprobs)
        enc = run.tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        logprobs = None
        if with_logprobs:  # what the sampling pass would have given: the policy's log-probs at the temperature
            seq = torch.cat([enc["input_ids"], responses], 1)
            attn = torch.cat([enc["attention_mask"], response_mask(responses, run.tokenizer.eos_token_id).long()], 1)
            with torch.no_grad():
                logits = forward_logits(run.policy, seq, attn, (attn.cumsum(1) - 1).clamp(min=0),
                                        enc["input_ids"].shape[1])
                logprobs = logprobs_of(logits, responses, run.config.temperature)
        return enc, responses, logprobs

    def replayed_order(n: int, *args: Any, generator: Any = None, **kwargs: Any) -> torch.Tensor:
        if generator is run.prompt_gen:  # the epoch's mini-batch order: the replay's, as TRL is given it
            return torch.tensor(next(orders))
        return randperm(n, *args, generator=generator, **kwargs)

    steps: list[dict[str, float]] = []
    rewards: list[list[list[float]]] = []
    micro_step, gae = U._micro_step, M.compute_gae

    def recorded_micro_step(run: Any, ro: Any, advantages: Any, returns: Any, idx: Any, P: int, weight: float) -> Any:
        stats = micro_step(run, ro, advantages, returns, idx, P, weight)
        steps.append({"policy_loss": stats[K.POLICY_LOSS], "value_loss": stats[K.VALUE_LOSS],
                      "clipfrac": stats[K.CLIPFRAC], "value_clipfrac": stats[K.VALUE_CLIPFRAC],
                      "approxkl": stats[K.APPROXKL], "token_fraction": ro.mask[idx].mean().item()})
        return stats

    def recorded_gae(r: torch.Tensor, *args: Any) -> Any:
        rewards.append(r.tolist())
        return gae(r, *args)

    def grad_norms(optimizer: Any, *_: Any) -> None:
        steps[-1].update(grad_norm_policy=grad_norm(run.policy_params), grad_norm_value=grad_norm(run.value_params))

    E._generate, E._next_prompts, U._micro_step, M.compute_gae = (
        replayed, lambda run, n: list(prompts), recorded_micro_step, recorded_gae)
    torch.randperm = replayed_order
    run.optimizer.register_step_pre_hook(grad_norms)
    history: list[dict[str, float]] = []
    trainer.train(lambda iteration, metrics: history.append(metrics) and False)
    return {"side": "ours", "steps": steps,
            "iterations": [{**h, "rewards": r} for h, r in zip(history, rewards, strict=True)]}


if __name__ == "__main__":
    serve(sys.argv[1:], parity, speed, {"limit": {"with_floor": True}})
