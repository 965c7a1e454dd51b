"""The MOVA dual-tower denoiser: one video expert + the audio tower + the bridge, evaluated together."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from mova_train.models.audio_tower import AudioDiT
from mova_train.models.bridge import DualTowerBridge
from mova_train.models.video_tower import VideoDiT

__all__ = ["COMPONENTS", "EXPERTS", "HIGH_NOISE_EXPERT", "LOW_NOISE_EXPERT", "MovaDualTower"]

HIGH_NOISE_EXPERT = "video_dit"
"""The video expert of high noise levels (timesteps at or above the expert boundary, 900 in the release)."""
LOW_NOISE_EXPERT = "video_dit_2"
"""The video expert of low noise levels (below the boundary)."""
EXPERTS = (HIGH_NOISE_EXPERT, LOW_NOISE_EXPERT)
"""Both video experts, high noise first."""
COMPONENTS = (HIGH_NOISE_EXPERT, LOW_NOISE_EXPERT, "audio_dit", "dual_tower_bridge")
"""The denoiser's components: its child modules and the release folder's subfolders of the same names."""


class MovaDualTower(nn.Module):
    """Children are named like the checkpoint subfolders: ``video_dit``, ``video_dit_2``, ``audio_dit``,
    ``dual_tower_bridge``.

    Order of computation (release): patch-embed both streams; for each interaction layer ``i`` the bridge
    updates both streams (from the pre-update states), then video block ``i`` and audio block ``i`` run;
    the remaining blocks of the deeper tower run alone; then both heads.

    Args:
        video_dit: high-noise expert.
        audio_dit: audio tower.
        dual_tower_bridge: the bridge.
        video_dit_2: low-noise expert, or None for a single-expert model (e.g. training one expert only).
    """

    def __init__(
        self,
        video_dit: VideoDiT,
        audio_dit: AudioDiT,
        dual_tower_bridge: DualTowerBridge,
        video_dit_2: VideoDiT | None = None,
    ) -> None:
        super().__init__()
        self.video_dit = video_dit
        self.video_dit_2 = video_dit_2
        self.audio_dit = audio_dit
        self.dual_tower_bridge = dual_tower_bridge
        self.gradient_checkpointing = False
        # Context parallelism hook (``mova_train.parallel.apply_context_parallel``); None = whole sequences.
        # Duck-typed: ``shard_stream(tokens, freqs, stream)``, ``shard_bridge_rope(rope)``,
        # ``gather(x, n, stream)`` with ``stream`` "video" or "audio" (a stream may stay whole on every rank).
        self.sequence_parallel = None

    @property
    def block_classes(self) -> tuple[type[nn.Module], ...]:
        """Module classes that are FSDP / offload units (DiT blocks and bridge conditioners)."""
        # Either expert may be the loaded one (single-expert runs load only ``video_dit_2``). A property that
        # raised AttributeError here would read as "no block classes" through ``getattr(model, ..., ())``.
        tower = self.video_dit if self.video_dit is not None else self.video_dit_2
        return tower.block_classes + self.dual_tower_bridge.block_classes

    def expert(self, name: str) -> VideoDiT:
        """The video expert called ``name`` (``"video_dit"`` or ``"video_dit_2"``)."""
        if name not in EXPERTS:
            raise ValueError(f"unknown video expert {name!r}; expected one of {EXPERTS}")
        module = getattr(self, name)
        if module is None:
            raise ValueError(f"video expert {name!r} is not loaded in this model")
        return module

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each DiT block and bridge layer in the backward pass (non-reentrant)."""
        self.gradient_checkpointing = enabled

    def _run(self, fn, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(
        self,
        latents: torch.Tensor,
        y: torch.Tensor,
        audio_latents: torch.Tensor,
        context: torch.Tensor,
        timestep: torch.Tensor,
        audio_timestep: torch.Tensor,
        video_fps: float = 24.0,
        expert: str = "video_dit",
        use_bridge: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One denoiser evaluation.

        Args:
            latents: ``[B, C, T', H', W']`` noisy video latent.
            y: ``[B, 4 + C, T', H', W']`` mask (4 channels) + normalized first-frame condition latent.
            audio_latents: ``[B, Ca, L]`` noisy audio latent.
            context: ``[B, Lt, text_dim]`` text states (zero-padded rows are attended).
            timestep: ``[B]`` or ``[1]`` video time in [0, 1000].
            audio_timestep: ``[B]`` or ``[1]`` audio time in [0, 1000].
            video_fps: frame rate of the pixel video (sets the bridge's time alignment).
            expert: which video expert runs.
            use_bridge: False skips all bridge layers (used by dual guidance).

        Returns:
            ``(video_velocity [B, C, T', H', W'], audio_velocity [B, Ca, L])`` in the activation dtype.
        """
        vdit, adit, bridge = self.expert(expert), self.audio_dit, self.dual_tower_bridge
        # 1. Embed both streams.
        x = torch.cat([latents.to(y.dtype), y], dim=1)
        v, grid = vdit.patchify(x)
        a = adit.patchify(audio_latents)
        batch = v.shape[0]
        v_emb, v_mod = vdit.time_embed(timestep, batch)
        a_emb, a_mod = adit.time_embed(audio_timestep, batch)
        v_ctx = vdit.embed_text(context)
        a_ctx = adit.embed_text(context)
        v_freqs = vdit.rope_freqs(grid, v.device)
        a_freqs = adit.rope_freqs(a.shape[1], a.device)
        rope = bridge.rope(grid, a.shape[1], video_fps, v.dtype, v.device) if use_bridge else None
        # Context parallelism: keep this rank's slice of each sequence (and of its RoPE tables).
        sp, len_v, len_a = self.sequence_parallel, v.shape[1], a.shape[1]
        v_mask = a_mask = None
        if sp is not None:
            v, v_freqs, v_mask = sp.shard_stream(v, v_freqs, "video")
            a, a_freqs, a_mask = sp.shard_stream(a, a_freqs, "audio")
            rope = sp.shard_bridge_rope(rope)
        # 2. Interleaved blocks: bridge layer i, then video block i and audio block i.
        n_video, n_audio = len(vdit.blocks), len(adit.blocks)
        for i in range(max(n_video, n_audio)):
            if use_bridge and i < bridge.num_layers:
                v, a = self._run(bridge, i, v, a, rope, 1.0, v_mask, a_mask)
            if i < n_video:
                v = self._run(vdit.blocks[i], v, v_ctx, v_mod, v_freqs, v_mask)
            if i < n_audio:
                a = self._run(adit.blocks[i], a, a_ctx, a_mod, a_freqs, a_mask)
        # 3. Heads (per token), then the whole sequences back on every context-parallel rank.
        v, a = vdit.head(v, v_emb), adit.head(a, a_emb)
        if sp is not None:
            v, a = sp.gather(v, len_v, "video"), sp.gather(a, len_a, "audio")
        video_velocity = vdit.unpatchify(v, grid)
        audio_velocity = adit.unpatchify(a)
        return video_velocity, audio_velocity
