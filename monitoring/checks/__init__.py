"""The window checks: what each compares a window with (the champion), how (one module per check, a spec plus a
calculation), and what it returns (:mod:`monitoring.checks.results`).

- ``config.py``: ``configs/monitoring.yaml``, one options object per check;
- ``champion.py``: the deployed version, its reference snapshot and held-out baselines, loaded once per run;
- ``inputs.py``: row counts and NaN/inf inputs (every row), and the rows the other checks read, prepared once;
- ``drift.py``: Evidently drift of features and predictions;
- ``calibration.py``: calibration on labelled rows;
- ``vi_health.py``: ELBO/NLL against the baseline, uncertainty shift, latency, amortization gap;
- ``results.py``: the frozen results, and the dotted indicator paths SLOs and gauges read.
"""
