"""Context parallel pieces that need no second process: sharding, masks, head checks, 1-rank wiring."""

from __future__ import annotations

import copy
import re
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from helpers.tiny import tiny_inputs

from mova_train.models import mova_tiny
from mova_train.parallel import (
    ContextParallel,
    SequenceSharding,
    allowed_cp_sizes,
    apply_context_parallel,
    build_cp_group,
    check_head_divisibility,
    gather_sequence,
    resolve_audio_mode,
    shard_sequence,
)


def _fake_cp(rank: int, size: int, mask_padding: bool = True) -> SimpleNamespace:
    return SimpleNamespace(rank=rank, size=size, mask_padding=mask_padding)


@pytest.mark.parametrize("n, size", [(13, 2), (27, 4), (8, 4), (3, 4)])
def test_shard_sequence_slices_cover_padded_sequence(n, size):
    x = torch.randn(2, n, 3)
    n_local = -(-n // size)
    parts = []
    for rank in range(size):
        local, pad = shard_sequence(x, _fake_cp(rank, size))
        assert local.shape == (2, n_local, 3)
        assert pad == n_local * size - n
        parts.append(local)
    full = torch.cat(parts, dim=1)
    torch.testing.assert_close(full[:, :n], x)
    assert torch.all(full[:, n:] == 0)


def test_shard_sequence_complex_rope_table_on_dim0():
    freqs = torch.polar(torch.ones(13, 4, dtype=torch.float64), torch.randn(13, 4, dtype=torch.float64))
    last, pad = shard_sequence(freqs, _fake_cp(1, 2), dim=0)
    assert last.shape == (7, 4) and last.dtype == torch.complex128 and pad == 1
    torch.testing.assert_close(last[:6], freqs[7:])
    assert last[6].abs().max() == 0


def test_replicated_stream_is_neither_sharded_nor_gathered():
    cp = _fake_cp(1, 4)
    cp.padding_mask = lambda n, device: ContextParallel.padding_mask(cp, n, device)
    sharding = SequenceSharding(cp, frozenset({"audio"}))
    a, freqs = torch.randn(2, 13, 3), torch.randn(13, 4)
    local, local_freqs, mask = sharding.shard_stream(a, freqs, "audio")
    assert local is a and local_freqs is freqs and mask is None
    v_local, _, v_mask = sharding.shard_stream(torch.randn(2, 27, 3), torch.randn(27, 4), "video")
    assert v_local.shape == (2, 7, 3) and v_mask.shape == (1, 28) and not v_mask[0, 27]
    rope = tuple(torch.randn(1, n, 8) for n in (27, 27, 13, 13))
    vcos, _, acos, _ = sharding.shard_bridge_rope(rope)
    assert vcos.shape == (1, 7, 8) and acos is rope[2]
    torch.testing.assert_close(sharding.gather(a, 13, "audio"), a)
    with pytest.raises(ValueError, match="unknown stream"):
        SequenceSharding(_fake_cp(0, 2), frozenset({"text"}))


def test_padding_mask_marks_only_padded_keys():
    mask = ContextParallel.padding_mask(_fake_cp(0, 2), 13, torch.device("cpu"))
    assert mask.shape == (1, 14) and mask.dtype == torch.bool
    assert mask[0, :13].all() and not mask[0, 13]
    assert ContextParallel.padding_mask(_fake_cp(0, 2), 12, torch.device("cpu")) is None
    assert ContextParallel.padding_mask(_fake_cp(0, 2, mask_padding=False), 13, torch.device("cpu")) is None


def test_gather_sequence_single_rank_strips_padding():
    x = torch.randn(2, 5, 3)
    assert gather_sequence(x, _fake_cp(0, 1), 4).shape == (2, 4, 3)


@pytest.fixture(scope="module")
def release_heads_model():
    """Tiny dims but the release head counts: video / A2V 40 heads, audio / V2A 12 heads."""
    return mova_tiny(experts=("video_dit",), video_dim=80, audio_dim=24, head_dim=2, num_layers=1)


def test_allowed_cp_sizes_for_release_head_counts(release_heads_model):
    assert release_heads_model.video_dit.num_heads == 40 and release_heads_model.audio_dit.num_heads == 12
    # Audio replicated when cp does not divide its 12 heads: cp only has to divide the 40 video heads.
    assert allowed_cp_sizes(release_heads_model) == [1, 2, 4, 5, 8, 10, 20, 40]
    assert allowed_cp_sizes(release_heads_model, audio="shard") == [1, 2, 4]
    for size in (1, 2, 4, 8):
        check_head_divisibility(release_heads_model, size)


def test_audio_mode_resolution():
    assert resolve_audio_mode(4, [12, 12, 40]) == "shard"
    assert resolve_audio_mode(8, [12, 12, 40]) == "replicate"
    assert resolve_audio_mode(4, [12], "replicate") == "replicate"
    with pytest.raises(ValueError, match="audio mode 'split' unknown"):
        resolve_audio_mode(2, [12], "split")


@pytest.mark.parametrize(
    "size, audio, module, allowed",
    [
        (3, "auto", "video_dit.blocks.0.self_attn", "[1, 2, 4, 5, 8, 10, 20, 40]"),
        (8, "shard", "audio_dit.blocks.0.self_attn", "[1, 2, 4]"),
        (5, "shard", "audio_dit", "[1, 2, 4]"),
    ],
)
def test_head_check_names_module_and_allowed_sizes(release_heads_model, size, audio, module, allowed):
    with pytest.raises(ValueError, match=re.escape(f"allowed cp sizes for this model: {allowed}")) as err:
        check_head_divisibility(release_heads_model, size, audio)
    assert f"context-parallel size {size} does not divide" in str(err.value)
    assert module in str(err.value)


def test_context_parallel_requires_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        ContextParallel()


@pytest.fixture
def one_rank_group(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_single_rank_context_parallel_is_identity(one_rank_group):
    """Wiring check: cores installed, hooks called, same outputs and gradients with a 1-rank group."""
    mesh = SimpleNamespace(mesh_dim_names=("dp", "cp"), get_group=lambda dim: dist.group.WORLD)
    cp = build_cp_group(mesh)
    assert cp.size == 1 and cp.rank == 0
    model = mova_tiny(experts=("video_dit",))
    cp_model = apply_context_parallel(copy.deepcopy(model), cp)
    assert cp_model.sequence_parallel.cp is cp and not cp_model.sequence_parallel.replicated
    assert type(cp_model.audio_dit.blocks[0].self_attn.attention_core).__name__ == "UlyssesAttention"
    assert (
        cp_model.audio_dit.blocks[0].cross_attn.attention_core
        is model.audio_dit.blocks[0].cross_attn.attention_core
    )
    x = tiny_inputs(width=6, audio_len=5, text_len=3, timestep=700.0, audio_timestep=300.0)
    outs = []
    for m in (model, cp_model):
        v, a = m(**x)
        (v.square().sum() + a.square().sum()).backward()
        outs.append((v, a, m.audio_dit.blocks[0].self_attn.q.weight.grad))
    for ref, got in zip(outs[0], outs[1], strict=True):
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)


def test_build_cp_group_rejects_missing_dimension():
    mesh = SimpleNamespace(mesh_dim_names=("dp",), get_group=lambda dim: None)
    with pytest.raises(ValueError, match="no dimension 'cp'"):
        build_cp_group(mesh)
