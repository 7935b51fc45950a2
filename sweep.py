#!/usr/bin/env python
"""Sweeps of variants x seeds with confidence intervals: ``python sweep.py run|status|report FILE``.

    python sweep.py run configs/sweeps/toy_flow.yaml --dry-run     # every cell, stage and command
    python sweep.py run configs/sweeps/toy_flow.yaml               # train, sample, score; resumable
    python sweep.py status configs/sweeps/toy_flow.yaml            # cells x stages, failures
    python sweep.py report configs/sweeps/toy_flow.yaml            # results.json, report.md, PNGs

See ``python sweep.py --help``, :mod:`vca_gen.sweep.cli` and the sweep file format in
:mod:`vca_gen.sweep.spec`.
"""

import sys

from vca_gen.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main())
