import re
import textwrap

import pytest
import torch

from edgekit.data.avdigits import AVDigitsConfig, io_spec
from edgekit.errors import UsageError
from edgekit.loading import load_model, load_state_dict, save_model_package
from edgekit.models import build_fusion_model

IO = io_spec(AVDigitsConfig(), vocab_size=41)
KWARGS = {"arch": "gated", "preset": "small", "vocab_size": 41}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_fusion_model(**KWARGS).eval()


def outputs(m, feeds):
    with torch.no_grad():
        return m(**feeds)


def test_package_round_trip(model, tmp_path):
    path = save_model_package(model, IO, tmp_path / "pkg", factory="edgekit.models:build_fusion_model",
                              kwargs=KWARGS, labels=[str(i) for i in range(10)])  # fmt: skip
    assert sorted(p.name for p in path.iterdir()) == ["edgekit-model.yaml", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    loaded = load_model(path)
    feeds = IO.example_torch(batch=2)
    torch.testing.assert_close(outputs(loaded.model, feeds), outputs(model, feeds))
    assert loaded.io == IO and loaded.labels[3] == "3"


USER_MODEL = """
import torch
class Tiny(torch.nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.fc = torch.nn.Linear(3, width)
    def forward(self, x):
        return self.fc(x)
def build(width=4):
    return Tiny(width)
def broken():
    raise ValueError("no config")
def not_a_module():
    return 42
"""
USER_IO = """
dims: {batch: {min: 1, opt: 1, max: 8}}
inputs: [{name: x, dtype: float32, shape: [batch, 3]}]
outputs: [{name: y, dtype: float32, shape: [batch, 4]}]
"""


@pytest.fixture
def user_dir(tmp_path):
    (tmp_path / "user_model.py").write_text(textwrap.dedent(USER_MODEL))
    (tmp_path / "io.yaml").write_text(USER_IO)
    return tmp_path


def test_factory_with_weights_and_io(user_dir, monkeypatch):
    monkeypatch.chdir(user_dir)
    torch.manual_seed(1)
    ref = torch.nn.Linear(3, 4)
    torch.save({f"fc.{k}": v for k, v in ref.state_dict().items()}, user_dir / "w.pt")
    loaded = load_model("user_model.py:build", weights=user_dir / "w.pt", io=user_dir / "io.yaml")
    x = torch.randn(2, 3)
    torch.testing.assert_close(outputs(loaded.model, {"x": x}), ref(x).detach())


def test_pickled_module_is_refused_unless_trusted(user_dir, monkeypatch):
    monkeypatch.chdir(user_dir)
    torch.save(torch.nn.Linear(3, 4), user_dir / "full.pt")  # a whole pickled module, not a state_dict
    with pytest.raises(UsageError, match=r"holds pickled objects or code.*--trust-checkpoint"):
        load_state_dict(user_dir / "full.pt")
    state = load_state_dict(user_dir / "full.pt", trust_checkpoint=True)
    assert set(state) == {"weight", "bias"}


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("user_model.py:broken", "factory 'user_model.py:broken' raised ValueError: no config"),
        ("user_model.py:not_a_module", "returned int, not a torch.nn.Module"),
        ("user_model.py:missing", "'user_model.py' has no callable 'missing'"),
        ("no_such_pkg.models:build", "factory 'no_such_pkg.models:build' does not import: ModuleNotFoundError"),
    ],
)
def test_factory_errors_are_named(user_dir, monkeypatch, factory, message):
    monkeypatch.chdir(user_dir)
    with pytest.raises(UsageError, match=re.escape(message)):
        load_model(factory, io=user_dir / "io.yaml")


def test_shape_mismatch_names_the_keys(model, tmp_path):
    pkg = save_model_package(model, IO, tmp_path / "pkg", factory="edgekit.models:build_fusion_model", kwargs=KWARGS)
    other = build_fusion_model("gated", "small", vocab_size=50)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(UsageError, match=r"branches\.text\.tokens\.weight: file \[50, 64\] vs model \[41, 64\]"):
        load_model(pkg, weights=tmp_path / "other.pt")


def test_truncated_safetensors(model, tmp_path):
    pkg = save_model_package(model, IO, tmp_path / "pkg", factory="edgekit.models:build_fusion_model", kwargs=KWARGS)
    w = pkg / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(UsageError, match="is not a valid safetensors file"):
        load_model(pkg)
