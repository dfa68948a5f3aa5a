"""Storage and tracking URLs that name environment variables (${PGPASSWORD}): expanded only where the
URL is used, never written back into a resolved or saved spec."""

from __future__ import annotations

import pytest
import yaml
from sqlalchemy.engine import make_url

from trials import ConfigError
from tuner.spec import parse_spec

URL = "postgresql+psycopg://tuner:${PGPW_TEST}@${PGHOST_TEST:-db}:5432/optuna"


def _spec(**extra):
    return parse_spec({"name": "urls", "storage": URL,
                       "mlflow": {"tracking_uri": "http://${MLHOST_TEST}:5000"}, **extra})


def test_references_are_expanded_where_the_url_is_used(monkeypatch):
    monkeypatch.setenv("PGPW_TEST", "p@ss:w/rd%")
    monkeypatch.setenv("MLHOST_TEST", "mlflow.internal")
    monkeypatch.delenv("PGHOST_TEST", raising=False)
    spec = _spec()
    url = make_url(spec.storage_url())
    assert (url.password, url.host, url.database) == ("p@ss:w/rd%", "db", "optuna")  # percent-encoded, then decoded
    assert spec.tracking_uri() == "http://mlflow.internal:5000"
    assert spec.env_references() == ["PGPW_TEST", "PGHOST_TEST", "MLHOST_TEST"]


def test_the_resolved_spec_keeps_the_references(monkeypatch):
    monkeypatch.setenv("PGPW_TEST", "s3cret")
    monkeypatch.setenv("MLHOST_TEST", "mlflow")
    data = _spec().resolved()
    assert data["storage"] == URL and data["mlflow"]["tracking_uri"] == "http://${MLHOST_TEST}:5000"
    assert "s3cret" not in yaml.safe_dump(data)


def test_a_variable_that_is_not_set_is_named_with_its_fix(monkeypatch):
    monkeypatch.delenv("PGPW_TEST", raising=False)
    with pytest.raises(ConfigError) as err:
        _spec().storage_url()
    problem = err.value.problems[0]
    assert problem.path == "storage" and "${PGPW_TEST}" in problem.message and "export PGPW_TEST" in problem.fix


def test_validate_prints_the_references_not_their_values(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("PGPW_TEST", "s3cret")
    path = tmp_path / "urls.yaml"
    path.write_text(yaml.safe_dump({"name": "urls", "storage": URL}))
    code, out, _ = run_cli("validate", path)
    assert code == 0 and "${PGPW_TEST}" in out and "s3cret" not in out


@pytest.mark.parametrize(("storage", "message"), [
    ("mysql://u:${P}@h/db", "database backend 'mysql' is not supported"),
    ("postgresql+psycopg://u:${P}@h:5432/", "names no database"),
])
def test_urls_with_references_are_still_checked(storage, message):
    with pytest.raises(ConfigError, match=message):
        parse_spec({"name": "urls", "storage": storage})


def test_a_url_that_is_one_reference_is_checked_once_expanded(monkeypatch):
    monkeypatch.setenv("STUDY_URL_TEST", "postgresql+psycopg://u:x@h:5432/db")
    assert parse_spec({"name": "urls", "storage": "${STUDY_URL_TEST}"}).storage_url().endswith("@h:5432/db")
