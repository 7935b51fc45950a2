#!/usr/bin/env python
"""Class-conditional batch sampling for FID: ``accelerate launch sample.py --ckpt PATH --out DIR``.

See ``python sample.py --help`` and :mod:`vca_gen.sample`.
"""

if __name__ == "__main__":  # first: a SIGTERM while torch is imported exits 75 (re-run), not 143
    from vca_gen.utils.signals import install_early_stop_handlers

    install_early_stop_handlers("sample.py")

import sys  # noqa: E402

from vca_gen.sample.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
