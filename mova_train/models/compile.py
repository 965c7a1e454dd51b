"""Regional ``torch.compile``: each DiT block and bridge conditioner compiled on its own (``module.compile``).

Compiling the repeated units instead of the whole denoiser keeps compile time to one graph per *kind* of unit
(video block, audio block, the two bridge directions) per input shape: with the default inlining of
``nn.Module`` parameters, the 40 video blocks share one compiled graph. Shapes are static
(``dynamic=False``): every latent bucket compiles once, then reuses its graph; the recompile limit is raised to
cover a few buckets of every unit kind.

Plain PyTorch (no Lightning): :class:`~mova_train.lit.mova_module.MovaLitModule` calls :func:`compile_blocks`
after LoRA injection (``module.compile: blocks``), ``benchmarks/gpu_check.py`` calls it on a release-width
slice. Gradient checkpointing wraps the compiled units unchanged (the recomputation runs the compiled graph).
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

__all__ = ["COMPILE_MODES", "compile_blocks", "compiled_units"]

COMPILE_MODES = ("none", "blocks")
"""Values of ``module.compile``: ``none`` (eager) or ``blocks`` (regional compile of every unit)."""

RECOMPILE_LIMIT = 64
"""Graphs kept per code object: 4 unit kinds x a dozen buckets x train/eval, with room."""


def compiled_units(model: nn.Module) -> list[str]:
    """Names of the submodules of ``model`` that carry a regional ``torch.compile`` wrapper."""
    return [name for name, m in model.named_modules() if getattr(m, "_compiled_call_impl", None) is not None]


def compile_blocks(model: nn.Module, mode: str = "blocks", backend: str = "inductor") -> list[str]:
    """Compile each unit of ``model`` (instances of ``model.block_classes``) in place, static shapes.

    Args:
        model: a model exporting ``block_classes`` (``MovaDualTower``: ``DiTBlock`` and
            ``ConditionalCrossAttentionBlock``); LoRA must already be injected (compile sees the final graph).
        mode: ``"none"`` (no-op) or ``"blocks"``.
        backend: ``torch.compile`` backend (``"inductor"``; ``"aot_eager"`` to check tracing without codegen).

    Returns:
        The names of the compiled units (empty for ``mode="none"``).

    Raises:
        ValueError: unknown ``mode``, or a model without ``block_classes``, or units whose ``forward`` was
            replaced (the single-GPU block streamer swaps weights inside ``forward``; compile before is not
            supported, so the combination is refused).
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"module.compile={mode!r} unknown; choose one of {COMPILE_MODES}")
    if mode == "none":
        return []
    classes = tuple(getattr(model, "block_classes", ()))
    if not classes:
        raise ValueError(f"module.compile=blocks: {type(model).__name__} exports no block_classes to compile")
    names: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, classes) or any(name.startswith(n + ".") for n in names):
            continue
        if "forward" in module.__dict__:
            raise ValueError(
                f"module.compile=blocks: unit {name!r} has a replaced forward (block streaming of "
                "strategy=single_gpu_offload); use module.compile=none with that strategy"
            )
        module.compile(dynamic=False, backend=backend)
        names.append(name)
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = max(limit, RECOMPILE_LIMIT)
    log.info("module.compile=blocks: %d units compiled (backend %s, dynamic=False)", len(names), backend)
    return names
