"""Conditioning modes of training: which stream is generated, which is given, and what the first frame says.

| mode | video stream | audio stream | first-frame channels ``y`` |
| --- | --- | --- | --- |
| ``i2av`` (release) | noised, trained | noised, trained | mask 1 on latent frame 0 + latent of [frame 0, zeros] |
| ``t2av`` | noised, trained | noised, trained | **no frame**: mask 0 everywhere + latent of an all-zero clip |
| ``a2v`` (lip sync) | noised, trained | **clean, t = 0**, no loss | first frame, or no frame (``a2v_first_frame``) |
| ``v2a`` (Foley) | **clean, t = 0**, no loss | noised, trained | first frame |

``objective.mode`` is one name or a mix ``{i2av: 0.5, t2av: 0.3, a2v: 0.1, v2a: 0.1}`` drawn per sample from
the step's generator (so a resumed run draws the same modes). A single mode draws nothing: an ``i2av`` run
consumes exactly the random numbers it did before modes existed.

Expert routing follows the video timestep. A ``v2a`` sample has its video at t = 0, which belongs to the
low-noise expert (``video_dit_2``), so it can only appear in a step that runs that expert (one expert per
forward, as before). To keep the requested mix exact, the step's expert and the per-sample draw are coupled:
with ``by_timestep`` routing the high-noise expert is picked with probability ``boundary * (1 - q)`` (q = the
v2a share) and in low-noise steps a sample is ``v2a`` with probability ``q / P(low-noise step)``; every other
mode keeps its share and its video timesteps stay uniform over the grid. ``alternate`` routing gives half the
steps to each expert, so it admits a v2a share of at most 0.5 (or exactly 1: then only the low-noise expert
runs).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = [
    "CONDITIONING_MODES",
    "MASK_CHANNELS",
    "ModeMix",
    "TRAINED_STREAMS",
    "no_frame_condition",
]

CONDITIONING_MODES = ("i2av", "t2av", "a2v", "v2a")
TRAINED_STREAMS: dict[str, tuple[str, ...]] = {
    "i2av": ("video", "audio"),
    "t2av": ("video", "audio"),
    "a2v": ("video",),
    "v2a": ("audio",),
}
MASK_CHANNELS = 4


def no_frame_condition(empty_latents: torch.Tensor) -> torch.Tensor:
    """The "no frame" conditioning of t2av: all mask channels 0, then the latent of an empty clip.

    Args:
        empty_latents: ``[B, z, T', H', W']`` normalized VAE latent of an all-zero video of the clip's size.

    Returns:
        ``y [B, 4 + z, T', H', W']`` (mask channels exactly 0).
    """
    if empty_latents.dim() != 5:
        raise ValueError(f"empty_latents must be [B, z, T', H', W'], got shape {tuple(empty_latents.shape)}")
    mask = empty_latents.new_zeros(empty_latents.shape[0], MASK_CHANNELS, *empty_latents.shape[2:])
    return torch.cat([mask, empty_latents], dim=1)


def _uniform(batch: int, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(batch, generator=generator, dtype=torch.float64, device=device)


class ModeMix:
    """The conditioning modes of a run and their per-sample probabilities.

    Args:
        mode: one of :data:`CONDITIONING_MODES`, or a mapping ``{mode: probability}`` (probabilities >= 0
            summing to 1; zero entries are dropped).
        a2v_first_frame: share of ``a2v`` samples that keep their first-frame condition; the others get the
            no-frame condition, so audio-driven video works from an image or from the text alone.
    """

    def __init__(self, mode: str | Mapping[str, float] = "i2av", a2v_first_frame: float = 0.5) -> None:
        if isinstance(mode, str):
            probs = {mode: 1.0}
        elif isinstance(mode, Mapping):
            probs = {str(k): float(v) for k, v in mode.items()}
        else:
            raise ValueError(
                f"objective.mode must be a mode name or a mapping {{mode: probability}}, got {mode!r}"
            )
        unknown = sorted(set(probs) - set(CONDITIONING_MODES))
        if unknown:
            raise ValueError(f"objective.mode: unknown mode(s) {unknown}; use {list(CONDITIONING_MODES)}")
        if any(p < 0 for p in probs.values()) or abs(sum(probs.values()) - 1.0) > 1e-6:
            raise ValueError(f"objective.mode probabilities must be >= 0 and sum to 1, got {probs}")
        if not 0.0 <= a2v_first_frame <= 1.0:
            raise ValueError(f"objective.a2v_first_frame must be in [0, 1], got {a2v_first_frame}")
        self.probs = {m: probs[m] for m in CONDITIONING_MODES if probs.get(m, 0.0) > 0.0}
        self.a2v_first_frame = float(a2v_first_frame)

    def __repr__(self) -> str:
        return f"ModeMix({self.probs}, a2v_first_frame={self.a2v_first_frame})"

    @property
    def modes(self) -> tuple[str, ...]:
        """Modes with a positive probability, in :data:`CONDITIONING_MODES` order."""
        return tuple(self.probs)

    @property
    def single(self) -> str | None:
        """The mode when only one is trained (nothing is drawn), else None."""
        return self.modes[0] if len(self.probs) == 1 else None

    @property
    def v2a_share(self) -> float:
        """Probability of ``v2a`` (samples that need the low-noise expert)."""
        return self.probs.get("v2a", 0.0)

    @property
    def uses_no_frame(self) -> bool:
        """Whether some sample can get the no-frame condition (t2av, or a2v without its first frame)."""
        return "t2av" in self.probs or ("a2v" in self.probs and self.a2v_first_frame < 1.0)

    def trains(self, stream: str) -> bool:
        """Whether any mode of the mix puts a loss on ``stream`` (``"video"`` or ``"audio"``)."""
        return any(stream in TRAINED_STREAMS[m] for m in self.probs)

    def draw(
        self, batch: int, generator: torch.Generator | None, low_noise_step: bool, low_share: float
    ) -> torch.Tensor:
        """Per-sample mode indices (into :data:`CONDITIONING_MODES`) for one step.

        Args:
            batch: number of samples B.
            generator: the step's generator (not touched for a single mode).
            low_noise_step: whether this step runs the low-noise expert (v2a is only drawn then).
            low_share: probability that a step runs the low-noise expert (see the module docstring).

        Returns:
            int64 ``[B]`` on the generator's device (CPU for None).
        """
        device = generator.device if generator is not None else torch.device("cpu")
        if self.single is not None:
            return torch.full(
                (batch,), CONDITIONING_MODES.index(self.single), dtype=torch.long, device=device
            )
        q = self.v2a_share
        probs = dict(self.probs)
        if q > 0.0:
            q_step = min(1.0, q / low_share) if low_noise_step else 0.0
            scale = (1.0 - q_step) / (1.0 - q) if q < 1.0 else 0.0
            probs = {m: (q_step if m == "v2a" else p * scale) for m, p in probs.items()}
        names = [m for m, p in probs.items() if p > 0.0]
        cum = torch.tensor([probs[m] for m in names], dtype=torch.float64, device=device).cumsum(0)
        pick = torch.searchsorted(cum / cum[-1], _uniform(batch, generator), right=True).clamp_(
            max=len(names) - 1
        )
        table = torch.tensor([CONDITIONING_MODES.index(m) for m in names], dtype=torch.long, device=device)
        return table[pick]
