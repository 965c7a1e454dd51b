"""Fit entry point: ``python -m mova_train [+recipe=NAME] [overrides]`` (also installed as ``mova-train``).

The configs live in the top-level `conf/` folder beside the package; Hydra gets its absolute path (computed from
this file, see `mova_train.config.conf_dir`), so `conf/` needs no `__init__.py` and works with `python -m`.
Examples::

    python -m mova_train                                    # the tiny CPU run (embedded default)
    python -m mova_train +recipe=lora_1gpu_80gb paths.checkpoint_dir=/ckpt
    python -m mova_train -m optimizer.lr=1e-4,5e-5 lora.rank=8,16    # a sweep, one run per combination
    python -m mova_train --cfg job                          # print the composed config and exit
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mova_train.config import CONF_DIR


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Compose the config, train, and return the monitored metric (what a Hydra sweeper optimizes)."""
    from mova_train.train import train

    return train(cfg)


if __name__ == "__main__":
    main()
