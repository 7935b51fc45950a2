#!/usr/bin/env python
"""FID and the other registered metrics of a sample set against a reference (see vca_gen.metrics.cli)."""

import sys

from vca_gen.metrics.cli import main

if __name__ == "__main__":
    sys.exit(main())
