"""SiT's interpolant transport: paths, predictions, losses, ODE / SDE samplers (t = 0 noise, t = 1 data)."""

from vca_gen.objectives.flow.objective import FlowObjective, flow_samplers
from vca_gen.objectives.flow.path import PATHS, PREDICTIONS, GVPPath, LinearPath, Path, VPPath, make_path
from vca_gen.objectives.flow.samplers import ADAPTIVE_METHODS
from vca_gen.objectives.flow.sde import DIFFUSION_FORMS, LAST_STEPS, diffusion_coefficient
from vca_gen.objectives.flow.transport import LOSS_WEIGHTS, Transport, default_eps

__all__ = [
    "FlowObjective",
    "flow_samplers",
    "Path",
    "LinearPath",
    "GVPPath",
    "VPPath",
    "make_path",
    "PATHS",
    "PREDICTIONS",
    "ADAPTIVE_METHODS",
    "DIFFUSION_FORMS",
    "LAST_STEPS",
    "diffusion_coefficient",
    "Transport",
    "LOSS_WEIGHTS",
    "default_eps",
]
