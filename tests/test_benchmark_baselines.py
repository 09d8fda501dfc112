"""How the training benchmarks pick a baseline's thread count and report the spread of their rounds."""

from __future__ import annotations

import statistics

import pytest
import torch

from benchmarks.baselines import at_best_threads, at_each_thread_count, paired_ratios


def test_the_thread_count_is_chosen_on_medians_not_on_the_better_draw_of_each_round():
    # Both counts are noisy. The faster of each round would give [115, 120, 105], a median of 115 that neither count
    # reached on its own; the medians (100 on one thread, 105 on two) pick two threads and its own rounds.
    rounds = [{1: 100.0, 2: 115.0}, {1: 120.0, 2: 95.0}, {1: 90.0, 2: 105.0}]
    best, rates = at_best_threads(rounds)
    assert (best, rates) == (2, [115.0, 95.0, 105.0])
    assert statistics.median(rates) == 105.0
    rounds = [{1: 100.0, 2: 90.0}, {1: 100.0, 2: 200.0}, {1: 100.0, 2: 95.0}]  # one lucky round does not decide
    assert at_best_threads(rounds) == (1, [100.0, 100.0, 100.0])


def test_each_thread_count_is_run_and_the_process_count_restored():
    threads = torch.get_num_threads()
    seen = []
    rates = at_each_thread_count(lambda: seen.append(torch.get_num_threads()) or float(torch.get_num_threads()))
    assert sorted(rates) == sorted({1, threads}) == sorted(seen)
    assert all(rate == count for count, rate in rates.items())
    assert torch.get_num_threads() == threads


def test_paired_ratios_pair_each_round_with_its_own_baseline():
    assert paired_ratios([80.0, 45.0, 90.0], [100.0, 50.0, 100.0]) == pytest.approx((0.8, 0.9))
