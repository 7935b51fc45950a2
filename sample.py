#!/usr/bin/env python
"""Class-conditional batch sampling for FID: ``accelerate launch sample.py --ckpt PATH --out DIR``.

See ``python sample.py --help`` and :mod:`vca_gen.sample`.
"""

import sys

from vca_gen.sample.cli import main

if __name__ == "__main__":
    sys.exit(main())
