"""Batch sampling: seeded, sharded, resumable, independent of process count (``sample.py``).

* :mod:`.plan`      labels (``i % num_classes``), seeds (``seed + i``), shards, batches
* :mod:`.engine`    the generation loop over shards (accelerate processes), resume, assembly
* :mod:`.files`     uint8 conversion, atomic shard files, streamed ``samples.npz``, PNGs
* :mod:`.manifest`  ``sampling.json`` and the settings check on resume
* :mod:`.grid`      the labelled sample grid
* :mod:`.model`     loading a checkpoint and turning model + objective + VAE into ``make_images``
* :mod:`.cli`       the ``sample.py`` command line
"""

from .engine import RunResult, RunSpec, run_sampling
from .files import to_uint8
from .plan import SamplingError, ShardPlan, check_num_samples, labels_for

__all__ = [
    "RunResult",
    "RunSpec",
    "run_sampling",
    "to_uint8",
    "SamplingError",
    "ShardPlan",
    "check_num_samples",
    "labels_for",
]
