#!/usr/bin/env python
"""FID / sFID / KID / precision-recall of a sample set against a reference (see vca_gen.metrics.cli)."""

import sys

from vca_gen.metrics.cli import main

if __name__ == "__main__":
    sys.exit(main())
