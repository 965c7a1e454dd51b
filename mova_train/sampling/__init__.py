"""Sampling: the pure MOVA sampler (Euler + CFG over the dual-tower denoiser)."""

from mova_train.sampling.sampler import SampleResult, StepTrace, first_frame_condition, sample

__all__ = ["SampleResult", "StepTrace", "first_frame_condition", "sample"]
