"""Training minibatches of a streamed source (``data.streaming``): blocks of rows through a shuffle buffer.

Each epoch reads the training rows in blocks, in a fresh seeded order. The blocks come from the spill file that the
scan wrote (:mod:`pipelines.training.streaming`), or from the Parquet row groups again with ``spill: false``. Each
row then goes through a buffer of ``buffer_rows`` rows: it takes the place of a random buffered row, which leaves
towards a minibatch. A background thread does the reading and mixing while the model steps.
"""

from __future__ import annotations

import math
import queue
import threading

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from pipelines.training.loaders import steps_per_epoch

__all__ = ["StreamedBatches", "StreamedGroup"]

#: Minibatches (or groups of them) the background reader may be ahead of training.
PREFETCH = 8


class StreamedGroup(list):
    """Consecutive streamed minibatches ``(x, y)`` of one Lightning batch (``train.steps_per_batch > 1``)."""


def _as_is(batch):
    return batch


class StreamedBatches(IterableDataset):
    """The training split of a :class:`~pipelines.training.streaming.TrainStream` as minibatches ``(x, y)``:
    float32 features (standardised with ``stats``), float32 targets (standardised) or int64 class indices.

    An epoch yields every training row once, in ``ceil(N / batch_size)`` minibatches (grouped ``group`` at a time).
    """

    def __init__(self, stream, batch_size: int, *, buffer_rows: int, seed: int, stats: dict | None,
                 classify: bool, group: int = 1):
        self.stream, self.batch_size, self.buffer_rows, self.group = stream, batch_size, buffer_rows, group
        self.seed, self.classify, self.epoch = seed, classify, 0
        width = len(stream.columns)
        #: The standardisation, per column (features then target); class labels keep shift 0 and scale 1.
        self.shift, self.scale = torch.zeros(width, dtype=torch.float64), torch.ones(width, dtype=torch.float64)
        if stats is not None:
            self.shift[:-1] = torch.as_tensor(stats["feature_mean"], dtype=torch.float64)
            self.scale[:-1] = torch.as_tensor(stats["feature_scale"], dtype=torch.float64)
            if not classify:
                self.shift[-1], self.scale[-1] = stats["target_mean"], stats["target_scale"]

    def __len__(self) -> int:
        return math.ceil(steps_per_epoch(self.stream.train_rows, self.batch_size) / self.group)

    def _blocks(self, rng: np.random.Generator):
        """Standardised float32 blocks of training rows (features then target), in a fresh order."""
        for values, shift, scale in self.stream.train_blocks(rng):
            # values * scale + shift are the data: one affine map per column to the standardised units
            a = torch.as_tensor(scale, dtype=torch.float64) / self.scale
            b = (torch.as_tensor(shift, dtype=torch.float64) - self.shift) / self.scale
            block = torch.from_numpy(values)
            block = block.mul_(a.to(block.dtype)).add_(b.to(block.dtype)).to(torch.float32)
            if self.classify:
                block[:, -1].round_()
            yield block

    def _mixed(self, rng: np.random.Generator):
        """The rows of :meth:`_blocks` through the shuffle buffer, in chunks.

        Incoming rows replace buffered rows at slots taken in the order of a random permutation of the buffer (a
        fresh one each time it is used up); the rows they replace leave. A row thus waits a random time in the buffer
        and each chunk that leaves mixes rows of many blocks.
        """
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        buffer, slots, used = None, None, 0
        for block in self._blocks(rng):
            if buffer is None or len(buffer) < self.buffer_rows:  # still filling
                buffer = block if buffer is None else torch.cat([buffer, block])
                continue
            start = 0
            while start < len(block):
                if slots is None or used == len(buffer):
                    slots, used = torch.randperm(len(buffer), generator=generator), 0
                count = min(len(block) - start, len(buffer) - used)
                take = slots[used : used + count]
                used += count
                yield buffer.index_select(0, take)
                buffer.index_copy_(0, take, block[start : start + count])
                start += count
        if buffer is not None:
            yield buffer.index_select(0, torch.randperm(len(buffer), generator=generator))

    def _split(self, rows: torch.Tensor):
        y = rows[:, -1]
        return rows[:, :-1], (y.to(torch.int64) if self.classify else y)

    def _minibatches(self, epoch: int):
        rng = np.random.default_rng([self.seed, epoch])
        group, carry = StreamedGroup(), None
        for rows in self._mixed(rng):
            if carry is not None:
                rows = torch.cat([carry, rows])
            full = len(rows) - len(rows) % self.batch_size
            for start in range(0, full, self.batch_size):
                batch = self._split(rows[start : start + self.batch_size])
                if self.group == 1:
                    yield batch
                    continue
                group.append(batch)
                if len(group) == self.group:
                    yield group
                    group = StreamedGroup()
            carry = rows[full:] if full < len(rows) else None
        if carry is not None:
            group.append(self._split(carry))
        if group:
            yield from (group if self.group == 1 else [group])

    def __iter__(self):
        """The epoch's minibatches, read and mixed by a background thread up to ``PREFETCH`` ahead."""
        epoch, self.epoch = self.epoch, self.epoch + 1
        ready: queue.Queue = queue.Queue(maxsize=PREFETCH)
        stop = threading.Event()
        done = object()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce():
            try:
                for item in self._minibatches(epoch):
                    if not put(item):
                        return
                put(done)
            except BaseException as exc:  # handed to the training loop, which raises it
                put(exc)

        reader = threading.Thread(target=produce, name="viops-stream-reader", daemon=True)
        reader.start()
        try:
            while (item := ready.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            reader.join()

    def loader(self) -> DataLoader:
        return DataLoader(self, batch_size=None, num_workers=0, collate_fn=_as_is)
