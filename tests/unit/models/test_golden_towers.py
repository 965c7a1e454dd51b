"""Numerical parity with the original MOVA implementation (golden tensors, float32, exact attention).

Data-driven: configs, weights, inputs and expected tensors all come from the golden files.
"""

from __future__ import annotations

import pytest
import torch
from helpers.golden import Golden, Recorder, assert_close_all

from mova_train.models.audio_tower import AudioDiT
from mova_train.models.bridge import DualTowerBridge
from mova_train.models.configs import AudioDiTConfig, BridgeConfig, VideoDiTConfig
from mova_train.models.mova import MovaDualTower
from mova_train.models.video_tower import VideoDiT


def _load(module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    result = module.load_state_dict(weights, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


TOWERS = [("video_dit", VideoDiT, VideoDiTConfig), ("audio_dit", AudioDiT, AudioDiTConfig)]
PER_CALL = ("t_emb", "t_mod")  # the original embeds a shared ([1]) timestep once per call


def _check_tower(g: Golden, tower_cls, config_cls, groups: dict[str, dict[str, torch.Tensor]]) -> None:
    model = tower_cls(config_cls.from_dict(g.config)).eval()
    _load(model, g.weights())
    rec = Recorder()
    rec.watch_tower(model)
    inputs = groups["inputs"]
    with torch.no_grad():
        out = model(inputs["x"], inputs["timestep"], inputs["context"])
    assert_close_all(groups["outputs"], {"out": out})
    assert_close_all(groups["intermediates"], rec.values)


@pytest.mark.parametrize(("name", "tower_cls", "config_cls"), TOWERS)
def test_tower_matches_golden(golden_dir, name, tower_cls, config_cls):
    g = Golden(golden_dir, name)
    _check_tower(g, tower_cls, config_cls, {k: g.group(k) for k in ("inputs", "outputs", "intermediates")})


@pytest.mark.parametrize(("name", "tower_cls", "config_cls"), TOWERS)
def test_tower_matches_a_batched_golden_set(golden_dir, name, tower_cls, config_cls):
    """A golden set in the same format with a batch of 3 and one shared timestep: the original's per-call
    quantities stay ``[1, ...]`` while ours are per sample (``[3, ...]``); the comparison broadcasts them.
    """
    g = Golden(golden_dir, name)
    groups = {k: g.group(k) for k in ("inputs", "outputs", "intermediates")}
    batched = {
        kind: {
            k: v if k == "timestep" or k in PER_CALL else v.expand(3, *v.shape[1:]).clone()
            for k, v in tensors.items()
        }
        for kind, tensors in groups.items()
    }
    assert batched["inputs"]["timestep"].shape == (1,) and batched["intermediates"]["t_emb"].shape[0] == 1
    _check_tower(g, tower_cls, config_cls, batched)


def test_batch_broadcast_still_checks_every_sample():
    ref = torch.zeros(1, 4)
    assert_close_all({"t_emb": ref}, {"t_emb": torch.zeros(3, 4)})
    with pytest.raises(AssertionError, match="max"):
        assert_close_all({"t_emb": ref}, {"t_emb": torch.tensor([[0.0] * 4, [0.0] * 4, [1.0] * 4])})
    with pytest.raises(AssertionError, match="shape"):
        assert_close_all({"t_emb": torch.zeros(2, 4)}, {"t_emb": torch.zeros(3, 4)})
    with pytest.raises(AssertionError, match="shape"):
        assert_close_all({"t_emb": ref}, {"t_emb": torch.zeros(3, 5)})


def test_bridge_layer_matches_golden(golden_dir):
    g = Golden(golden_dir, "bridge")
    bridge = DualTowerBridge(BridgeConfig.from_dict(g.config)).eval()
    _load(bridge, g.weights())
    call, inputs = g.call, g.group("inputs")
    visual, audio = inputs["visual_hidden_states"], inputs["audio_hidden_states"]
    rope = bridge.rope(
        tuple(call["grid_size"]), call["audio_steps"], call["video_fps"], visual.dtype, visual.device
    )
    with torch.no_grad():
        v_out, a_out = bridge(call["layer_idx"], visual, audio, rope, scale=call["condition_scale"])
    assert_close_all(g.group("outputs"), {"visual_hidden_states": v_out, "audio_hidden_states": a_out})
    tables = dict(zip(("video_rope_cos", "video_rope_sin", "audio_rope_cos", "audio_rope_sin"), rope))
    assert_close_all(g.group("intermediates"), tables, tol=1e-6)


def _dual_tower(config: dict) -> MovaDualTower:
    return MovaDualTower(
        video_dit=VideoDiT(VideoDiTConfig.from_dict(config["video_dit"])),
        audio_dit=AudioDiT(AudioDiTConfig.from_dict(config["audio_dit"])),
        dual_tower_bridge=DualTowerBridge(BridgeConfig.from_dict(config["dual_tower_bridge"])),
    ).eval()


def test_dual_tower_matches_golden(golden_dir):
    g = Golden(golden_dir, "dual_tower")
    model = _dual_tower(g.config)
    _load(model, g.weights())
    rec = Recorder()
    rec.watch_tower(model.video_dit, "video_")
    rec.watch_tower(model.audio_dit, "audio_")
    # The golden names per-tower block outputs `video_block_i_out`, embeddings `video_tokens_in` etc.
    bridge = model.dual_tower_bridge

    def bridge_hook(_mod, args, out):
        layer = args[0]
        rec.values[f"bridge_{layer}_video_out"], rec.values[f"bridge_{layer}_audio_out"] = out

    handle = bridge.register_forward_hook(bridge_hook)
    inputs, call = g.group("inputs"), g.call
    with torch.no_grad():
        video_v, audio_v = model(
            inputs["latents"],
            inputs["y"],
            inputs["audio_latents"],
            inputs["context"],
            inputs["timestep"],
            inputs["audio_timestep"],
            video_fps=call["video_fps"],
        )
    handle.remove()
    grid = (inputs["latents"].shape[2], *(s // 2 for s in inputs["latents"].shape[3:]))
    vcos, vsin, acos, asin = bridge.rope(
        grid, inputs["audio_latents"].shape[2], call["video_fps"], torch.float32, None
    )
    rec.values.update(video_rope_cos=vcos, video_rope_sin=vsin, audio_rope_cos=acos, audio_rope_sin=asin)
    assert_close_all(g.group("outputs"), {"video_velocity": video_v, "audio_velocity": audio_v})
    assert_close_all(g.group("intermediates"), rec.values)
