"""Noise schedulers: the flow-matching pair scheduler of the release (`FlowMatchPairScheduler` upstream)."""

from mova_train.schedulers.flow_match import FlowMatchScheduler, SchedulerConfig

__all__ = ["FlowMatchScheduler", "SchedulerConfig"]
