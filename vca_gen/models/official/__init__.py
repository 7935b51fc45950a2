"""Official DiT / SiT checkpoints: reading them safely, explaining why one does not fit, loading.

Key names match :class:`vca_gen.models.dit.DiT` exactly, so an ``attention="mhsa"`` model loads
them with ``strict=True``. In reading order:

* :mod:`.files` -- :func:`read_checkpoint_file` → ``(state_dict, CheckpointInfo)`` (plain state dicts,
  training checkpoints, DDP / compile prefixes, ``.safetensors``; never unpickling code);
* :mod:`.architecture` -- :func:`infer_architecture`, :func:`infer_learn_sigma`,
  :func:`infer_num_classes` read a model's properties off a state dict;
* :mod:`.diagnosis` -- :func:`diagnose_mismatch` / :func:`explain_mismatch`: the message that names
  the key and the likely cause (one function per cause) when a file does not fit the model;
* :mod:`.loading` -- :func:`load_official_checkpoint` (exact; ``strict=False`` allows missing keys)
  and :func:`load_matching` (``train.py model.init_from=FILE``: copy every tensor that fits,
  report the rest in a :class:`MatchReport`).

Every user-fixable problem raises :class:`OfficialCheckpointError`.
"""

from vca_gen.models.official.architecture import infer_architecture, infer_learn_sigma, infer_num_classes
from vca_gen.models.official.diagnosis import diagnose_mismatch, explain_mismatch
from vca_gen.models.official.files import (
    CheckpointInfo,
    OfficialCheckpointError,
    official_state_dict,
    read_checkpoint_file,
)
from vca_gen.models.official.loading import MatchReport, load_matching, load_official_checkpoint

__all__ = [
    "CheckpointInfo",
    "MatchReport",
    "OfficialCheckpointError",
    "diagnose_mismatch",
    "explain_mismatch",
    "infer_architecture",
    "infer_learn_sigma",
    "infer_num_classes",
    "load_matching",
    "load_official_checkpoint",
    "official_state_dict",
    "read_checkpoint_file",
]
