"""The amortization-gap measurements keep to their share of the training time: checked on a clock the test moves,
so that the schedule, not the machine's speed, decides what is measured."""

from types import SimpleNamespace

import pytest
import torch

from models.vae import VariationalAutoencoder
from pipelines.config.schema import AmortizationConfig
from pipelines.diagnostics import amortization
from pipelines.diagnostics.amortization import AmortizationDiagnostics

BATCH_SECONDS = 0.1  # training time between two batch ends
VALIDATE_EVERY = 5  # batches
BATCHES = 400  # in the whole fit
BUDGET = 0.10  # the share of the elapsed fit the measurements may take


class Clock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def run(monkeypatch, measure_seconds: float):
    """A fit of :data:`BATCHES` batches with a validation every :data:`VALIDATE_EVERY`; each gap measurement (the real
    one, on a small VAE) advances the clock by ``measure_seconds``. Returns the callback and the fit's seconds."""
    clock = Clock()
    monkeypatch.setattr(amortization, "time", clock)
    real = amortization.amortization_gaps

    def timed_gaps(*args, **kwargs):
        clock.now += measure_seconds
        return real(*args, **kwargs)

    monkeypatch.setattr(amortization, "amortization_gaps", timed_gaps)
    torch.manual_seed(0)
    model = VariationalAutoencoder(6, 2, encoder_hidden=[8], decoder_hidden=[8])
    rows = torch.randint(0, 17, (4, 6)).float()
    settings = AmortizationConfig(subsample=4, refine_steps=2, log_marginal_samples=4, every_n_validations=1)
    gaps = AmortizationDiagnostics(rows, settings, every_n_validations=1, budget=BUDGET)
    trainer = SimpleNamespace(sanity_checking=False, global_step=0, logger=None)
    module = SimpleNamespace(model=model, device=torch.device("cpu"))
    gaps.on_train_start(trainer, module)
    for batch in range(1, BATCHES + 1):
        clock.now += BATCH_SECONDS
        trainer.global_step = batch
        if batch % VALIDATE_EVERY == 0:
            gaps.on_validation_end(trainer, module)
        gaps.on_train_batch_end(trainer, module, None, None, batch)
    return gaps, clock.now


def test_cheap_measurements_follow_every_validation(monkeypatch):
    gaps, _ = run(monkeypatch, measure_seconds=0.001)
    assert [step for step, _ in gaps.history] == list(range(VALIDATE_EVERY, BATCHES + 1, VALIDATE_EVERY))
    assert all(set(values) >= {"amortization/amortization_gap", "amortization/approximation_gap"}
               for _, values in gaps.history)


@pytest.mark.parametrize("measure_seconds", [0.2, 1.0])
def test_costly_measurements_are_spaced_to_stay_within_the_budget(monkeypatch, measure_seconds):
    gaps, fit_seconds = run(monkeypatch, measure_seconds=measure_seconds)
    steps = [step for step, _ in gaps.history]
    assert steps[0] == VALIDATE_EVERY  # the first validation is always measured: its cost is not known before
    assert len(steps) >= 2 and len(steps) < BATCHES // VALIDATE_EVERY  # measured over training, but not every time
    # Each later measurement started only if the time spent measuring, with it, stayed within the budget's share
    # of the elapsed time: the whole fit is within the budget.
    assert gaps.seconds == pytest.approx(measure_seconds * len(steps))
    assert gaps.seconds <= BUDGET * fit_seconds
    # As dense as the budget allows: what is left of it at the end is less than one measurement, plus the budget
    # that the last stretch between two validations earned.
    assert gaps.seconds + measure_seconds > BUDGET * (fit_seconds - VALIDATE_EVERY * BATCH_SECONDS) - 1e-9
