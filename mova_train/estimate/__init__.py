"""Analytic FLOP, parameter and memory estimates of MOVA training runs (no model allocation)."""

from mova_train.estimate.flops import (
    StepFlops,
    TokenCounts,
    sampling_step_flops,
    token_counts,
    training_step_flops,
)
from mova_train.estimate.memory import MemoryEstimate, estimate_memory
from mova_train.estimate.report import Estimate, estimate_run, format_estimate

__all__ = [
    "Estimate",
    "MemoryEstimate",
    "StepFlops",
    "TokenCounts",
    "estimate_memory",
    "estimate_run",
    "format_estimate",
    "sampling_step_flops",
    "token_counts",
    "training_step_flops",
]
