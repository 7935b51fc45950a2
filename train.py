#!/usr/bin/env python
"""Train DiT / SiT with MHSA, VCA or DIFF attention: ``python train.py --help`` (vca_gen/train/cli.py)."""

import sys

if __name__ == "__main__":
    from vca_gen.utils.signals import install_early_stop_handlers

    install_early_stop_handlers("train.py")  # first: a stop while starting exits 75, nothing written

from vca_gen.train.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
