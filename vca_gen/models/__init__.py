"""DiT / SiT backbones with MHSA, VCA or DIFF attention.

>>> from vca_gen.models import create_model
>>> model = create_model("DiT-S/2", attention="vca", input_size=32)
"""

from vca_gen.models.attention import ATTENTION_KINDS, attention_options, build_attention
from vca_gen.models.dit import DiT, DiTBlock, FinalLayer
from vca_gen.models.official import (
    CheckpointInfo,
    MatchReport,
    OfficialCheckpointError,
    diagnose_mismatch,
    explain_mismatch,
    infer_architecture,
    infer_learn_sigma,
    infer_num_classes,
    load_matching,
    load_official_checkpoint,
    official_state_dict,
    read_checkpoint_file,
)
from vca_gen.models.registry import SIZES, create_model, list_models, parse_model_name

__all__ = [
    "ATTENTION_KINDS",
    "CheckpointInfo",
    "DiT",
    "DiTBlock",
    "FinalLayer",
    "MatchReport",
    "OfficialCheckpointError",
    "SIZES",
    "attention_options",
    "build_attention",
    "create_model",
    "diagnose_mismatch",
    "explain_mismatch",
    "infer_architecture",
    "infer_learn_sigma",
    "infer_num_classes",
    "list_models",
    "load_matching",
    "load_official_checkpoint",
    "official_state_dict",
    "parse_model_name",
    "read_checkpoint_file",
]
