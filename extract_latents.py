"""Encode an image-folder tree into a latent store: see ``python extract_latents.py --help``.

Thin wrapper over :mod:`vca_gen.data.extract` (also ``python -m vca_gen.data.extract``); runs under
``accelerate launch`` for many processes.
"""

import sys

from vca_gen.data.extract import main

if __name__ == "__main__":
    sys.exit(main())
