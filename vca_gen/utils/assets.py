"""Where the offline assets (Animal-MNIST, Inception weights) and the packaged configs are found.

Assets live in ``$VCA_GEN_ASSETS`` when set, else ``./.assets`` when the current directory has one
(a checkout after ``make assets``), else the user cache (``$XDG_CACHE_HOME/vca_gen/assets``,
default ``~/.cache/vca_gen/assets``). ``scripts/fetch_assets.py`` writes to the same place.
Experiment configs ship inside the package (``vca_gen/configs``; ``configs/`` in a checkout is a
link to it), so an installed package finds them from any directory.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

ENV = "VCA_GEN_ASSETS"


def assets_dir() -> Path:
    """The asset folder (see the module docstring for the search order)."""
    env = os.environ.get(ENV)
    if env:
        return Path(env)
    local = Path.cwd() / ".assets"
    if local.is_dir():
        return local
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "vca_gen" / "assets"


def packaged_config(name: str) -> Path:
    """Path of a config shipped with the package, e.g. ``packaged_config("demo.yaml")``."""
    path = Path(str(resources.files("vca_gen") / "configs" / name))
    if not path.is_file():
        raise FileNotFoundError(f"no packaged config {name!r} under {path.parent}")
    return path
