"""Sweeps: variants × seeds of one experiment, each cell trained, sampled and scored through the
project's own commands (``train.py``, ``sample.py``, ``evaluate_fid.py``), aggregated over seeds
with confidence intervals (``sweep.py``; the sweep file format is described in :mod:`.spec`).

- :mod:`.spec`       the sweep file: its keys, loaded with duplicate keys refused
- :mod:`.plan`       validation before anything runs (every cell's experiment composed), hashes, cell plans
- :mod:`.cells`      one cell's stages (train → sample per checkpoint → score), cached and resumable
- :mod:`.reference`  the reference statistics of a sweep (a file, or a recipe computed once)
- :mod:`.execute`    running the cells: local (a pool of ``parallel`` cells) or a submitit job array
- :mod:`.status`     the table of `sweep.py status`
- :mod:`.aggregate`  mean ± std, Student-t intervals, paired differences to the baseline
- :mod:`.report`     ``results.json``, ``report.md`` and the PNGs
- :mod:`.cli`        ``sweep.py run | status | report``
"""
