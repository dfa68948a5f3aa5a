"""ppo-tuner's controller: sweep specs, the Ray Tune + Optuna sweep, MLflow tracking, export, CLI."""
