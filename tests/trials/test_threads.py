"""The thread count torch gets when num_threads is empty: the rule, and what the engine sets."""

from __future__ import annotations

import pytest
import torch

from trials import PPOConfig, PPOTrainer, reserved_threads


@pytest.mark.parametrize(("cpus", "expected"), [(1.0, 1), (2.0, 2), (2.5, 2), (0.5, 1), (16.0, 16)])
def test_a_reservation_gives_its_whole_cpus(cpus, expected):
    assert reserved_threads(cpus, available=64, load=60.0) == expected


@pytest.mark.parametrize(("available", "load", "expected"),
                         [(2, 0.1, 2), (2, 0.6, 1), (2, 1.7, 1), (2, 7.5, 1), (16, 0.0, 16), (16, 5.2, 11)])
def test_without_a_reservation_the_cores_not_already_busy(available, load, expected):
    assert reserved_threads(available=available, load=load) == expected


def test_the_engine_sets_the_rule_s_count_when_num_threads_is_empty(demo_model):
    torch.set_num_threads(5)  # not what the rule gives on any machine with fewer than 5 idle cores
    before = reserved_threads()
    PPOTrainer(PPOConfig(num_iterations=1, rollout_batch_size=8, mini_batch_size=8, device="cpu"))
    after = reserved_threads()  # the load average may move between the two reads
    assert torch.get_num_threads() in {before, after}, (torch.get_num_threads(), before, after)


def test_the_engine_sets_num_threads_when_given(demo_model):
    torch.set_num_threads(2)
    PPOTrainer(PPOConfig(num_iterations=1, rollout_batch_size=8, mini_batch_size=8, device="cpu", num_threads=1))
    assert torch.get_num_threads() == 1
