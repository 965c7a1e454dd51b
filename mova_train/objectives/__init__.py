"""Training objectives (pure tensor code): flow matching, timestep sampling, expert routing, conditioning modes."""

from mova_train.objectives.flow_matching import (
    EXPERT_MODES,
    ExpertChoice,
    ExpertSelector,
    FlowMatchingObjective,
    LossOutput,
    TimestepSampler,
    add_noise,
    caption_dropout,
    masked_mse,
    sample_timestep_indices,
    velocity_target,
)
from mova_train.objectives.modes import CONDITIONING_MODES, ModeMix, no_frame_condition

__all__ = [
    "CONDITIONING_MODES",
    "EXPERT_MODES",
    "ExpertChoice",
    "ExpertSelector",
    "FlowMatchingObjective",
    "LossOutput",
    "ModeMix",
    "TimestepSampler",
    "add_noise",
    "caption_dropout",
    "masked_mse",
    "no_frame_condition",
    "sample_timestep_indices",
    "velocity_target",
]
