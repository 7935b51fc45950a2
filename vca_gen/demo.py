"""``python -m vca_gen.demo``: entry point of the demo app (:mod:`vca_gen.apps.demo`)."""

import sys

from vca_gen.apps.demo import main

if __name__ == "__main__":
    sys.exit(main())
