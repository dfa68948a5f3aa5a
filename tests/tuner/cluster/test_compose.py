"""docker/compose.yaml, checked as written and then run for real, without Docker.

The slow test starts the compose services' own commands as local processes (tests/
compose_cluster.py), submits the demo sweep of docker/sweep-demo.yaml to the Ray head with `tuner
submit`, and checks that the job succeeds, its study is in PostgreSQL and its runs and artifacts are
on the MLflow server. Commands, ports and environment come from the parsed compose file, so the
test fails when the compose file and the code drift apart.
"""

from __future__ import annotations

import urllib.error
import urllib.request

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.cluster_helpers import DOCKER, cluster_spec, submit, tuner
from tests.compose_cluster import ROOT, compose_file, interpolate, published
from tests.sweep_helpers import sweep_runs

SERVICES = compose_file()["services"]


@pytest.fixture
def cluster(compose_cluster):
    return compose_cluster


# -- the compose file as written ---------------------------------------------------------------------
def test_every_published_port_is_on_loopback():
    ports = [(name, p) for name, svc in SERVICES.items() for p in published(svc)]
    assert {name for name, _ in ports} >= {"postgres", "mlflow", "ray-head"}
    assert all(ip == "127.0.0.1" for _, (ip, _, _) in ports), ports


def test_every_ray_node_keeps_token_authentication_on():
    ray_services = [name for name, svc in SERVICES.items() if svc["command"][:2] == ["ray", "start"]]
    assert set(ray_services) == {"ray-head", "ray-worker", "ray-gpu-worker"}
    for name in ray_services:
        env = SERVICES[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?")  # compose refuses to start without it


def test_gpu_workers_reserve_the_gpus_and_use_the_cuda_build():
    gpu = SERVICES["ray-gpu-worker"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    assert gpu["build"]["args"]["VARIANT"] == "cuda" and gpu["profiles"] == ["gpu"]
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "ARG VARIANT=cpu" in dockerfile and "cuda)" in dockerfile


def test_the_image_copies_what_exists_and_what_its_ignore_file_lets_through():
    lines = (DOCKER / "Dockerfile").read_text().splitlines()
    sources = [line.split()[1] for line in lines if line.startswith("COPY ")] + \
              [name for line in lines if line.startswith("COPY ") for name in line.split()[2:-1]]
    allowed = {line[1:].rstrip("/") for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")}
    assert {"pyproject.toml", "README.md", "trials", "tuner"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists() and source.rstrip("/") in allowed, source


def test_compose_needs_exactly_the_variables_env_example_names():
    example = {line.split("=", 1)[0] for line in (DOCKER / "env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    assert example == {"POSTGRES_PASSWORD", "RAY_AUTH_TOKEN"}
    for name in example:
        with pytest.raises(KeyError, match=name):
            interpolate(compose_file(), {n: "x" for n in example - {name}})


# -- the compose cluster, running ----------------------------------------------------------------
@pytest.mark.slow
def test_a_submitted_sweep_runs_on_the_compose_cluster(cluster, tmp_path):
    spec = cluster_spec(cluster, tmp_path, "cluster-demo")
    job_id = submit(cluster, spec)
    env = cluster.client_env()
    follow = tuner("logs", job_id, "--follow", "--address", cluster.dashboard, env=env, cwd=tmp_path)
    assert follow.returncode == 0, follow.stdout[-4000:] + follow.stderr[-2000:]
    assert f"job {job_id}: SUCCEEDED" in follow.stderr

    study = optuna.load_study(study_name="cluster-demo", storage=cluster.storage_url("optuna"))
    ran = [t for t in study.trials if "duplicate_of" not in t.user_attrs]  # repeats of a config are told, not run
    assert len(ran) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in ran)

    client = MlflowClient(cluster.tracking_uri)
    experiment = client.get_experiment_by_name("cluster-demo")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # served by the MLflow server
    parent = sweep_runs(client, "cluster-demo", "sweep")[0]
    children = sweep_runs(client, "cluster-demo", "trial")
    status = {"COMPLETE": "FINISHED", "INFEASIBLE": "FAILED", "PRUNED": "KILLED"}  # a red or grey badge: not complete
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert all(r.info.status == status[r.data.tags["ppo_tuner.state"]] for r in children)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"spec.yaml", "kl_trajectories.png", "best_config.yaml"} <= artifacts, artifacts
    password = cluster.secrets["POSTGRES_PASSWORD"]
    assert parent.data.params["storage"].startswith("postgresql+psycopg://tuner:***@")
    assert all(password not in v for v in parent.data.params.values())
    saved = list(cluster.folder.glob("ray-head/session_2*/runtime_resources/working_dir_files/*/"
                                     "sweeps/cluster-demo/spec.yaml"))
    assert len(saved) == 1 and "tuner:${PGPASSWORD}@" in saved[0].read_text()  # the job's saved spec holds no password
    log = tuner("logs", job_id, "--address", cluster.dashboard, env=env, cwd=tmp_path).stdout
    assert "sweep cluster-demo: 4 trials run" in log and password not in log

    # the study from this machine, as the README shows: a copy of the spec, alone, at the published port
    (tmp_path / "here").mkdir()
    here_spec = tmp_path / "here" / "demo-here.yaml"
    here_spec.write_text(spec.read_text())
    here = cluster.client_env(PGPASSWORD=password)
    status = tuner("status", here_spec, env=here, cwd=here_spec.parent)
    assert status.returncode == 0 and "(4 of 4 trials)" in status.stdout, status.stdout + status.stderr
    exported = tuner("export", here_spec, "--format", "yaml", "-o", "best.yaml", env=here, cwd=here_spec.parent)
    assert exported.returncode == 0 and "policy_lr" in (here_spec.parent / "best.yaml").read_text(), exported.stderr

    listed = tuner("jobs", "--address", cluster.dashboard, env=env, cwd=tmp_path)
    row = next(line for line in listed.stdout.splitlines() if line.startswith(job_id))
    assert "SUCCEEDED" in row and "cluster-demo" in row


@pytest.mark.slow
def test_the_mlflow_server_answers_the_compose_service_name_only(cluster):
    def status(host: str) -> int:
        request = urllib.request.Request(f"{cluster.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1",
                                         headers={"Host": host})
        try:
            return urllib.request.urlopen(request, timeout=10).status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert status("mlflow:5000") == 200  # how the Ray containers reach it (--allowed-hosts)
    assert status("attacker.example:5000") == 403  # DNS-rebinding protection stays on
