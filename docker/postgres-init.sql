-- Run once, when the postgres service first creates its data volume (as POSTGRES_USER, after
-- POSTGRES_DB `optuna` is made): the second database, for the MLflow tracking server.
CREATE DATABASE mlflow;
