"""Context parallel (gloo, several processes) equals no context parallel: outputs and parameter gradients.

Video grid 3x3x3 = 27 tokens and 13 audio tokens: neither divides by 2 or 8, so the last slices carry padded
tokens, which must be masked.

* cp 2 (2 processes, 4 heads per attention): audio sharded (Ulysses everywhere), the same with gradient
  checkpointing, audio replicated, upstream's unmasked padding (which must differ), and the training objective
  with a mix of every conditioning mode.
* cp 8 (8 processes; 8 video heads but 3 audio heads): cp does not divide the audio heads, so the audio
  stream is replicated on every rank (the release case: 40 video heads, 12 audio heads, cp 8).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

RANK_SCRIPT = textwrap.dedent(
    """
    import copy, json, sys
    import torch
    import torch.distributed as dist
    from mova_train.models import mova_tiny
    from mova_train.parallel import ContextParallel, apply_context_parallel

    rank, world, init_file, out_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    spec = json.loads(sys.argv[5])
    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=world)
    torch.manual_seed(0)
    model = mova_tiny(experts=("video_dit",), seed=3, **spec["model"])
    g = torch.Generator().manual_seed(1)
    c, ca, td = model.video_dit.config.out_dim, model.audio_dit.config.in_dim, model.video_dit.config.text_dim
    x = dict(
        latents=torch.randn(2, c, 3, 6, 6, generator=g),  # patch (1, 2, 2): grid 3x3x3 = 27 tokens
        y=torch.randn(2, c + 4, 3, 6, 6, generator=g),
        audio_latents=torch.randn(2, ca, 13, generator=g),
        context=torch.randn(2, 5, td, generator=g),
        timestep=torch.tensor([950.0, 120.0]),
        audio_timestep=torch.tensor([400.0, 990.0]),
    )
    wv = torch.randn(2, c, 3, 6, 6, generator=g)
    wa = torch.randn(2, ca, 13, generator=g)

    def run(m, cp=None, ckpt=False):
        m.zero_grad(set_to_none=True)
        m.set_gradient_checkpointing(ckpt)
        v, a = m(**x)
        ((v * wv).sum() + (a * wa).sum()).backward()
        grads = {}
        for name, p in m.named_parameters():
            if p.grad is None:
                continue
            gr = p.grad.clone()
            if cp is not None:  # the convention: average over the cp group (as FSDP2/DDP do)
                dist.all_reduce(gr, group=cp.group)
                gr /= cp.size
            grads[name] = gr
        return v.detach(), a.detach(), grads

    def maxdiff(ref, got):
        rv, ra, rg = ref
        v, a, gr = got
        assert rg.keys() == gr.keys(), sorted(set(rg) ^ set(gr))
        return dict(
            video=(v - rv).abs().max().item(),
            audio=(a - ra).abs().max().item(),
            grad=max((gr[k] - rg[k]).abs().max().item() for k in rg),
            grad_scale=max(rg[k].abs().max().item() for k in rg),
            n_grads=len(rg),
        )

    ref = run(model)
    cp = ContextParallel()
    cp_model = apply_context_parallel(copy.deepcopy(model), cp)
    result = dict(replicated_streams=sorted(cp_model.sequence_parallel.replicated))
    result["masked"] = maxdiff(ref, run(cp_model, cp))
    result["checkpointed"] = maxdiff(ref, run(cp_model, cp, ckpt=True))
    if "replicated" in spec["cases"]:
        replicated = apply_context_parallel(copy.deepcopy(model), cp, audio="replicate")
        result["replicated"] = maxdiff(ref, run(replicated, cp))
    if "unmasked" in spec["cases"]:
        upstream = apply_context_parallel(copy.deepcopy(model), ContextParallel(mask_padding=False))
        result["unmasked"] = maxdiff(ref, run(upstream, cp))
    if "modes" in spec["cases"]:
        # the objective with every conditioning mode (v2a runs the low-noise expert): cp ranks share the
        # generator seed, so they draw the same modes, noise and timesteps and the loss equals one process's
        from mova_train.objectives import FlowMatchingObjective

        low = mova_tiny(experts=("video_dit_2",), seed=3, **spec["model"])
        objective = FlowMatchingObjective(
            expert_mode="single", expert="video_dit_2", boundary_timestep=1000.0,
            mode={"i2av": 0.25, "t2av": 0.25, "a2v": 0.25, "v2a": 0.25},
        )  # fmt: skip
        batch = dict(video_latents=x["latents"].repeat(2, 1, 1, 1, 1), cond=x["y"].repeat(2, 1, 1, 1, 1),
                     audio_latents=x["audio_latents"].repeat(2, 1, 1), context=x["context"].repeat(2, 1, 1),
                     empty_latents=torch.randn(1, c, 3, 6, 6, generator=g).expand(4, -1, -1, -1, -1))  # fmt: skip

        def loss_run(m, cp=None):
            m.zero_grad(set_to_none=True)
            out = objective(m, batch, 0, torch.Generator().manual_seed(7))
            out.loss.backward()
            grads = {}
            for name, p in m.named_parameters():
                if p.grad is not None:
                    gr = p.grad.clone()
                    if cp is not None:
                        dist.all_reduce(gr, group=cp.group)
                        gr /= cp.size
                    grads[name] = gr
            return out, grads

        ref_out, ref_g = loss_run(low)
        cp_out, cp_g = loss_run(apply_context_parallel(copy.deepcopy(low), cp), cp)
        result["modes"] = dict(
            modes=list(cp_out.modes), same_modes=cp_out.modes == ref_out.modes,
            loss=abs(float(cp_out.loss) - float(ref_out.loss)),
            grad=max((cp_g[k] - ref_g[k]).abs().max().item() for k in ref_g), n_grads=len(ref_g),
        )  # fmt: skip
    with torch.no_grad():
        v_nb, a_nb = model(**x, use_bridge=False)
        v_cp, a_cp = cp_model(**x, use_bridge=False)
    result["no_bridge"] = max((v_cp - v_nb).abs().max().item(), (a_cp - a_nb).abs().max().item())
    result["broadcast"] = cp.broadcast_(torch.full((2,), float(rank) + 1.0)).tolist()
    with open(out_path, "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()
    """
)


def _run_ranks(tmp, world: int, spec: dict) -> list[dict]:
    procs = []
    for rank in range(world):
        cmd = [sys.executable, "-c", RANK_SCRIPT, str(rank), str(world), str(tmp / "init")]
        cmd += [str(tmp / f"{rank}.json"), json.dumps(spec)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-4000:]
    return [json.loads((tmp / f"{rank}.json").read_text()) for rank in range(world)]


@pytest.fixture(scope="module")
def cp2_results(tmp_path_factory) -> list[dict]:
    # 4 heads per attention: 2 per rank.
    spec = {"model": {"head_dim": 8}, "cases": ["replicated", "unmasked", "modes"]}
    return _run_ranks(tmp_path_factory.mktemp("cp2"), 2, spec)


@pytest.fixture(scope="module")
def cp8_results(tmp_path_factory) -> list[dict]:
    # 8 video heads (1 per rank), 3 audio heads: cp 8 does not divide them, so audio is replicated.
    spec = {"model": {"video_dim": 64, "audio_dim": 24, "head_dim": 8}, "cases": []}
    return _run_ranks(tmp_path_factory.mktemp("cp8"), 8, spec)


def _assert_equal_to_single_process(results: list[dict], cases: tuple[str, ...]) -> None:
    for rank, res in enumerate(results):
        for case in cases:
            d = res[case]
            assert d["n_grads"] > 50, d
            assert d["video"] < 1e-5 and d["audio"] < 1e-5, (rank, case, d)
            assert d["grad"] < 1e-5, (rank, case, d)
        assert res["no_bridge"] < 1e-5, res
        assert res["broadcast"] == [1.0, 1.0]  # cp-rank 0's noise / timesteps reach every cp rank


@pytest.mark.distributed
@pytest.mark.slow
def test_cp2_matches_single_process_outputs_and_gradients(cp2_results):
    assert cp2_results[0]["replicated_streams"] == []  # cp 2 divides every head count: audio sharded too
    _assert_equal_to_single_process(cp2_results, ("masked", "checkpointed", "replicated"))


@pytest.mark.distributed
@pytest.mark.slow
def test_cp2_trains_every_conditioning_mode_like_one_process(cp2_results):
    """objective.mode mixing i2av/t2av/a2v/v2a under cp 2: same draws on both ranks, same loss and gradients."""
    assert cp2_results[0]["modes"]["modes"] == cp2_results[1]["modes"]["modes"]
    for res in cp2_results:
        d = res["modes"]
        assert d["same_modes"] and len(set(d["modes"])) >= 2, d
        assert d["loss"] < 1e-5 and d["grad"] < 1e-5 and d["n_grads"] > 50, d


@pytest.mark.distributed
@pytest.mark.slow
def test_padded_tokens_are_masked(cp2_results):
    """Upstream's unmasked padding (zero tokens attended as keys) changes the result; ours does not."""
    for res in cp2_results:
        assert res["unmasked"]["audio"] > 1e-3, res["unmasked"]
        assert res["unmasked"]["grad"] > 1e-3, res["unmasked"]
        assert res["masked"]["audio"] < 1e-5


@pytest.mark.distributed
@pytest.mark.slow
def test_cp8_with_replicated_audio_matches_single_process(cp8_results):
    assert cp8_results[0]["replicated_streams"] == ["audio"]
    _assert_equal_to_single_process(cp8_results, ("masked", "checkpointed"))
    worst = {
        k: max(r[c][k] for r in cp8_results for c in ("masked", "checkpointed"))
        for k in ("video", "audio", "grad")
    }
    print(f"cp8 max diffs vs one process: {worst}")  # noqa: T201 - shown with -s, quoted in docs/performance.md
