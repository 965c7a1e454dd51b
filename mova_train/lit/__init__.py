"""Lightning glue: the training module and optimizer/scheduler factories."""

from mova_train.lit.mova_module import MovaLitModule
from mova_train.lit.optim import build_param_groups, warmup_cosine, warmup_stable_decay

__all__ = ["MovaLitModule", "build_param_groups", "warmup_cosine", "warmup_stable_decay"]
