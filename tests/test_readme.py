"""The README's install line and timings agree with the project (the timings themselves are measured by
hand: README 'Run the demo' says when and on what load)."""

from __future__ import annotations

import re

import yaml

from tests.conftest import ROOT
from tuner.cli._sweep import DEMO_BUILD

README = (ROOT / "README.md").read_text()
RANGE = r"(\d+-\d+ (?:s|minutes))"


def test_a_cpu_only_user_is_told_to_install_torchs_cpu_build_of_the_version_required():
    floor = re.search(r'"torch>=([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    install = README[README.index("## Install"):README.index("## Run the demo")]
    assert f"pip install torch=={floor} --index-url https://download.pytorch.org/whl/cpu" in install
    assert install.index("download.pytorch.org/whl/cpu") < install.index("pip install -e")  # torch first


def test_the_demo_timings_agree_in_the_readme_the_demo_spec_and_the_run_message():
    demo = (ROOT / "search_spaces" / "demo.yaml").read_text()
    readme = re.search(rf"A sweep of (\d+) trials on the built-in tiny model, on a local Ray: {RANGE}", README)
    spec = re.search(rf"# A small sweep on the built-in tiny model: (\d+) trials that finish in {RANGE}", demo)
    assert readme and spec and readme.groups() == spec.groups()
    assert int(spec.group(1)) == yaml.safe_load(demo)["budget"]["trials"]
    assert f"briefly trained on first use ({DEMO_BUILD}" in " ".join(README.split())  # what `tuner run` says
