import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgekit.data.avdigits import AVDigitsConfig, io_spec
from edgekit.evaluation import modality_subsets
from edgekit.models import FUSIONS, build_fusion_model, count_params
from edgekit.targets.onnx import export_onnx

IO = io_spec(AVDigitsConfig(), vocab_size=41)
VIDEO_IO = io_spec(AVDigitsConfig(video_frames=4), vocab_size=41)


def small(arch: str, io=IO):
    torch.manual_seed(0)
    return build_fusion_model(arch, "small", modalities=list(io.modalities), vocab_size=41).eval()


def test_presets_sizes():
    teacher = build_fusion_model("attention", "teacher", vocab_size=41)
    assert 3_000_000 <= count_params(teacher) <= 8_000_000
    assert count_params(small("attention")) < count_params(teacher) / 10


@pytest.mark.parametrize("arch", list(FUSIONS))
def test_missing_modality_is_ignored(arch):
    """With a modality's mask bit at 0, its input cannot change the output: it is really absent."""
    model = small(arch)
    feeds = IO.example_torch(batch=3, seed=1)
    for subset in modality_subsets(IO.modalities):
        mask = torch.tensor([[float(m in subset) for m in IO.modalities]] * 3)
        changed = IO.example_torch(batch=3, seed=2)
        mixed = {k: (feeds[k] if t.modality in subset else changed[k]) for k, t in ((t.name, t) for t in IO.inputs)}
        with torch.no_grad():
            a = model(**{**feeds, "modality_mask": mask})
            b = model(**{**mixed, "modality_mask": mask})
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b)
    with torch.no_grad():  # and a present modality does matter
        full = torch.ones(3, 3)
        assert not torch.allclose(
            model(**{**feeds, "modality_mask": full}),
            model(**{**feeds, "audio": -feeds["audio"], "modality_mask": full}),
        )


@pytest.mark.parametrize(
    ("arch", "io"), [(a, IO) for a in FUSIONS] + [("gated", VIDEO_IO)], ids=[*FUSIONS, "video+audio"]
)
def test_onnx_export_dynamic_batch_and_seq(arch, io, tmp_path):
    model = small(arch, io)
    path = export_onnx(model, io, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == io.input_names
    for batch, seq in [(1, 3), (5, 16), (2, 32)]:
        feeds = io.example_inputs(batch=batch, seed=batch, **({"seq": seq} if "seq" in io.dims else {}))
        feeds["modality_mask"][:, -1] = 0  # exercise the mask path too
        got = sess.run(None, feeds)[0]
        with torch.no_grad():
            want = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_video_audio_model_runs_frames_through_shared_cnn():
    model = small("attention", VIDEO_IO)
    assert model.modalities == ("video", "audio")
    feeds = VIDEO_IO.example_torch(batch=2)
    with torch.no_grad():
        assert model(**feeds).shape == (2, 10)
    # one 2D CNN for all frames: its parameter count does not grow with the clip length
    assert sum(p.numel() for p in model.branches["video"].frames.parameters()) == sum(
        p.numel() for p in build_fusion_model("attention", "small", ["image"]).branches["image"].parameters()
    )
