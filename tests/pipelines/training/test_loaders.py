"""Index-slicing loaders: every row once per epoch, grouped minibatches equal to gathering each one on its own."""

import torch

from pipelines.training.loaders import IndexBatches, MinibatchGroup, TensorTable


def _table(rows: int = 103) -> TensorTable:
    x = torch.arange(rows * 3, dtype=torch.float32).reshape(rows, 3)
    return TensorTable(x, x[:, 0] * 10)


def test_grouped_minibatches_are_the_rows_of_their_indices():
    table = _table()
    sampler = IndexBatches(len(table), 8, shuffle=True, seed=3, group=5)
    seen = []
    for indices in sampler:
        group = table[indices]
        assert isinstance(group, MinibatchGroup)
        batches = list(group)
        assert len(batches) == len(indices) <= 5
        for index, (xb, yb) in zip(indices, batches):
            assert torch.equal(xb, table.x[index])
            assert torch.equal(yb, table.y[index])
            seen.append(index)
    order = torch.cat(seen)
    assert sorted(order.tolist()) == list(range(len(table)))  # an epoch visits every row exactly once


def test_epochs_reshuffle_and_the_last_batch_is_short():
    table = _table()
    sampler = IndexBatches(len(table), 10, shuffle=True, seed=0)
    first, second = list(sampler), list(sampler)
    assert [len(b) for b in first] == [10] * 10 + [3]
    assert not torch.equal(torch.cat(first), torch.cat(second))
    xb, yb = table[first[0]]
    assert torch.equal(xb, table.x[first[0]]) and torch.equal(yb, table.y[first[0]])
