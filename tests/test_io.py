import re

import numpy as np
import pytest

from edgekit.errors import UsageError
from edgekit.io import DimRange, IOSpec, TensorSpec


def spec() -> IOSpec:
    return IOSpec(
        inputs=(
            TensorSpec("image", "float32", ("batch", 1, 28, 28), "image"),
            TensorSpec("ids", "int64", ("batch", "seq"), "text", (0, 50)),
            TensorSpec("mask", "int64", ("batch", "seq"), "text", (1, 2)),
            TensorSpec("modality_mask", "float32", ("batch", 2)),
        ),
        outputs=(TensorSpec("logits", "float32", ("batch", 10)),),
        dims={"batch": DimRange(1, 4, 32), "seq": DimRange(1, 8, 16)},
    )


def test_yaml_round_trip(tmp_path):
    s = spec()
    s.save(tmp_path / "io.yaml")
    assert IOSpec.load(tmp_path / "io.yaml") == s
    assert s.modalities == ("image", "text")


def test_example_inputs_follow_ranges_and_overrides():
    s = spec()
    feeds = s.example_inputs(batch=3, seq=5)
    assert feeds["image"].shape == (3, 1, 28, 28) and feeds["image"].dtype == np.float32
    assert feeds["ids"].shape == (3, 5) and feeds["ids"].dtype == np.int64 and feeds["ids"].max() < 50
    assert (feeds["mask"] == 1).all() and (feeds["modality_mask"] == 1).all()
    assert s.example_inputs()["ids"].shape == (1, 8)  # opt point, default batch 1
    assert s.example_inputs(point="max")["ids"].shape == (1, 16)
    s.validate_feeds(feeds)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.pop("mask"), "missing input 'mask'"),
        (lambda f: f.__setitem__("image", f["image"].astype(np.float64)), "'image' has dtype float64"),
        (lambda f: f.__setitem__("ids", f["ids"][0]), "'ids' has rank 1"),
        (lambda f: f.__setitem__("ids", np.zeros((2, 17), np.int64)), "seq=17, outside [1, 16]"),
        (lambda f: f.__setitem__("mask", np.ones((2, 3), np.int64)), "'mask' has seq=3 but 'ids' has seq=4"),
        (lambda f: f.__setitem__("extra", np.zeros(1)), "unknown input(s) ['extra']"),
    ],
)
def test_validate_feeds_names_the_input(mutate, message):
    feeds = spec().example_inputs(batch=2, seq=4)
    mutate(feeds)
    with pytest.raises(UsageError, match=re.escape(message)):
        spec().validate_feeds(feeds)


def test_unknown_dtype_and_dim_are_usage_errors(tmp_path):
    bad = tmp_path / "io.yaml"
    bad.write_text(
        "inputs: [{name: x, dtype: float33, shape: [batch, 3]}]\noutputs: []\ndims: {batch: {min: 1, opt: 1, max: 4}}\n"
    )
    with pytest.raises(UsageError, match="tensor 'x' has unknown dtype 'float33'"):
        IOSpec.load(bad)
    with pytest.raises(UsageError, match="uses dim 'seq' with no range"):
        IOSpec(inputs=(TensorSpec("x", "int64", ("seq",)),), outputs=())
    with pytest.raises(UsageError, match="min <= opt <= max"):
        DimRange(4, 2, 8)
