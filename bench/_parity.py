"""The parity check of bench/engine_vs_trl.py: our engine and trl 1.12's PPOTrainer, step by step, on one
replayed rollout.

Both sides replay the same responses (sampled once from the demo policy, then cut by an EOS at a chosen
position and padded after it, as HF generate pads) and the same mini-batch order, for several epochs of
several mini-batches at a learning rate high enough that the PPO ratio moves and both clips act. Compared:
per iteration, the KL, scores, non-score and RLHF rewards, and the per-token rewards that go into GAE;
per optimizer step, the policy and value losses, both clip fractions, approx KL and each model's gradient
norm before the step (not the weights after Adam, whose first step is about lr x the gradient's sign).

Where the engines differ on purpose (each is checked, not only stated):
- TRL puts the score one position after the EOS (`sequence_lengths + 1`) and trains the value model on
  that position too; ours puts it on the last response token, the EOS, and stops the value there. So in
  case "eos" (EOS anywhere) TRL's rewards must equal ours once its score is moved back one position (and
  must differ before), the value side is not compared, and gamma = lambda = 1, which makes the policy's
  advantages the same under both conventions. Case "full" (EOS only as the last token, or none: the
  conventions coincide) compares everything, with gamma and lambda below 1.
- TRL's approx KL averages over every position of the mini-batch, padding included (as zeros); ours over
  response tokens. Ours is compared times its mini-batch's fraction of response tokens.
- TRL's PPO never clips gradients: ours runs with clipping off (`clip_grad=False`).
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import TRL_PYTHON, Workload, run_worker

CASES: dict[str, dict[str, Any]] = {
    "eos": {"eos": "anywhere", "iterations": 1, "gamma": 1.0, "lam": 1.0},
    "full": {"eos": "last", "iterations": 2, "gamma": 0.95, "lam": 0.9},
}
LR = 3e-4  # high enough that the ratio leaves [0.8, 1.2] within 4 epochs of 4 mini-batches
ITERATION_KEYS = ["objective/kl", "objective/scores", "objective/non_score_reward", "objective/rlhf_reward"]
POLICY_KEYS = ["policy_loss", "clipfrac", "approxkl", "grad_norm_policy"]
VALUE_KEYS = ["value_loss", "value_clipfrac", "grad_norm_value"]
REL, ABS = 1e-3, 1e-5  # |ours - trl| <= ABS + REL * |trl|


def workload(w: Workload, samples: int, case: str) -> Workload:
    """The parity workload of a case: 4 mini-batches, 4 epochs, no gradient clipping (TRL has none)."""
    c = CASES[case]
    return dataclasses.replace(w, rollout=samples, mini=samples // 4, epochs=4, lr=LR, clip_grad=False,
                               gamma=c["gamma"], lam=c["lam"])


def make_replay(w: Workload, case: str, path: Path) -> None:
    """w.rollout prompts, one full-length sampled response each, cut by an EOS where the case puts it;
    the mini-batch order of every epoch."""
    import torch

    from trials._engine import prepare

    run = prepare(w.engine_config())
    prompts = run.train_prompts[:w.rollout]
    enc = run.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    pad, eos = run.tokenizer.pad_token_id, run.tokenizer.eos_token_id
    torch.manual_seed(w.seed)
    with torch.no_grad():
        seq = run.policy.generate(**enc, generation_config=run.generation_config, suppress_tokens=[pad, eos])
    responses = seq[:, enc["input_ids"].shape[1]:].clone()
    B, T = responses.shape
    # "anywhere": EOS at 0, 1, ..., T - 1 or none, in turn; "last": EOS as the last token of every 4th, else none
    ends = ([i % (T + 1) for i in range(B)] if CASES[case]["eos"] == "anywhere"
            else [T - 1 if i % 4 == 0 else T for i in range(B)])
    for i, end in enumerate(ends):
        if end < T:
            responses[i, end], responses[i, end + 1:] = eos, pad
    g = torch.Generator().manual_seed(w.seed)
    orders = [torch.randperm(B, generator=g).tolist() for _ in range(CASES[case]["iterations"] * w.epochs)]
    torch.save({"prompts": prompts, "responses": responses, "ends": ends, "orders": orders,
                "iterations": CASES[case]["iterations"]}, path)


def run_side(side: str, w: Workload, replay: Path) -> dict[str, Any]:
    python, script = (TRL_PYTHON, "_engine_trl.py") if side == "trl" else (sys.executable, "_engine_ours.py")
    return run_worker(python, script, ["parity", w.to_json(), str(replay), str(replay.parent)])


def _agree(a: float, b: float) -> bool:
    return abs(a - b) <= ABS + REL * abs(b)


def compare(case: str, ends: list[int], ours: dict[str, Any], trl: dict[str, Any]) -> dict[str, Any]:
    """Every compared figure of a case side by side; ok when all agree and the check was exercised."""
    rows = []
    for i, (a, b) in enumerate(zip(ours["iterations"], trl["iterations"], strict=True), start=1):
        rows += [{"iteration": i, "metric": k, "ours": a[k], "trl": b[k],
                  "agree": _agree(a[k], b[k])}
                 for k in ITERATION_KEYS]
    keys = POLICY_KEYS + (VALUE_KEYS if case == "full" else [])
    for n, (a, b) in enumerate(zip(ours["steps"], trl["steps"], strict=True), start=1):
        a = {**a, "approxkl": a["approxkl"] * a["token_fraction"]}  # TRL's approx KL counts padding as zeros
        rows += [{"step": n, "metric": k, "ours": a[k], "trl": b[k], "agree": _agree(a[k], b[k])} for k in keys]
    rewards = [_rewards(case, ends, a["rewards"], b["rewards"])
               for a, b in zip(ours["iterations"], trl["iterations"], strict=True)]
    exercised = {"policy clip": max(s["clipfrac"] for s in trl["steps"]) > 0,
                 "value clip": max(s["value_clipfrac"] for s in trl["steps"]) > 0,
                 "ratio moved": max(s["approxkl"] for s in trl["steps"]) > 1e-4}
    ok = all(r["agree"] for r in rows) and all(r["agree"] for r in rewards) and all(exercised.values())
    out = {"ok": ok, "rows": rows, "rewards": rewards, "exercised": exercised,
           "steps": len(ours["steps"]), "compared": keys}
    if case == "eos":  # not compared, but shown: TRL's value loss also counts the position after each EOS
        out["value_loss_first_step"] = {"ours": ours["steps"][0]["value_loss"], "trl": trl["steps"][0]["value_loss"]}
    return out


def _rewards(case: str, ends: list[int], ours: list[list[float]], trl: list[list[float]]) -> dict[str, Any]:
    """Per-token rewards: equal as they are in case "full"; in case "eos" equal only after TRL's score is
    moved back from the position after the EOS to the EOS, and different before."""
    import torch

    a, b = torch.tensor(ours), torch.tensor(trl)
    out = {"max_abs_diff": (a - b).abs().max().item()}
    if case == "eos":
        moved = b.clone()
        for i, end in enumerate(ends):
            if end + 1 < b.shape[1]:
                moved[i, end] += moved[i, end + 1]  # the position after the EOS holds only the score (KL is 0 there)
                moved[i, end + 1] = 0.0
        out.update(max_abs_diff_trl_score_moved_back=(a - moved).abs().max().item())
        out["agree"] = _all_agree(a, moved) and not _all_agree(a, b)
    else:
        out["agree"] = _all_agree(a, b)
    return out


def _all_agree(a: Any, b: Any) -> bool:
    return bool(((a - b).abs() <= ABS + REL * b.abs()).all())


def parity(w: Workload, samples: int, cases: tuple[str, ...] = tuple(CASES), ours_changes: dict[str, Any] | None = None,
           trl_results: dict[str, Any] | None = None) -> dict[str, Any]:
    """Both cases, each side in a process of its own. ours_changes: settings changed on our side only (the
    check must then fail); trl_results: TRL's side of an earlier call, reused."""
    tmp = Path(tempfile.mkdtemp(prefix="ppo-parity-"))
    out: dict[str, Any] = {"samples": samples, "tolerance": f"|ours - trl| <= {ABS:g} + {REL:g} |trl|",
                           "ours_changes": ours_changes or {}, "cases": {}, "trl_results": {}}
    for case in cases:
        wc = workload(w, samples, case)
        replay = tmp / f"{case}.pt"
        make_replay(wc, case, replay)
        trl = (trl_results or {}).get(case) or run_side("trl", wc, replay)
        ours = run_side("ours", dataclasses.replace(wc, **(ours_changes or {})), replay)
        import torch

        result = compare(case, torch.load(replay)["ends"], ours, trl)
        out["cases"][case] = {**CASES[case], "workload": dataclasses.asdict(wc), **result}
        out["trl_results"][case] = trl
    out["ok"] = all(c["ok"] for c in out["cases"].values())
    return out


def summary(p: dict[str, Any]) -> list[str]:
    """The check in a few lines: per case, what was compared, the largest relative gap, failures."""
    lines = [f"parity ({p['samples']} samples, 4 epochs x 4 mini-batches, lr {LR:g}, {p['tolerance']}): "
             f"{'OK' if p['ok'] else 'FAILED'}" + (
                 f" (ours changed: {p['ours_changes']})" if p["ours_changes"] else "")]
    for name, c in p["cases"].items():
        gap = max(abs(r["ours"] - r["trl"]) / max(abs(r["trl"]), 1e-12) for r in c["rows"])
        bad = [r for r in c["rows"] if not r["agree"]]
        lines.append(f"  case {name} (EOS {c['eos']}, {c['iterations']} iteration(s), "
                     f"gamma {c['gamma']}, lambda {c['lam']}, "
                     f"{c['steps']} steps; compared per step: {', '.join(c['compared'])}): "
                     f"{'ok' if c['ok'] else 'DIFFERS'}; largest relative gap {gap:.1e}; exercised {c['exercised']}")
        for r in c["rewards"]:
            lines.append(f"    rewards: {', '.join(f'{k} {v:.2e}' for k, v in r.items() if k != 'agree')}: "
                         f"{'ok' if r['agree'] else 'DIFFERS'}")
        for r in bad[:5]:
            where = f"step {r['step']}" if "step" in r else f"iteration {r['iteration']}"
            lines.append(f"    {where} {r['metric']}: ours {r['ours']:.6e}, trl {r['trl']:.6e}")
    return lines
