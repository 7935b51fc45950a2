#!/usr/bin/env python
"""Train DiT / SiT with MHSA, VCA or DIFF attention: ``python train.py --help`` (vca_gen/train/cli.py)."""

import sys

from vca_gen.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
