"""The end-of-training diagnostics on a large table use a bounded, seeded sample of its training rows."""

import torch

from pipelines.config.schema import TrainSettings
from pipelines.training.final_metrics import diagnostic_rows


def test_a_table_larger_than_diagnostic_rows_is_sampled_once_the_same_way_and_a_smaller_one_is_whole():
    x = torch.arange(5000.0).unsqueeze(1).repeat(1, 3)
    y = torch.arange(5000.0)
    settings = TrainSettings(diagnostic_rows=800, seed=3)
    xs, ys = diagnostic_rows((x, y), settings)
    assert xs.shape == (800, 3) and torch.equal(xs[:, 0], ys)  # rows stay paired with their targets
    assert len(ys.unique()) == 800 and torch.equal(ys, ys.sort().values)  # distinct rows, in table order
    assert 0 < ys.min() and ys.max() < 4999 and ys.mean().sub(2500).abs() < 300  # spread over the table
    again, _ = diagnostic_rows((x, y), settings)
    assert torch.equal(again, xs)
    other, _ = diagnostic_rows((x, y), TrainSettings(diagnostic_rows=800, seed=4))
    assert not torch.equal(other, xs)
    small_x, small_y = x[:800], y[:800]
    whole_x, whole_y = diagnostic_rows((small_x, small_y), settings)
    assert whole_x is small_x and whole_y is small_y  # a table within the bound is used as it is
