"""Iterate averaging: the same running mean as torch's AveragedModel, checkpoints in its layout, no device count."""

from types import SimpleNamespace

import torch
from torch.optim.swa_utils import AveragedModel, get_swa_multi_avg_fn

from pipelines.training.averaging import IterateAveraging


class Family(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.loc = torch.nn.Parameter(torch.zeros(3))
        self.raw_scale = torch.nn.Parameter(torch.zeros(3))
        self.register_buffer("shift", torch.ones(3))


def _iterates(count: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(3, generator=g), torch.randn(3, generator=g)) for _ in range(count)]


def _set(family: Family, iterate) -> None:
    with torch.no_grad():
        family.loc.copy_(iterate[0])
        family.raw_scale.copy_(iterate[1])


def _start(averaging: IterateAveraging, family: Family, planned_steps: int) -> SimpleNamespace:
    module = SimpleNamespace(family=family, planned_steps=planned_steps)
    averaging.on_train_start(SimpleNamespace(estimated_stepping_batches=planned_steps), module)
    return module


def test_the_average_is_averagedmodels_over_the_thinned_window_and_replaces_the_parameters_at_the_end():
    family, oracle_family = Family(), Family()
    averaging = IterateAveraging(0.5)
    module = _start(averaging, family, planned_steps=200)
    assert (averaging.start_step, averaging.every) == (100, 2)
    oracle = AveragedModel(oracle_family, multi_avg_fn=get_swa_multi_avg_fn(), use_buffers=False)
    for step, iterate in enumerate(_iterates(200), start=1):
        _set(family, iterate)
        averaging.on_before_optimizer_step(SimpleNamespace(global_step=step), module, None)
        if step > 100 and (step - 100) % 2 == 0:
            _set(oracle_family, iterate)
            oracle.update_parameters(oracle_family)
    assert averaging.num_averaged == 50 == int(oracle.n_averaged)
    last = (torch.full((3,), 5.0), torch.full((3,), -5.0))
    _set(family, last)
    _set(oracle_family, last)
    oracle.update_parameters(oracle_family)
    averaging.on_train_end(None, module)
    torch.testing.assert_close(family.loc.detach(), oracle.module.loc.detach())
    torch.testing.assert_close(family.raw_scale.detach(), oracle.module.raw_scale.detach())
    assert not torch.equal(family.loc.detach(), last[0])


def test_a_checkpoint_in_averagedmodels_layout_resumes_the_same_average():
    iterates = _iterates(30, seed=1)
    oracle_family = Family()
    oracle = AveragedModel(oracle_family, multi_avg_fn=get_swa_multi_avg_fn(), use_buffers=False)
    for iterate in iterates[:20]:
        _set(oracle_family, iterate)
        oracle.update_parameters(oracle_family)
    # A checkpoint written by a run that averaged with AveragedModel, resumed by this callback (and the reverse).
    averaging = IterateAveraging(1.0)
    averaging.load_state_dict({"num_averaged": 20, "averaged": oracle.state_dict()})
    family = Family()
    module = _start(averaging, family, planned_steps=60)
    saved = averaging.state_dict()["averaged"]
    assert set(saved) == set(oracle.state_dict()) - {"module.shift"} and int(saved["n_averaged"]) == 20
    for iterate in iterates[20:]:
        _set(family, iterate)
        averaging._update(family)
        _set(oracle_family, iterate)
        oracle.update_parameters(oracle_family)
    torch.testing.assert_close(averaging.averaged["loc"], oracle.module.loc.detach())
    expected = torch.stack([loc for loc, _ in iterates]).mean(0)
    torch.testing.assert_close(averaging.averaged["loc"], expected)
    assert module.family is family
