"""`LoraExport`: what a run trained, written where inference tools can load it.

Every ``every_n_steps`` optimizer steps (0: never) and at the end of fit it writes into ``dirpath``:

* ``lora.safetensors`` (our format, ``mova_train.models.lora_file``) when the run trains LoRA, with metadata:
  groups, trained experts and timestep range, ``init_from`` lineage, base fingerprints, checksums;
* ``components/<name>/`` for every fully fine-tuned component (``module.full_finetune``): a release-layout
  component folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) that predict loads with
  ``model.components={<name>: <folder>}``; ``lora.safetensors`` then lists it in its ``full_finetune`` metadata
  and predict loads it together with the LoRA, so the file never silently lacks the fully trained weights;
* one output per extra format named in ``formats``: ``writers`` maps a name to a callable
  ``writer(folder, export: LoraExportData) -> list[Path]`` (``conf/callbacks/default.yaml`` lists them as
  ``_partial_`` targets, e.g. ``upstream``: ``mova_train.models.lora_upstream.write_upstream``).

Sharded models: the tensors are gathered on every rank (FSDP2 ``DTensor`` shards are all-gathered, a
collective), rank 0 writes, and the ranks meet at a barrier afterwards.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from mova_train.callbacks.ema import ema_swapped
from mova_train.models.checkpoint import save_component
from mova_train.models.lora import EXPERTS, lora_state_dict, trainable_state_dict
from mova_train.models.lora_file import LoraExportData, build_meta, save_lora

log = logging.getLogger(__name__)

__all__ = ["LoraExport", "run_provenance"]

Writer = Callable[[Path, LoraExportData], Sequence[Path]]


def run_provenance(pl_module: LightningModule) -> tuple[list[str], list[float]]:
    """The video experts a run trains and the ``[t_min, t_max]`` range its steps draw (default: both, 0-1000).

    Read from the module's objective (``selector.experts`` / ``selector.range_of`` and the scheduler grid).
    """
    model = pl_module.model
    loaded = [e for e in EXPERTS if getattr(model, e, None) is not None]
    objective = getattr(pl_module, "objective", None)
    selector = getattr(objective, "selector", None)
    if selector is None:
        return loaded, [0.0, 1000.0]
    experts = [e for e in selector.experts if e in loaded]
    n = int(objective.num_train)
    ts: list[float] = []
    for expert in experts:
        choice = selector.range_of(expert)
        lo, hi = int(n * choice.low), int(n * choice.high) - 1
        sig = objective.scheduler.train_sigmas[[lo, hi]].double() * n
        ts += [float(sig.min()), float(sig.max())]
    return experts, [round(min(ts), 3), round(max(ts), 3)]


class LoraExport(Callback):
    """Write the LoRA (and fully fine-tuned components) every ``every_n_steps`` steps and at the end of fit.

    Args:
        dirpath: output folder.
        every_n_steps: export period in optimizer steps (0: only at the end).
        keep_history: write each export to ``step-XXXXXXXX/`` instead of overwriting ``dirpath``.
        use_ema: export the EMA weights when the module keeps an EMA.
        formats: names of ``writers`` to run besides ``lora.safetensors`` (e.g. ``[upstream]``).
        writers: name -> writer (see the module docstring).
    """

    def __init__(
        self,
        dirpath: str | Path,
        every_n_steps: int = 0,
        keep_history: bool = False,
        use_ema: bool = False,
        formats: Sequence[str] = (),
        writers: Mapping[str, Writer] | None = None,
    ) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_steps = int(every_n_steps)
        self.keep_history = keep_history
        self.use_ema = use_ema
        self.writers = dict(writers or {})
        unknown = [f for f in formats if f not in self.writers or self.writers[f] is None]
        if unknown:
            raise ValueError(
                f"callbacks.lora_export.formats: {unknown} have no writer; known: {sorted(self.writers)} "
                f"(add one under callbacks.lora_export.writers)"
            )
        self.formats = list(formats)
        self._last_exported = -1
        self.written: list[Path] = []

    def folder_for(self, step: int) -> Path:
        """Where the export of optimizer step ``step`` goes."""
        return self.dirpath / f"step-{step:08d}" if self.keep_history else self.dirpath

    def export(self, trainer: Trainer, pl_module: LightningModule) -> Path | None:
        """Gather (all ranks) and write (rank 0) now; returns the folder (None when nothing trains)."""
        spec = getattr(pl_module, "lora", None)
        full = list(getattr(pl_module, "full_finetune", []) or [])
        if spec is None and not full:
            log.warning("LoraExport: the module trains neither LoRA nor full components; nothing exported")
            return None
        model = pl_module.model
        swap = ema_swapped(pl_module) if self.use_ema else contextlib.nullcontext()
        with swap:  # collectives: every rank gathers the same tensors in the same order
            tensors = lora_state_dict(model) if spec is not None else {}
            components = {c: trainable_state_dict(model, c) for c in full}
        folder = self.folder_for(trainer.global_step)
        if trainer.is_global_zero:
            self.written = self._write(folder, pl_module, tensors, components)
            log.info(
                "exported to %s (step %d): %s", folder, trainer.global_step, [p.name for p in self.written]
            )
        trainer.strategy.barrier("lora_export")
        self._last_exported = trainer.global_step
        return folder

    def _write(
        self, folder: Path, pl_module: LightningModule, tensors: dict[str, Any], components: dict[str, Any]
    ) -> list[Path]:
        spec, model = pl_module.lora, pl_module.model
        written: list[Path] = []
        configs = {c: getattr(getattr(model, c), "config") for c in components}
        for comp, state in components.items():
            written.append(
                save_component(None, folder / "components", comp, config=configs[comp], state=state)
            )
        meta = None
        if spec is not None:
            experts, timesteps = run_provenance(pl_module)
            meta = build_meta(
                tensors,
                spec,
                base_fingerprint=pl_module.base_fingerprint,
                base_fingerprints=getattr(pl_module, "base_fingerprints", None),
                experts=experts,
                timesteps=timesteps,
                full_finetune={c: f"components/{c}" for c in components},
            )
            written.append(save_lora(folder / "lora.safetensors", tensors, spec, meta=meta))
        export = LoraExportData(tensors, spec, meta, components, configs)
        for name in self.formats:
            written += list(self.writers[name](folder, export))
        return written

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Exports every ``every_n_steps`` optimizer steps (once per step)."""
        step = trainer.global_step
        if (
            self.every_n_steps > 0
            and step > 0
            and step % self.every_n_steps == 0
            and step != self._last_exported
        ):
            self.export(trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Exports the final weights unless this step was already exported."""
        if trainer.global_step != self._last_exported:
            self.export(trainer, pl_module)
