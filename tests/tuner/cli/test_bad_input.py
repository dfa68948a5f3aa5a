"""Bad input never reaches a trial: fuzzed specs raise only the project's error, and the CLI shows
one line per problem with exit code 2, no traceback, and nothing written."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.sweep_helpers import tuner, write_spec
from trials import TunerError, field_specs
from tuner.cli import main
from tuner.spec import load_spec, parse_spec

SECTIONS = ["name", "trial", "base", "search_space", "objective", "kl_limit", "budget", "scheduler",
            "sampler", "resources", "ray", "storage", "mlflow", "workdir", "seed"]
KEYS = SECTIONS + list(field_specs()) + ["low", "high", "log", "step", "choices", "type", "trials",
                                         "iterations", "metric", "grace_period", "model", "reward"]
scalars = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
           | st.text(max_size=20) | st.sampled_from(["demo", "tpe", "asha", "1e-5", "sqlite:///x.db", "nan"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=5), max_leaves=20)
specs = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), values, max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs)
def test_fuzzed_spec_data_raises_only_the_projects_error(data):
    try:
        parse_spec(data)
    except TunerError as exc:
        assert exc.lines() and all(line.strip() for line in exc.lines())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(specs.map(lambda d: yaml.safe_dump(d, allow_unicode=True)), st.text(max_size=300),
                 st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_tuner_validate_never_shows_a_traceback(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spec.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["validate", str(path)])
        assert code in (0, 2), err.getvalue()
        assert "Traceback" not in err.getvalue()
        if code == 2:
            assert all(line.startswith(("error: ", "warning: ")) for line in err.getvalue().splitlines())
        with contextlib.suppress(TunerError):
            load_spec(path)


@pytest.mark.parametrize("case", ["bad_prompts", "reward_types", "reward_count", "not_causal", "missing_model",
                                  "missing_reward_file", "no_vllm"])
def test_bad_inputs_are_refused_before_any_trial_is_launched(tmp_path, demo_model, case):
    trial = {"model": "demo", "reward": "trials.demo:reward", "prompts": "demo"}
    detail, base = "", {}
    if case == "bad_prompts":
        (tmp_path / "prompts.jsonl").write_text('{"prompt": "the cat"}\n{"prompt": 3}\n')
        trial["prompts"] = "prompts.jsonl"
        field = "trial.prompts"
    elif case in ("reward_types", "reward_count"):
        body = "return {'score': 1}" if case == "reward_types" else "return [0.5]"
        (tmp_path / "rw.py").write_text(f"def score(prompts, responses):\n    {body}\n")
        trial["reward"] = "rw.py:score"
        field = "trial.reward"
    elif case == "not_causal":
        (tmp_path / "clip").mkdir()
        (tmp_path / "clip" / "config.json").write_text(json.dumps({"model_type": "clip"}))
        trial["model"] = str(tmp_path / "clip")
        field = "trial.model"
    elif case == "missing_model":
        trial["model"] = str(tmp_path / "no-such-model")
        field = "trial.model"
    elif case == "no_vllm":  # an interpreter without vllm (this one): refused before any vLLM server starts
        base = {"rollout_engine": "vllm", "vllm_python": sys.executable}
        field, detail = "vllm_python", "cannot import vllm"  # base fields keep their engine name
    else:  # the spec key the user wrote, and the folder a relative path was looked for in
        trial["reward"] = "my_rewards.py:reward"
        field = "trial.reward"
        detail = ("file my_rewards.py does not exist (a relative path: looked for in the spec's folder "
                  f"{tmp_path.resolve()})")
    path = write_spec(tmp_path, "bad", trial=trial, base=base)
    proc = tuner("run", path, cwd=tmp_path)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and errors[0].startswith(f"error: {field}: {detail}"), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "sweeps").exists()  # nothing written: no study, no MLflow store
