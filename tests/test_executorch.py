"""ExecuTorch .pte export (XNNPACK, FP32 and INT8) run in ExecuTorch's own runtime on real AV-digits samples.

The small model is trained briefly first: untrained, it predicts one class for nearly every sample, and
top-1 agreement between it and its export would then prove nothing."""

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("executorch.exir", reason="needs the executorch extra")

from edgekit.artifact import MANIFEST, load_artifact, sha256_file
from edgekit.data import FeedDataset, load_split, with_modalities
from edgekit.data.calibration import calibration_set
from edgekit.errors import EdgeKitError, UsageError
from edgekit.evaluation import torch_predict
from edgekit.formats import load_runner
from edgekit.models import build_fusion_model
from edgekit.targets.executorch import export_pte
from edgekit.targets.parity import resize
from edgekit.training import TrainConfig, train_classifier

pytestmark = pytest.mark.executorch
INT8_MEDIAN_ERROR = 0.05  # per-sample max logit error, median over samples (measured 0.012)


@pytest.fixture(scope="module")
def model(avdigits_io):
    torch.manual_seed(0)
    m = build_fusion_model("attention", "small", ["image", "text", "audio"], vocab_size=41, max_len=32)
    train, val = load_split("avdigits", "train"), load_split("avdigits", "val")
    train, val = FeedDataset(range(768), train.__getitem__), FeedDataset(range(100), val.__getitem__)
    train_classifier(m, avdigits_io, train, val, TrainConfig(epochs=3, lr=5e-3, modality_dropout=0.0))
    return m.eval()


@pytest.fixture(scope="module")
def fp32(model, avdigits_io, tmp_path_factory):
    return export_pte(model, avdigits_io, tmp_path_factory.mktemp("et") / "fp32", "fp32", None, "parent", {"k": 1})


@pytest.fixture(scope="module")
def int8(model, avdigits_io, tmp_path_factory):
    calib = calibration_set(avdigits_io, load_split("avdigits", "train"), n=32)
    return export_pte(model, avdigits_io, tmp_path_factory.mktemp("et") / "int8", "int8", calib, "parent", {})


@pytest.fixture(scope="module")
def test_feeds(test_split, avdigits_io):
    feeds, _ = next(test_split.batches(len(test_split)))
    return with_modalities(avdigits_io, feeds, avdigits_io.modalities)


def logits(artifact, feeds):
    return load_runner(load_artifact(artifact.directory), threads=2).run(feeds)["logits"]


@pytest.mark.heavy
def test_fp32_matches_torch_on_real_samples(fp32, model, test_feeds):
    want = torch_predict(model)(test_feeds)
    assert len(np.unique(want.argmax(-1))) >= 4, "the reference predicts too few classes for agreement to mean much"
    got = logits(fp32, test_feeds)  # the whole test split in one call: larger than one program call takes
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert np.mean(got.argmax(-1) == want.argmax(-1)) == 1.0


@pytest.mark.heavy
def test_int8_agrees_with_torch_and_is_smaller(int8, fp32, model, test_feeds):
    want = torch_predict(model)(test_feeds)
    got = logits(int8, test_feeds)
    # Measured 0.958: the briefly trained model's top-2 margins are small (median 0.05, logits up to 2.4).
    assert np.mean(got.argmax(-1) == want.argmax(-1)) >= 0.93
    assert np.median(np.abs(got - want).max(-1)) < INT8_MEDIAN_ERROR
    assert int8.path.stat().st_size < 0.5 * fp32.path.stat().st_size


@pytest.mark.heavy
def test_manifest_records_hashes_delegation_and_dims(fp32, int8, avdigits_io):
    for art in (fp32, int8):
        m = json.loads((art.directory / MANIFEST).read_text())
        assert (m["artifact_format"], m["file"], m["parent"]) == ("executorch", "model.pte", "parent")
        assert m["sha256"] == m["files"]["model.pte"] == sha256_file(art.path)
        meta = m["meta"]
        assert meta["delegate"] == "XnnpackBackend" and meta["versions"]["executorch"] == "1.5.1"
        d = meta["delegation"]
        assert d["subgraphs"] >= 1 and d["delegated_nodes"] > 2 * d["portable_nodes"] > 0
        assert d["portable_nodes"] == sum(d["portable_ops"].values()) == sum(o["nodes"] for o in d["portable"])
        # each op left out says whether XNNPACK has a kernel for it (its partitioner's own configs)
        assert all(o["why"].startswith(("XNNPACK has this op", "XNNPACK has no kernel")) for o in d["portable"])
        assert any(o["op"].startswith("mean") and o["why"].startswith("XNNPACK has this op") for o in d["portable"])
        # Convolutions, linears, matmuls and softmax all run in XNNPACK.
        assert not any(op.startswith(("convolution", "addmm", "mm", "bmm", "_softmax")) for op in d["portable_ops"])
        assert meta["input_order"] == avdigits_io.input_names
        batch, seq = meta["dynamic_dims"]["batch"], meta["dynamic_dims"]["seq"]
        assert batch[0] == 1 and 2 <= batch[1] <= 64 and seq == [1, 32]
    assert fp32.meta["k"] == 1 and fp32.precision == "fp32" and fp32.meta["quantization"] == {}
    assert int8.meta["quantization"]["calibration"]["samples"] == 32


@pytest.mark.heavy
def test_manifest_hash_catches_a_modified_pte(fp32, tmp_path):
    copy = shutil.copytree(fp32.directory, tmp_path / "copy")
    data = bytearray((copy / "model.pte").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.pte").write_bytes(data)
    with pytest.raises(EdgeKitError, match="does not match its manifest hash"):
        load_artifact(copy)


@pytest.mark.heavy
@pytest.mark.parametrize("batch", [1, 7, 16, 64])
@pytest.mark.parametrize("seq", [1, 16, 32])
def test_batches_and_lengths_other_than_the_traced_ones(fp32, int8, model, test_feeds, avdigits_io, batch, seq):
    feeds = resize(avdigits_io, {k: v[:batch].copy() for k, v in test_feeds.items()}, "seq", seq)
    feeds["modality_mask"][::2, 1] = 0  # text missing in every other sample: the mask path runs too
    want = torch_predict(model)(feeds)
    np.testing.assert_allclose(logits(fp32, feeds), want, atol=1e-4, rtol=0)
    assert np.median(np.abs(logits(int8, feeds) - want).max(-1)) < INT8_MEDIAN_ERROR


@pytest.mark.heavy
def test_runner_rejects_other_devices(fp32):
    with pytest.raises(UsageError, match="CPU"):
        load_runner(fp32, device="cuda")


def test_a_branch_is_every_op_its_inputs_alone_reach(model, avdigits_io):
    """PT2E quantizes the ops between layers too (adds, softmax, the mask's products): a branch floated for
    ExecuTorch is all of its traced ops, found by reachability as in the ONNX graph, not its layers alone."""
    from edgekit.branches import fx_branches
    from edgekit.targets.onnx import dynamic_shapes, trace_inputs

    io = avdigits_io
    traced = torch.export.export(model, (), kwargs=trace_inputs(io), dynamic_shapes=dynamic_shapes(io))
    graph = traced.module().graph
    found = fx_branches(graph, avdigits_io)
    where = {n.name: [p for p, _ in n.meta.get("nn_module_stack", {}).values()] for n in graph.nodes}
    for name, branch in found.items():
        inner = where[name][-1] if where[name] else ""
        if inner.startswith("branches."):  # an encoder's op is its modality's
            assert branch == inner.split(".")[1], (name, inner)
    fusion = [n for n, b in found.items() if b == "fusion"]
    ops = {str(n.target) for n in graph.nodes if n.name in fusion}
    assert any("softmax" in o for o in ops) and any("mul" in o for o in ops), ops  # the attention and the mask


@pytest.mark.heavy
def test_float_modules_keep_branches_out_of_int8(model, fp32, int8, avdigits_io, test_feeds, tmp_path):
    """The accuracy-aware loop's exclusions reach the XNNPACK quantizer: with every branch and the fusion floated,
    every op of them stays float (their layers, and the ops between them), so the program computes FP32's logits."""
    from edgekit.hardware import resolve_profile
    from edgekit.quant.backends import ExecuTorchBackend, Int8Job
    from edgekit.runtimes import predict_fn
    from edgekit.targets.onnx import export_onnx

    hub = export_onnx(model, avdigits_io, tmp_path / "m.onnx", slim=True)
    calib = calibration_set(avdigits_io, load_split("avdigits", "train"), n=32)
    job = Int8Job(model, avdigits_io, hub, calib, resolve_profile("android-arm64")[0])
    backend = ExecuTorchBackend(job)
    info = backend.quantize(frozenset(u.node for u in job.units), tmp_path / "floated")
    predict = predict_fn(backend.runner(tmp_path / "floated"))
    floated = load_artifact(tmp_path / "floated").meta["quantization"]["float_modules"]
    assert {m.split(".")[1] for m in floated if m.startswith("branches.")} == {"image", "text", "audio"}
    assert info["float_branches"] == ["audio", "fusion", "image", "text"]
    feeds = {k: v[:64] for k, v in test_feeds.items()}
    want = logits(fp32, feeds)
    assert np.abs(predict(feeds) - want).max() < 1e-3 < np.abs(logits(int8, feeds) - want).max()


class PaddingMask(torch.nn.Module):
    """Builds a padding mask the way transformers 5 does: key positions, arange(n) + an offset, index the mask."""

    def forward(self, mask: torch.Tensor, offset: int = 0) -> torch.Tensor:
        return mask.bool()[:, torch.arange(mask.shape[1]) + offset]


class MaskedText(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.pad = torch.nn.Embedding(41, 16), PaddingMask()
        self.body, self.out = torch.nn.Linear(16, 16), torch.nn.Linear(16, 10)

    def forward(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        h = self.body(self.embed(text_ids)) * self.pad(text_mask).unsqueeze(-1)
        return self.out(h.sum(1))


def test_integer_index_arithmetic_survives_pt2e(avdigits_io, test_feeds, tmp_path, monkeypatch):
    """torchao's prepare_pt2e turns `arange(n) + 0` into a float add, and the mask index then fails (what broke
    INT8 of a Hugging Face text encoder): EdgeKit restores the integer constant. Without that fix, the failure names
    the module and node it came from, not only the IndexError."""
    import edgekit.targets.executorch as et
    from edgekit.io import IOSpec

    spec = avdigits_io.to_dict()
    io = IOSpec.from_dict({**spec, "inputs": [t for t in spec["inputs"] if t["name"] in ("text_ids", "text_mask")]})
    torch.manual_seed(0)
    model = MaskedText().eval()
    calib = calibration_set(io, load_split("avdigits", "train"), n=8)
    art = export_pte(model, io, tmp_path / "int8", "int8", calib, "parent", {})
    feeds = {k: test_feeds[k][:4] for k in io.input_names}
    got = load_runner(art).run(feeds)["logits"]
    want = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).detach().numpy()
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()
    monkeypatch.setattr(et, "_integer_constants", lambda gm: None)
    with pytest.raises(EdgeKitError, match=r"IndexError: tensors used as indices .* in pad \(PaddingMask\), node "):
        export_pte(model, io, tmp_path / "broken", "int8", calib, "parent", {}, branch_roots=lambda: {"text": ["pad"]})
    assert not (tmp_path / "broken").exists()


def test_a_gru_that_lowering_fixes_at_the_traced_batch_runs_every_batch(avdigits_io, test_feeds, tmp_path):
    """ExecuTorch's lowering decomposes a GRU and specialises the batch to the size export traced (2): the
    program's tensors are then static. The manifest says the batch is static, and the runner pads a batch of 1 (or
    the odd sample of 3) to it, so every batch size runs and matches torch (it failed at batch 1 with 0x12)."""
    from edgekit.io import IOSpec

    spec = avdigits_io.to_dict()
    io = IOSpec.from_dict({**spec, "inputs": [t for t in spec["inputs"] if t["name"] == "audio"]})
    torch.manual_seed(0)
    wrapped = Listener().eval()
    art = export_pte(wrapped, io, tmp_path / "fp32", "fp32", None, "parent", {})
    assert "batch" not in art.meta["dynamic_dims"], art.meta["dynamic_dims"]
    runner = load_runner(load_artifact(art.directory), threads=2)
    for n in (1, 3, 16):
        audio = test_feeds["audio"][:n]
        want = wrapped(audio=torch.from_numpy(audio)).detach().numpy()
        np.testing.assert_allclose(runner.run({"audio": audio})["logits"], want, atol=1e-4)


class Listener(torch.nn.Module):
    """The conformance models' GRU audio encoder (`Ear`) with a classifier head."""

    def __init__(self) -> None:
        from .conformance_models import Ear

        super().__init__()
        self.ear, self.head = Ear(), torch.nn.Linear(64, 10)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.head(self.ear(audio))
