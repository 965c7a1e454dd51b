"""`DataOptions`: one definition of every data setting, checked before any data is read."""

from __future__ import annotations

import dataclasses

import pytest

from mova_train.config.schema import DataConfig
from mova_train.data.datamodule import MovaDataModule
from mova_train.data.options import DataConfigError, DataOptions
from mova_train.data.pipeline import StreamConfig


def test_every_layer_takes_its_options_from_data_options():
    names = set(DataOptions.names())
    assert names <= {f.name for f in dataclasses.fields(DataConfig)}
    assert names <= {f.name for f in dataclasses.fields(StreamConfig)}
    dm = MovaDataModule("unused", **{n: getattr(DataOptions(), n) for n in names})
    assert dm.options == DataOptions()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("batch_size", 0, "data.batch_size=0 must be a positive integer"),
        ("fps", 0, "data.fps=0 is not a usable frame rate"),
        ("fps", 1e-9, "data.fps=1e-09 is not a usable frame rate"),
        ("sample_rate", 0, "data.sample_rate=0 must be a positive integer"),
        ("num_frames", 16, "data.num_frames=16 must be 4k \\+ 1"),
        ("height", 100, "data.height=100 must be divisible by 16"),
        ("max_skip_rate", 1.5, "data.max_skip_rate=1.5 must be a fraction in \\[0, 1\\]"),
        ("mode", "latent", "data.mode='latent' must be one of"),
        ("buckets", [[32, 48, 6]], "data.buckets entry \\[32, 48, 6\\]"),
        ("num_workers", -1, "data.num_workers=-1 must be an integer >= 0"),
    ],
)
def test_bad_values_fail_at_construction_naming_the_key(key, value, message):
    with pytest.raises(DataConfigError, match=message):
        MovaDataModule("unused", **{key: value})


def test_unknown_option_is_refused():
    with pytest.raises(DataConfigError, match="unknown data options \\['batchsize'\\]"):
        MovaDataModule("unused", batchsize=2)
