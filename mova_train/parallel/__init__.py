"""Model parallelism helpers that use plain ``torch.distributed`` (no Lightning)."""

from mova_train.parallel.context_parallel import (
    AUDIO_MODES,
    ContextParallel,
    GatheredKeysAttention,
    SequenceSharding,
    UlyssesAttention,
    allowed_cp_sizes,
    apply_context_parallel,
    build_cp_group,
    check_head_divisibility,
    gather_sequence,
    resolve_audio_mode,
    shard_sequence,
)

__all__ = [
    "AUDIO_MODES",
    "ContextParallel",
    "GatheredKeysAttention",
    "SequenceSharding",
    "UlyssesAttention",
    "allowed_cp_sizes",
    "apply_context_parallel",
    "build_cp_group",
    "check_head_divisibility",
    "gather_sequence",
    "resolve_audio_mode",
    "shard_sequence",
]
