"""Flow-matching scheduler of MOVA (`FlowMatchPairScheduler` in the release, docs/model.md §1.8, §7.2, §8.2).

The scheduler owns three things:

* the 1000-entry **training grid** (`train_timesteps`, `train_sigmas`): shifted sigmas from 1 down to about
  0.0196; training draws an index into it, and the sampler's Euler step looks sigmas up in it;
* the N-step **inference grid** (`inference_grid`): the timesteps the model sees while sampling;
* the **Euler steps** (`euler_steps`): per step the sigma pair, the update factor ``sigma_to - sigma_from``
  and the video expert to run.

By default the Euler sigmas are looked up by nearest timestep in the training grid, as the released pipeline
does (bit-faithful with upstream and the golden data). ``exact_euler_steps=True`` uses the inference-grid
sigmas instead (docs/model.md §13.2 pitfall 5); the two agree whenever N divides ``num_train_timesteps`` with
``extra_one_step=True``.

All grids are computed in float32, as upstream does.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["EulerStep", "FlowMatchScheduler", "SchedulerConfig"]

HIGH_NOISE_EXPERT = "video_dit"
LOW_NOISE_EXPERT = "video_dit_2"


@dataclass
class SchedulerConfig:
    """Fields of the release's `scheduler/scheduler_config.json` (docs/model.md §1.8).

    Attributes:
        num_train_timesteps: Size of the training grid; timesteps are ``num_train_timesteps * sigma``.
        shift: Sigma shift ``shift * s / (1 + (shift - 1) * s)`` (5.0 in the release).
        sigma_max: Largest unshifted sigma.
        sigma_min: Smallest unshifted sigma (0.003 / 1.002).
        extra_one_step: Build N + 1 linspace points and drop the last (changes every grid).
        inverse_timesteps: Unsupported upstream option; must be False.
        reverse_sigmas: Unsupported upstream option; must be False.
        exponential_shift: Unsupported upstream option; must be False.
        exponential_shift_mu: Unsupported upstream option; must be None.
        shift_terminal: Unsupported upstream option; must be None.
    """

    num_train_timesteps: int = 1000
    shift: float = 5.0
    sigma_max: float = 1.0
    sigma_min: float = 0.003 / 1.002
    extra_one_step: bool = True
    inverse_timesteps: bool = False
    reverse_sigmas: bool = False
    exponential_shift: bool = False
    exponential_shift_mu: float | None = None
    shift_terminal: float | None = None

    def __post_init__(self) -> None:
        _check_supported(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "scheduler config") -> SchedulerConfig:
        """Build from a `scheduler_config.json` dict, ignoring unknown keys (``_class_name``, ...).

        Args:
            d: Parsed config.
            source: Where ``d`` came from (a file path), used in error messages.

        Raises:
            ValueError: On a setting this scheduler does not implement.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in names})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from err

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all fields (JSON-serializable)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EulerStep:
    """One sampling step: the model is evaluated at ``t_from``, then ``x <- x + v * euler_factor``.

    Attributes:
        index: Step number, 0-based.
        t_from: Inference-grid timestep the model sees at this step.
        t_to: Next inference-grid timestep, or None at the last step.
        sigma_from: Sigma the update starts from (training-grid lookup of ``t_from`` by default).
        sigma_to: Sigma the update ends at (lookup of ``t_to``; 0.0 after the last step).
        euler_factor: ``sigma_to - sigma_from`` computed in float32.
        train_index: Index of the training-grid timestep nearest to ``t_from``.
        expert: Video expert for this step, ``"video_dit"`` (high noise) or ``"video_dit_2"`` (low noise).
    """

    index: int
    t_from: float
    t_to: float | None
    sigma_from: float
    sigma_to: float
    euler_factor: float
    train_index: int
    expert: str


def _check_supported(cfg: SchedulerConfig) -> None:
    """Reject upstream options that this scheduler does not implement, rather than ignoring them."""
    unsupported = {
        "inverse_timesteps": (cfg.inverse_timesteps, False),
        "reverse_sigmas": (cfg.reverse_sigmas, False),
        "exponential_shift": (cfg.exponential_shift, False),
        "exponential_shift_mu": (cfg.exponential_shift_mu, None),
        "shift_terminal": (cfg.shift_terminal, None),
    }
    for name, (value, supported) in unsupported.items():
        if value != supported:
            raise ValueError(
                f"SchedulerConfig.{name}={value!r} is not supported (no released MOVA checkpoint uses it); "
                f"set {name} to {supported!r} in the scheduler config"
            )
    if cfg.num_train_timesteps < 2:
        raise ValueError(f"SchedulerConfig.num_train_timesteps must be >= 2, got {cfg.num_train_timesteps}")
    if cfg.shift <= 0:
        raise ValueError(f"SchedulerConfig.shift must be > 0, got {cfg.shift}")
    if not 0.0 <= cfg.sigma_min < cfg.sigma_max <= 1.0:
        raise ValueError(
            f"SchedulerConfig needs 0 <= sigma_min < sigma_max <= 1, got sigma_min={cfg.sigma_min}, "
            f"sigma_max={cfg.sigma_max}"
        )


class FlowMatchScheduler:
    """Shifted flow-matching sigma grids, Euler step factors and the expert switch.

    Args:
        cfg: Scheduler config (a `SchedulerConfig` or a raw `scheduler_config.json` dict).
        exact_euler_steps: Default for `euler_steps(exact=...)`: False (upstream-faithful training-grid
            lookup) or True (use the inference-grid sigmas in the update).

    Attributes:
        train_timesteps: float32 [num_train_timesteps], from 1000 down (about 19.64 for the release config).
        train_sigmas: float32 [num_train_timesteps], ``train_timesteps / num_train_timesteps``.
    """

    def __init__(self, cfg: SchedulerConfig | dict[str, Any] | None = None, exact_euler_steps: bool = False):
        if cfg is None:
            cfg = SchedulerConfig()
        elif isinstance(cfg, dict):
            cfg = SchedulerConfig.from_dict(cfg)
        _check_supported(cfg)
        self.cfg = cfg
        self.exact_euler_steps = exact_euler_steps
        self.train_timesteps, self.train_sigmas = self.inference_grid(cfg.num_train_timesteps)

    @property
    def num_train_timesteps(self) -> int:
        """Size of the training grid."""
        return self.cfg.num_train_timesteps

    def inference_grid(self, num_steps: int, shift: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The N-step grid (upstream `set_timesteps(num_steps)` with denoising strength 1).

        Args:
            num_steps: Number of sampling steps N (>= 1).
            shift: Override of `cfg.shift` for this grid only (the training grid used by the lookup is
                unchanged).

        Returns:
            (timesteps [N], sigmas [N]), float32, decreasing, starting at ``num_train_timesteps * sigma_max``.
        """
        if int(num_steps) != num_steps or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
        num_steps = int(num_steps)
        shift = self.cfg.shift if shift is None else float(shift)
        if shift <= 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        sigma_min, sigma_max = self.cfg.sigma_min, self.cfg.sigma_max
        sigma_start = sigma_min + (sigma_max - sigma_min)  # denoising strength 1.0, as upstream writes it
        if self.cfg.extra_one_step:
            base = torch.linspace(sigma_start, sigma_min, num_steps + 1, dtype=torch.float32)[:-1]
        else:
            base = torch.linspace(sigma_start, sigma_min, num_steps, dtype=torch.float32)
        sigmas = shift * base / (1 + (shift - 1) * base)
        timesteps = sigmas * self.cfg.num_train_timesteps
        return timesteps, sigmas

    def timestep_to_index(self, t: float | torch.Tensor) -> int | torch.Tensor:
        """Index of the nearest training-grid timestep (first one on ties).

        Args:
            t: A float, or a tensor of any shape.

        Returns:
            An int for a float input, else an int64 tensor of t's shape.
        """
        grid = self.train_timesteps
        if isinstance(t, torch.Tensor):
            tt = t.detach().to(device="cpu", dtype=torch.float32)
            idx = (grid.view(*([1] * tt.dim()), -1) - tt.unsqueeze(-1)).abs().argmin(dim=-1)
            return idx.to(t.device)
        return int((grid - float(t)).abs().argmin().item())

    def timestep_to_sigma(self, t: float | torch.Tensor) -> float | torch.Tensor:
        """Sigma of the nearest training-grid timestep (upstream `timestep_to_sigma`).

        Args:
            t: A float, or a tensor of any shape.

        Returns:
            A float for a float input, else a float32 tensor of t's shape on t's device.
        """
        idx = self.timestep_to_index(t)
        if isinstance(idx, torch.Tensor):
            return self.train_sigmas.to(idx.device)[idx]
        return float(self.train_sigmas[idx].item())

    def euler_steps(
        self,
        num_steps: int,
        boundary_timestep: float = 900.0,
        exact: bool | None = None,
        shift: float | None = None,
    ) -> list[EulerStep]:
        """Per-step sigma pairs, update factors and experts for an N-step sampling run.

        Args:
            num_steps: Number of sampling steps N.
            boundary_timestep: Expert switch: ``video_dit`` until the first step with ``t_from < boundary``,
                then ``video_dit_2`` for all remaining steps (900 = 0.9 * 1000 in the release).
            exact: True uses the inference-grid sigmas in the update; False the upstream nearest lookup in the
                training grid. None uses the scheduler's `exact_euler_steps`.
            shift: Optional shift override of the inference grid.

        Returns:
            N `EulerStep`s in sampling order.
        """
        exact = self.exact_euler_steps if exact is None else exact
        timesteps, sigmas = self.inference_grid(num_steps, shift=shift)
        if exact:
            sig_from = sigmas
        else:
            sig_from = self.train_sigmas[self.timestep_to_index(timesteps)]
        sig_to = torch.cat([sig_from[1:], torch.zeros(1, dtype=torch.float32)])
        factors = sig_to - sig_from  # float32
        indices = self.timestep_to_index(timesteps)
        steps: list[EulerStep] = []
        switched = False
        for i in range(num_steps):
            t_from = float(timesteps[i].item())
            switched = switched or t_from < boundary_timestep
            steps.append(
                EulerStep(
                    index=i,
                    t_from=t_from,
                    t_to=float(timesteps[i + 1].item()) if i + 1 < num_steps else None,
                    sigma_from=float(sig_from[i].item()),
                    sigma_to=float(sig_to[i].item()),
                    euler_factor=float(factors[i].item()),
                    train_index=int(indices[i].item()),
                    expert=LOW_NOISE_EXPERT if switched else HIGH_NOISE_EXPERT,
                )
            )
        return steps

    def training_boundary(self, boundary_timestep: float = 900.0) -> float:
        """Fraction of training-grid indices with timestep >= boundary (0.359 for the release config).

        Training indices ``[0, boundary * num_train_timesteps)`` belong to the high-noise expert
        ``video_dit``, the rest to ``video_dit_2`` (docs/model.md §7.3, after upstream PR #32).
        """
        count = int((self.train_timesteps >= boundary_timestep).sum().item())
        return count / self.cfg.num_train_timesteps

    def __repr__(self) -> str:
        return f"FlowMatchScheduler({self.cfg}, exact_euler_steps={self.exact_euler_steps})"
