"""`tuner submit` before it reaches a cluster: what the job takes along, its environment, the address,
the token, and bad input as one line with exit code 2."""

from __future__ import annotations

import pytest
import yaml

from trials import ConfigError
from tuner.cluster import STOP_ENV, auth_token, dashboard_address, package_sweep


def _spec(folder, **trial) -> str:
    data = {"name": "pkg", "trial": {"model": "demo", "reward": "trials.demo:reward", "prompts": "demo", **trial},
            "search_space": {"policy_lr": {"low": 1.0e-5, "high": 1.0e-3, "log": True}},
            "storage": "postgresql+psycopg://tuner:${PG_TEST_PW}@db:5432/optuna",
            "mlflow": {"tracking_uri": "http://${MLFLOW_TEST_HOST:-mlflow}:5000"}}
    path = folder / "sweep.yaml"
    path.write_text("# my sweep\n" + yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_job_takes_the_spec_as_written_and_the_files_it_names(tmp_path):
    (tmp_path / "rewards").mkdir()
    (tmp_path / "rewards" / "mine.py").write_text("def score(p, r):\n    return [0.0] * len(r)\n")
    (tmp_path / "prompts.txt").write_text("hello\nworld\n")
    (tmp_path / "unrelated.bin").write_bytes(b"x" * 10)
    spec = _spec(tmp_path, reward="rewards/mine.py:score", prompts="prompts.txt")
    package = package_sweep(spec, tmp_path / "job")
    assert sorted(package.files) == ["prompts.txt", "rewards/mine.py"]
    assert (package.folder / "sweep.yaml").read_text() == spec.read_text()  # comments and ${...} kept
    assert (package.folder / "rewards" / "mine.py").is_file() and not (package.folder / "unrelated.bin").exists()
    assert package.entrypoint() == "tuner run sweep.yaml --address auto"
    assert package.runtime_env()["working_dir"] == str(package.folder)


def test_the_job_gets_the_urls_variables_that_are_set_here(tmp_path, monkeypatch):
    monkeypatch.setenv("PG_TEST_PW", "s3cret")
    monkeypatch.delenv("MLFLOW_TEST_HOST", raising=False)
    package = package_sweep(_spec(tmp_path), tmp_path / "job", env=["HF_TOKEN=abc", "PG_TEST_PW"])
    assert package.env_vars["PG_TEST_PW"] == "s3cret" and package.env_vars["HF_TOKEN"] == "abc"
    assert package.unset == ["MLFLOW_TEST_HOST"]  # the cluster's value (or the default) is used
    assert {k: package.env_vars[k] for k in STOP_ENV} == STOP_ENV  # cancel: SIGINT, time to record the trials


@pytest.mark.parametrize(("env", "field"), [(["1BAD"], "--env"), (["NOT_SET_ANYWHERE_X"], "--env")])
def test_bad_env_entries_are_refused(tmp_path, monkeypatch, env, field):
    monkeypatch.delenv("NOT_SET_ANYWHERE_X", raising=False)
    with pytest.raises(ConfigError) as err:
        package_sweep(_spec(tmp_path), tmp_path / "job", env=env)
    assert err.value.problems[0].path == field


def test_a_file_outside_the_specs_folder_is_refused(tmp_path):
    (tmp_path / "outside.py").write_text("def score(p, r):\n    return [0.0] * len(r)\n")
    (tmp_path / "spec").mkdir()
    with pytest.raises(ConfigError) as err:
        package_sweep(_spec(tmp_path / "spec", reward="../outside.py:score"), tmp_path / "job")
    assert err.value.problems[0].path == "trial.reward" and "outside the spec's folder" in str(err.value)


@pytest.mark.parametrize("address", ["127.0.0.1:6379", "ray://head:10001", "http://", "http://head:port"])
def test_an_address_that_is_no_dashboard_is_refused(address):
    with pytest.raises(ConfigError) as err:
        dashboard_address(address)
    assert err.value.problems[0].path == "--address"


def test_the_address_comes_from_ray_address_when_not_given(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265/")
    assert dashboard_address(None) == "http://head:8265"
    assert dashboard_address("https://other:443") == "https://other:443"


def test_the_token_is_found_as_ray_finds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    assert auth_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-file\n")
    assert auth_token() == "from-file"
    (tmp_path / "tok").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert auth_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert auth_token() == "from-env"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert auth_token() is None


@pytest.mark.parametrize(("args", "env", "expected"), [
    (["jobs"], {}, "--address: no Ray cluster given"),
    (["jobs"], {"RAY_ADDRESS": "127.0.0.1:6379"}, "RAY_ADDRESS: is not the address of a Ray dashboard"),
    (["logs", "some-job", "--address", "http://127.0.0.1:1"], {}, "--address: no Ray dashboard answers there"),
    (["cancel", "some-job", "--address", "ray://head:10001"], {}, "--address: is not the address of a Ray dashboard"),
])
def test_cli_errors_are_one_line_with_exit_code_2(run_cli, monkeypatch, args, env, expected):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run_cli(*args)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith(f"error: {expected}"), err


def test_submit_checks_the_spec_before_the_cluster(run_cli, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\nkl_limit: -1\nbudget: {trials: 0}\n")
    code, out, err = run_cli("submit", spec, "--address", "http://127.0.0.1:1")
    assert code == 2 and out == ""
    assert [line.split(":")[1] for line in err.splitlines()] == [" kl_limit", " budget.trials"], err


# -- `tuner run` and cluster addresses ---------------------------------------------------------------
@pytest.mark.parametrize(("address", "expected"), [
    ("http://127.0.0.1:8265", "ray.address: is a Ray jobs API address, which 'tuner run' cannot join"),
    ("127.0.0.1:1", "ray.address: no Ray cluster answers there"),
])
def test_tuner_run_names_an_address_it_cannot_join(tmp_path, demo_model, address, expected):
    from tests.sweep_helpers import tuner, write_spec

    done = tuner("run", write_spec(tmp_path, "join"), "--address", address, cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith(f"error: {expected}"), done.stderr
    assert "Traceback" not in done.stderr


def test_a_password_in_the_address_is_never_shown(run_cli, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code, out, err = run_cli("jobs", "--address", "http://me:hunter22@127.0.0.1:1")
    assert code == 2 and "hunter22" not in err and "http://me:***@127.0.0.1:1" in err


# -- the spec checked as it will run on the cluster --------------------------------------------------
def _verl_spec(folder, gpus: int) -> str:
    path = folder / "verl.yaml"
    path.write_text(f"name: v\ntrial: {{engine: verl, command: [py, -m, verl.trainer.main_ppo, "
                    f"trainer.n_gpus_per_node=8]}}\nresources: {{gpus_per_trial: {gpus}}}\n"
                    "base: {micro_batch_size: 1}\n")
    return path


def test_submit_checks_the_spec_as_it_runs_on_the_cluster(tmp_path):
    """A verl spec with no ray.address that holds 8 GPUs per Tune trial passes a local check, but on the
    cluster verl's own workers would wait for those GPUs: `tuner submit` refuses it before asking the
    cluster; the same spec holding none gets past the spec to the (absent) dashboard."""
    from tests.sweep_helpers import tuner

    holds = _verl_spec(tmp_path, gpus=8)
    assert tuner("validate", holds, cwd=tmp_path, timeout=120).returncode == 0  # a local sweep: right
    on_cluster = tuner("validate", holds, "--address", "auto", cwd=tmp_path, timeout=120)
    assert on_cluster.returncode == 2 and on_cluster.stderr.startswith("error: resources.gpus_per_trial: would hold")
    done = tuner("submit", holds, "--address", "http://127.0.0.1:1", cwd=tmp_path, timeout=120,
                 env={"RAY_ADDRESS": ""})
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        "error: resources.gpus_per_trial: would hold GPUs that verl's own workers then cannot get: on a "
        "cluster its trainer joins the cluster and reserves its GPUs itself (got 8.0); set gpus_per_trial: 0 "
        "(the trial holds a CPU; verl takes trainer.n_gpus_per_node x trainer.nnodes GPUs from the cluster)"]
    ready = tuner("submit", _verl_spec(tmp_path, gpus=0), "--address", "http://127.0.0.1:1", cwd=tmp_path,
                  timeout=120, env={"RAY_ADDRESS": ""})
    assert ready.returncode == 2 and ready.stderr.startswith("error: --address: no Ray dashboard answers there")


def test_tuner_run_with_an_address_checks_the_spec_for_that_cluster(tmp_path):
    from tests.sweep_helpers import tuner

    done = tuner("run", _verl_spec(tmp_path, gpus=8), "--address", "127.0.0.1:1", cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: resources.gpus_per_trial: would hold GPUs")
    assert not (tmp_path / "sweeps").exists()  # nothing started or written
