"""tuner ui's link (the server and the page it opens are checked in a browser in tests/tuner/cli/test_ui.py)."""

from __future__ import annotations

from tuner._mlflow_ui import OPEN, open_link


def test_the_link_opens_the_page_through_the_open_page():
    page = "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=k"
    assert open_link(page) == f"http://127.0.0.1:5000{OPEN}#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=k"

