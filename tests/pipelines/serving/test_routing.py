"""Canary routing (pipelines/serving/routing.py): deterministic, sticky per key, the share it was asked for, and a
ramp that only adds rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.serving.pyfunc import BadModelInput
from pipelines.serving.routing import route, row_share


def test_the_same_key_always_goes_to_the_same_version_whatever_else_is_in_the_request():
    keys = pd.DataFrame({"customer": [f"c{i}" for i in range(1000)]})
    first = route(keys, 0.3, "customer")
    shuffled = keys.sample(frac=1.0, random_state=0)
    again = pd.Series(route(shuffled, 0.3, "customer"), index=shuffled.index).sort_index().to_numpy()
    alone = np.array([route(keys.iloc[[i]], 0.3, "customer")[0] for i in range(0, 1000, 97)])
    assert (first == again).all() and (first[::97] == alone).all()


def test_the_candidate_gets_its_fraction_and_a_ramp_keeps_the_rows_it_had():
    keys = pd.DataFrame({"id": np.arange(100_000)})
    shares = {f: route(keys, f, "id") for f in (0.1, 0.5, 1.0)}
    for fraction, routed in shares.items():
        assert routed.mean() == pytest.approx(fraction, abs=0.005)  # binomial SD at 100k rows is <= 0.0016
    assert not (shares[0.1] & ~shares[0.5]).any() and shares[1.0].all()
    u = row_share(keys["id"])
    assert ((u >= 0) & (u < 1)).all() and abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02  # no order in the hash


def test_without_a_key_column_the_row_index_routes_and_a_missing_key_column_is_a_clear_error():
    frame = pd.DataFrame({"x": np.zeros(2000)}, index=np.arange(2000) + 10)
    assert (route(frame, 0.2) == route(frame.iloc[::-1], 0.2)[::-1]).all()
    with pytest.raises(BadModelInput, match="no routing key column 'customer'"):
        route(frame, 0.2, "customer")
