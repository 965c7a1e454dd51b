"""Helpers to read golden files and capture intermediates of our modules under the golden names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TOL = 1e-4


class Golden:
    """One golden component: ``<name>.json`` + ``<name>.safetensors``."""

    def __init__(self, folder: Path, name: str) -> None:
        self.meta = json.loads((folder / f"{name}.json").read_text())
        self.tensors = load_file(str(folder / f"{name}.safetensors"))

    @property
    def config(self) -> dict:
        return self.meta["config"]

    @property
    def call(self) -> dict:
        return self.meta.get("call", {})

    def weights(self, prefix: str = "") -> dict[str, torch.Tensor]:
        head = f"weights.{prefix}"
        return {k[len(head) :]: v for k, v in self.tensors.items() if k.startswith(head)}

    def group(self, kind: str) -> dict[str, torch.Tensor]:
        head = f"{kind}."
        return {k[len(head) :]: v for k, v in self.tensors.items() if k.startswith(head)}


def comparable(ref: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether ``out`` can be checked against ``ref``: the same shape, or the same but for the leading batch
    dimension, which one side has once (``[1, ...]``: the original computes a quantity once per call, e.g. the
    time embedding of a shared timestep) and the other per sample (``[B, ...]``).
    """
    if out.shape == ref.shape:
        return True
    return (
        out.dim() == ref.dim() >= 1 and out.shape[1:] == ref.shape[1:] and 1 in (out.shape[0], ref.shape[0])
    )


def assert_close_all(
    expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], tol: float = TOL
) -> None:
    """Every expected tensor must be present in ``got`` with max |diff| <= tol, compared with broadcasting over
    the batch dimension where one side holds it once (:func:`comparable`): every sample must then match.
    """
    missing = sorted(set(expected) - set(got))
    assert not missing, f"not produced: {missing}"
    errors = {}
    for name, ref in expected.items():
        out = got[name].detach().to(torch.float32)
        assert comparable(ref, out), f"{name}: shape {tuple(out.shape)} != golden {tuple(ref.shape)}"
        errors[name] = (out - ref).abs().max().item()
    bad = {k: v for k, v in errors.items() if v > tol}
    assert not bad, f"max |diff| above {tol}: {bad}"


class Recorder:
    """Forward hooks that store module outputs under chosen names."""

    def __init__(self) -> None:
        self.values: dict[str, torch.Tensor] = {}
        self._handles = []

    def watch(self, module: torch.nn.Module, name: str, transform=None) -> None:
        def hook(_mod, _args, out):
            self.values[name] = transform(out) if transform else out

        self._handles.append(module.register_forward_hook(hook))

    def watch_tower(self, tower, prefix: str = "") -> None:
        """Record the standard tower intermediates (``t_emb``, ``t_mod``, ``context_emb``, ``tokens_in``,
        ``block_i_out``, ``head_out``) with an optional name prefix.
        """
        dim = tower.dim
        self.watch(tower.time_embedding, f"{prefix}t_emb")
        self.watch(tower.time_projection, f"{prefix}t_mod", lambda o: o.unflatten(1, (6, dim)))
        self.watch(tower.text_embedding, f"{prefix}context_emb")
        self.watch(tower.patch_embedding, f"{prefix}tokens_in", lambda o: o.flatten(2).transpose(1, 2))
        for i, block in enumerate(tower.blocks):
            self.watch(block, f"{prefix}block_{i}_out")
        self.watch(tower.head.head, f"{prefix}head_out")

    def close(self) -> None:
        for h in self._handles:
            h.remove()


SIGMA_TOL = 1e-6
TIMESTEP_TOL = 1e-3


def assert_euler_step(got, exp: dict, where: str, t_from: str = "t_from", t_to: str = "t_to") -> None:
    """One of our ``EulerStep``s against a golden step record: times to ``TIMESTEP_TOL``, sigmas and the Euler
    factor to ``SIGMA_TOL``, the training-grid index exactly (``t_from`` / ``t_to``: the record's time keys;
    a ``None`` next time means the last step).
    """
    assert got.t_from == pytest.approx(exp[t_from], abs=TIMESTEP_TOL), where
    if exp[t_to] is None:
        assert got.t_to is None, where
    else:
        assert got.t_to == pytest.approx(exp[t_to], abs=TIMESTEP_TOL), where
    assert got.sigma_from == pytest.approx(exp["sigma_from"], abs=SIGMA_TOL), where
    assert got.sigma_to == pytest.approx(exp["sigma_to"], abs=SIGMA_TOL), where
    assert got.euler_factor == pytest.approx(exp["euler_factor"], abs=SIGMA_TOL), where
    assert got.train_index == exp["train_grid_index_from"], where
