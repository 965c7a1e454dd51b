"""Training objectives (pure tensor code): flow matching, timestep sampling, expert routing."""

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

__all__ = [
    "EXPERT_MODES",
    "ExpertChoice",
    "ExpertSelector",
    "FlowMatchingObjective",
    "LossOutput",
    "TimestepSampler",
    "add_noise",
    "caption_dropout",
    "masked_mse",
    "sample_timestep_indices",
    "velocity_target",
]
