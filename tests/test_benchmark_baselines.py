"""How the training benchmarks pick a baseline's thread count and report the spread of their rounds."""

from __future__ import annotations

import pytest
import torch

from benchmarks.baselines import at_best_threads, at_each_thread_count, paired_ratios


def test_the_thread_count_is_chosen_on_medians_not_on_the_better_draw_of_each_round():
    # One thread is steadily at 100; two threads once had a lucky round. Taking the faster count round by round
    # would give [100, 200, 100] and a median of 100 from draws that favour the baseline; the medians pick one thread.
    rounds = [{1: 100.0, 2: 90.0}, {1: 100.0, 2: 200.0}, {1: 100.0, 2: 95.0}]
    assert at_best_threads(rounds) == (1, [100.0, 100.0, 100.0])
    rounds = [{1: 80.0, 2: 90.0}, {1: 100.0, 2: 95.0}, {1: 85.0, 2: 92.0}]
    assert at_best_threads(rounds) == (2, [90.0, 95.0, 92.0])


def test_each_thread_count_is_run_and_the_process_count_restored():
    threads = torch.get_num_threads()
    seen = []
    rates = at_each_thread_count(lambda: seen.append(torch.get_num_threads()) or float(torch.get_num_threads()))
    assert sorted(rates) == sorted({1, threads}) == sorted(seen)
    assert all(rate == count for count, rate in rates.items())
    assert torch.get_num_threads() == threads


def test_paired_ratios_pair_each_round_with_its_own_baseline():
    assert paired_ratios([80.0, 45.0, 90.0], [100.0, 50.0, 100.0]) == pytest.approx((0.8, 0.9))
