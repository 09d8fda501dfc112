"""Index-slicing loaders: every row once per pass, grouped minibatches equal to gathering each one on its own, several
passes per Lightning epoch on a small table, and Lightning batches that divide the validation interval."""

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


def test_a_lightning_epoch_of_several_passes_gives_the_same_minibatches_in_the_same_order():
    table = _table()
    one = IndexBatches(len(table), 10, shuffle=True, seed=5)
    four = IndexBatches(len(table), 10, shuffle=True, seed=5, group=7, passes=4)
    expected = [b for _ in range(8) for b in one]  # eight one-pass epochs
    grouped = [b for _ in range(2) for indices in four for b in indices]  # two four-pass epochs, 7 steps a batch
    assert len(four) == 7 and len(grouped) == len(expected) == 88  # ceil(4 passes x 11 minibatches / 7)
    assert all(torch.equal(a, b) for a, b in zip(grouped, expected))
    for start in range(0, 44, 11):  # each pass visits every row exactly once
        assert sorted(torch.cat(grouped[start : start + 11]).tolist()) == list(range(len(table)))


def test_passes_per_epoch_divide_the_epochs_and_fill_a_lightning_epoch():
    from pipelines.training.loaders import STEPS_PER_LIGHTNING_EPOCH, passes_per_epoch

    assert passes_per_epoch(5, 300) == 50  # the diabetes BNN: 5 steps a pass, 250 steps a Lightning epoch
    assert passes_per_epoch(10, 100) == 25 and passes_per_epoch(11, 30) == 15
    assert passes_per_epoch(5, 31) == 31 and passes_per_epoch(5, 53) == 1  # 53 passes exceed it; 53 is prime
    assert passes_per_epoch(200, 300) == 1 and passes_per_epoch(5, 300, world_size=2) == 1  # long passes; DDP
    for steps, epochs in ((1, 1000), (3, 7), (17, 120)):
        k = passes_per_epoch(steps, epochs)
        assert epochs % k == 0 and k * steps <= max(STEPS_PER_LIGHTNING_EPOCH, steps)


def test_lightning_batches_divide_an_epoch_and_short_runs_validate_twenty_times():
    from types import SimpleNamespace

    from pipelines.config.schema import TrainSettings
    from pipelines.training.fit import MIN_VALIDATIONS_PER_RUN, _plan_batches

    def plan(planned, per_epoch, passes, **settings):
        module = SimpleNamespace(planned_steps=planned, steps_per_epoch=per_epoch, passes_per_epoch=passes)
        stream = SimpleNamespace(group=None)
        interval = _plan_batches(module, TrainSettings(**settings), stream)
        assert stream.group == module.steps_per_batch  # a streamed source takes the same batches
        return module.steps_per_batch, interval

    assert plan(1500, 5, 50) == (25, 3)  # the diabetes BNN: 250-step epochs, a validation every 75 steps
    assert plan(6600, 11, 20) == (22, 15)  # 220-step epochs: every 330 steps
    assert plan(100_000, 400, 1) == (25, 20)  # a long run: every 500 steps
    assert plan(200, 10, 20) == (10, 1)  # an interval shorter than a full batch: one batch each
    assert plan(100_000, 401, 1) == (32, 15)  # 401 steps an epoch is prime: full batches, the last one short
    assert plan(1500, 5, 1, steps_per_batch=1, strategy="ddp", devices=2) == (1, 75)  # DDP: one step a batch
    for planned, per_epoch, passes in ((1500, 5, 50), (1000, 10, 25), (330, 11, 15), (700, 7, 1), (6600, 11, 20)):
        group, interval = plan(planned, per_epoch, passes)
        assert (per_epoch * passes) % group == 0 and planned // (group * interval) >= MIN_VALIDATIONS_PER_RUN
