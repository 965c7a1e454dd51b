"""Memory estimate: parameter bytes vs. the meta-device model, sharding and offload."""

import pytest
import torch

from mova_train.estimate.flops import component_params, token_counts
from mova_train.estimate.measure import parameter_storages, saved_activation_bytes
from mova_train.estimate.memory import (
    _trainable_names,
    _weight_bytes,
    block_saved_elements,
    bridge_saved_elements,
    estimate_memory,
)
from mova_train.estimate.report import estimate_run, format_estimate
from mova_train.models.builders import build_dual_tower, mova_release, release_config, tiny_config
from mova_train.models.lora import LoraSpec, inject_lora, set_trainable
from mova_train.models.rope import video_rope_freqs

TOK = token_counts(193, 352, 640)


def test_parameter_bytes_match_meta_model():
    cfg = release_config()
    model = mova_release(experts=("video_dit",))  # meta device, bf16 (time MLPs float32)
    assert component_params(cfg, "video_dit")[0] == 14_288_901_184
    for comp in ("video_dit", "audio_dit", "dual_tower_bridge"):
        params = list(getattr(model, comp).parameters())
        assert component_params(cfg, comp)[0] == sum(p.numel() for p in params)
        assert _weight_bytes(cfg, comp, "bf16") == sum(p.numel() * p.element_size() for p in params)


def test_tiny_parameter_counts_match():
    cfg = tiny_config(video_dim=48, audio_dim=32, head_dim=16, num_layers=3)
    model = build_dual_tower(cfg, experts=("video_dit",), device="meta")
    for comp in ("video_dit", "audio_dit", "dual_tower_bridge"):
        assert component_params(cfg, comp)[0] == sum(p.numel() for p in getattr(model, comp).parameters())


def test_fsdp_divides_weights_and_optimizer_by_dp():
    cfg = release_config()
    kw = dict(trainable_params=10_000_000, optimizer="adamw")
    single = estimate_memory(cfg, TOK, strategy="ddp", **kw)
    fsdp = estimate_memory(cfg, TOK, strategy="fsdp2", dp=8, **kw)
    for row in ("weights: video experts", "optimizer state (adamw)", "gradients (fp32)"):
        assert fsdp.get(row) == pytest.approx(single.get(row) / 8)
    assert single.get("weights: video experts") == 2 * _weight_bytes(cfg, "video_dit", "bf16")


def test_offload_and_cp_shrink_the_device_total():
    cfg = release_config()
    full = estimate_memory(cfg, TOK, experts_loaded=1)
    off = estimate_memory(cfg, TOK, experts_loaded=1, strategy="offload", offload_blocks=2)
    assert off.device_total < full.device_total - 25 * 1024**3
    assert off.host_total >= _weight_bytes(cfg, "video_dit", "bf16")
    cp = estimate_memory(cfg, TOK, experts_loaded=1, cp=4)
    assert cp.get("checkpoint inputs") == pytest.approx(full.get("checkpoint inputs") / 4)
    assert (
        estimate_memory(cfg, TOK, optimizer="adamw8bit", trainable_params=100).get(
            "optimizer state (adamw8bit)"
        )
        == 200
    )
    with pytest.raises(ValueError, match="strategy"):
        estimate_memory(cfg, TOK, strategy="zero3")


def test_estimate_run_and_format():
    est = estimate_run(
        release_config(),
        experts=("video_dit_2",),
        lora_rank=16,
        lora_targets={"video_dit_2": ["self_attn.q"]},
    )
    assert est.params_active == est.params_total
    assert est.params_trainable == 40 * 16 * (5120 + 5120)
    text = format_estimate(est, "release 360p")
    assert "43,120" in text and "GiB" in text and "PFLOP" in text


def test_cp8_replicates_audio_and_divides_video():
    cfg = release_config()
    kw = dict(experts_loaded=1, strategy="fsdp2", dp=8, trainable_params=10_000_000)
    cp4 = estimate_memory(cfg, TOK, cp=4, **kw)
    cp8 = estimate_memory(cfg, TOK, cp=8, **kw)
    one = estimate_memory(cfg, TOK, cp=1, **kw)
    video, audio = TOK.video * cfg.video_dit.dim * 2, TOK.audio * cfg.audio_dit.dim * 2
    n_units = (
        cfg.video_dit.num_layers + cfg.audio_dit.num_layers + cfg.dual_tower_bridge.num_interaction_layers
    )
    # Checkpoint inputs: video tokens / cp; audio tokens / cp at cp 4 but whole (replicated) at cp 8.
    assert cp4.get("checkpoint inputs") == pytest.approx(n_units * (video + audio) / 4)
    assert cp8.get("checkpoint inputs") == pytest.approx(n_units * (video / 8 + audio))
    assert cp8.device_total < cp4.device_total < one.device_total
    assert any("replicated" in n for n in cp8.notes) and not any("replicated" in n for n in cp4.notes)
    est4 = estimate_run(cfg, experts=("video_dit",), lora_rank=16, strategy="fsdp2", dp=8, cp=4)
    est8 = estimate_run(cfg, experts=("video_dit",), lora_rank=16, strategy="fsdp2", dp=8, cp=8)
    assert est8.devices_per_replica == 8
    # The replicated audio tower (about 1 % of the FLOPs at 360p) keeps cp 8 from halving cp 4's time exactly.
    assert est4.step_time_s / 2 < est8.step_time_s < est4.step_time_s / 2 * 1.05


def _saved_slope(model, run, counts, tables=()):
    """Per-token saved bytes of ``run(model, n)`` between two token counts (constant text terms cancel);
    RoPE ``tables`` are not counted (the estimator has a row of their own).
    """
    exclude = parameter_storages([model]) | {t.untyped_storage().data_ptr() for t in tables}
    lo, hi = (saved_activation_bytes(lambda n=n: run(model, n), exclude) for n in counts)
    return (hi - lo) / (counts[1] - counts[0])


@pytest.mark.parametrize("preset", ["attn", "upstream"])
def test_block_factors_match_saved_tensors(preset):
    """block_saved_elements / bridge_saved_elements against what autograd keeps (bf16 autocast, CPU)."""
    cfg = tiny_config(video_dim=256, audio_dim=128, head_dim=64, num_layers=1, text_dim=32)
    model = build_dual_tower(cfg, experts=("video_dit",), seed=0, dtype=torch.bfloat16)
    spec = LoraSpec(rank=4, alpha=4, preset=preset)
    inject_lora(model, spec)
    set_trainable(model, spec, ())
    v, b = cfg.video_dit, cfg.dual_tower_bridge
    names = _trainable_names(cfg, "video_dit", dict(spec.components)["video_dit"])
    ctx = torch.randn(1, 8, v.dim, dtype=torch.bfloat16)
    mod = torch.zeros(1, 6, v.dim)

    freqs = {n: video_rope_freqs((n // 4, 2, 2), v.head_dim, torch.device("cpu")) for n in (64, 128)}

    def block(m, n):
        x = torch.randn(1, n, v.dim, dtype=torch.bfloat16, requires_grad=True)
        return m.video_dit.blocks[0](x, ctx, mod, freqs[n])

    ropes = {
        n: model.dual_tower_bridge.rope((n // 4, 2, 2), n // 4, 24.0, torch.bfloat16, "cpu")
        for n in (64, 128)
    }

    def bridge(m, n):
        x = torch.randn(1, n, b.visual_hidden_dim, dtype=torch.bfloat16, requires_grad=True)
        a = torch.randn(1, n // 4, b.audio_hidden_dim, dtype=torch.bfloat16, requires_grad=True)
        return m.dual_tower_bridge(0, x, a, ropes[n])

    per_token = block_saved_elements(v.dim, v.ffn_dim, names, False, norm_upcast=False, lora_rank=4)[0] * 2
    assert _saved_slope(model, block, (64, 128), freqs.values()) == pytest.approx(per_token, rel=0.02)
    per_token = bridge_saved_elements(b.visual_hidden_dim, b.audio_hidden_dim, 1, 0.25, False, 4) * 2
    tables = [t for r in ropes.values() for t in r]
    assert _saved_slope(model, bridge, (64, 128), tables) == pytest.approx(per_token, rel=0.02)
