"""Structured pruning: every fusion prunes and runs, ratios reach only their part, widths are rounded, whole heads
go, pruned models export to ONNX with a dynamic sequence and round-trip through a model package."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from torch import nn

from edgekit.data import load_split, with_modalities
from edgekit.data.avdigits import AVDigitsConfig, io_spec
from edgekit.errors import UsageError
from edgekit.io import IOSpec
from edgekit.loading import load_model
from edgekit.models import FUSIONS, build_fusion_model
from edgekit.stages.heads import PrunedAttention, head_slices, keep_heads, prune_heads
from edgekit.stages.prune import FACTORY, PruneConfig, measure, prune, save_pruned
from edgekit.targets.onnx import export_onnx

IO = io_spec(AVDigitsConfig(), 41)
VIDEO_IO = io_spec(AVDigitsConfig(video_frames=4), 41)
# The teacher's widths and heads with fewer layers, so that a test stays quick.
TEACHER_LIKE = {"image": {"depth": 3}, "text": {"depth": 1}, "audio": {"depth": 2}}
ALL_HALF = PruneConfig(ratios={"image": 0.5, "text": 0.5, "audio": 0.5, "fusion": 0.5}, head_ratio=0.5)


pytestmark = pytest.mark.usefixtures("one_thread")


KWARGS = {"modalities": list(IO.modalities), "vocab_size": 41, "max_len": 32}


def build(arch: str = "attention", preset: str = "small", io=IO) -> nn.Module:
    torch.manual_seed(0)
    overrides = TEACHER_LIKE if preset == "teacher" else None
    return build_fusion_model(arch, preset, **{**KWARGS, "modalities": list(io.modalities)}, overrides=overrides).eval()


@pytest.fixture(scope="module")
def real_feeds() -> dict[str, torch.Tensor]:
    """Twelve AV-digits test samples with every modality present."""
    feeds, _ = next(load_split("avdigits", "test").batches(12))
    return {k: torch.from_numpy(v) for k, v in with_modalities(IO, feeds, IO.modalities).items()}


def run(model: nn.Module, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**feeds)


def attention_params(model: nn.Module) -> int:
    layers = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention | PrunedAttention)]
    return sum(p.numel() for m in layers for p in m.parameters())


def branch_params(model: nn.Module) -> dict[str, int]:
    return {m: sum(p.numel() for p in b.parameters()) for m, b in model.branches.items()}


@pytest.mark.parametrize("preset", ["small", "teacher"])
@pytest.mark.parametrize("arch", list(FUSIONS))
def test_every_fusion_prunes_and_runs(arch, preset):
    model = build(arch, preset)
    result = prune(model, IO, ALL_HALF)
    pruned = result.model
    out = run(pruned, IO.example_torch(batch=3))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    assert result.parts["total"].params_after < result.parts["total"].params_before
    assert result.parts["total"].macs_after < result.parts["total"].macs_before
    for part in ("image", "text", "audio"):
        assert result.parts[part].params_after < result.parts[part].params_before, part
    assert sum(r.params_after for k, r in result.parts.items() if k != "total") == result.parts["total"].params_after
    # the MACs of layers left whole are a share of their own part's (a fusion block's projections are the branches')
    assert all(0 <= r.whole_macs <= r.macs_before for r in result.parts.values()), result.parts
    heads = {n: m.num_heads for n, m in pruned.named_modules() if isinstance(m, PrunedAttention)}
    full = 8 if preset == "teacher" else 4
    assert heads and set(heads.values()) == {full // 2}
    assert attention_params(pruned) < attention_params(model)
    # Widths with a fixed meaning stay: inputs (stems, vocabulary, positions) and the class scores.
    assert pruned.branches.image.features[0][0].in_channels == 1
    assert pruned.branches.audio.features[0][0].in_channels == 1
    assert pruned.branches.text.tokens.num_embeddings == 41 and pruned.branches.text.positions.num_embeddings == 32
    assert pruned.branches.text.tokens.embedding_dim == model.branches.text.tokens.embedding_dim
    assert model.branches.text.encoder.layers[0].self_attn.num_heads == full  # the input model is left as it was
    # The modality mask keeps its width and meaning: a masked-out modality's input cannot change the output.
    feeds = {**IO.example_torch(batch=2), "modality_mask": torch.tensor([[1.0, 0.0, 1.0]] * 2)}
    other = {**feeds, "text_ids": torch.flip(feeds["text_ids"], [1]), "text_mask": torch.ones_like(feeds["text_mask"])}
    torch.testing.assert_close(run(pruned, feeds), run(pruned, other))
    json.dumps(result.as_dict())


def test_video_branch_prunes():
    result = prune(build(io=VIDEO_IO), VIDEO_IO, PruneConfig(ratios={"video": 0.5, "fusion": 0.5}))
    assert run(result.model, VIDEO_IO.example_torch(batch=2)).shape == (2, 10)
    assert result.parts["video"].params_after < result.parts["video"].params_before
    assert result.parts["audio"].params_after == result.parts["audio"].params_before


def test_a_flatten_into_a_linear_prunes_beside_a_recurrent_branch():
    """A user's CNN branch that flattens [channels, 7, 7] into a Linear, beside a GRU branch: a channel pruned is 49
    input features of the Linear (torch-pruning alone mapped one per channel here, and the model did not run)."""
    from .conformance_models import build_intensity
    from .test_tasks import IO

    io = IOSpec.from_dict(IO)
    result = prune(build_intensity(), io, PruneConfig(global_ratio=0.3))
    eye = result.model.eye
    assert eye[2].out_channels < 32 and eye[5].in_features == eye[2].out_channels * 7 * 7
    assert run(result.model, io.example_torch(batch=2)).shape == (2, 1)


@pytest.mark.parametrize("part", ["image", "text", "audio", "fusion"])
def test_a_ratio_shrinks_only_its_part(part):
    model = build("intermediate")
    pruned = prune(model, IO, PruneConfig(ratios={part: 0.5})).model
    before, after = branch_params(model), branch_params(pruned)
    for m in model.modalities:
        assert (after[m] < before[m]) == (m == part), m
    hidden = model.fusion.mlp[-2].out_features
    assert (pruned.fusion.mlp[-2].out_features < hidden) == (part == "fusion")
    assert pruned.classifier.out_features == 10


def test_global_ratio_ranks_across_parts():
    model = build(preset="teacher")
    result = prune(model, IO, PruneConfig(global_ratio=0.5, round_to=8))
    assert run(result.model, IO.example_torch(batch=2)).shape == (2, 10)
    assert result.parts["total"].params_after < 0.7 * result.parts["total"].params_before
    widths = [m.out_channels for m in result.model.modules() if isinstance(m, nn.Conv2d)]
    assert min(widths) >= 8


@pytest.mark.parametrize("round_to", [8, 16])
def test_round_to_gives_multiples(round_to):
    model = build("attention", "teacher")
    pruned = prune(
        model, IO, PruneConfig(ratios=dict.fromkeys(["image", "text", "audio", "fusion"], 0.3), round_to=round_to)
    ).model
    old = dict(model.named_modules())
    changed = 0
    for name, m in pruned.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            width = m.weight.shape[0]
            if width != old[name].weight.shape[0]:
                changed += 1
                assert width % round_to == 0 and width >= round_to, (name, width)
    assert changed > 5


def test_keeping_every_head_computes_the_same_attention():
    mha = build().branches.text.encoder.layers[0].self_attn
    every = keep_heads(mha, range(mha.num_heads)).eval()
    x = torch.randn(3, 7, mha.embed_dim)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 4:] = True
    with torch.no_grad():
        want = mha(x, x, x, key_padding_mask=pad, need_weights=False)[0]
        got = every(x, x, x, key_padding_mask=pad, need_weights=False)[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    model = build()
    before = measure(model, IO)["text"]
    for layer in model.branches.text.encoder.layers:
        layer.self_attn = keep_heads(layer.self_attn, range(layer.self_attn.num_heads))
    assert measure(model, IO)["text"] == before  # same params, and the MAC counter sees the same attention


def test_head_ratio_zero_changes_nothing(real_feeds):
    model = build("gated")
    result = prune(model, IO, PruneConfig(head_ratio=0.0))
    assert set(result.heads.values()) == {(4, 4)}
    assert not any(isinstance(m, PrunedAttention) for m in result.model.modules())
    assert torch.equal(run(result.model, real_feeds), run(model, real_feeds))


def test_the_least_important_heads_go(real_feeds):
    """Silence heads 1 and 3 of every layer (zero value rows and out_proj columns): head pruning at 0.5 must pick
    exactly those, and removing them must not change the outputs on real samples."""
    model = build("attention")
    with torch.no_grad():
        for layer in model.branches.text.encoder.layers:
            w_in, b_in, w_out, _ = head_slices(layer.self_attn)
            for h in (1, 3):
                w_in[:, h] *= 0.01
                w_in[2, h] = 0.0
                b_in[2, h] = 0.0
                w_out[:, h] = 0.0
    want = run(model, real_feeds)
    report = prune_heads(model, 0.5)
    assert set(report.values()) == {(4, 2)}
    for layer in model.branches.text.encoder.layers:
        attn = layer.self_attn
        assert isinstance(attn, PrunedAttention)
        assert (attn.num_heads, attn.head_dim, attn.embed_dim) == (2, 16, 64)
        assert attn.in_proj.weight.shape == (3 * 2 * 16, 64) and attn.out_proj.weight.shape == (64, 32)
    torch.testing.assert_close(run(model, real_feeds), want, atol=1e-5, rtol=1e-5)


def test_pruned_model_exports_with_a_dynamic_sequence(real_feeds, tmp_path):
    pruned = prune(build("attention"), IO, ALL_HALF).model
    path = export_onnx(pruned, IO, tmp_path / "pruned.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for seq in (5, 32):
        for batch in (1, 3):
            feeds = {k: v[:batch] for k, v in real_feeds.items()}
            if seq < 16:  # keep the first tokens; every sample has at least one
                feeds["text_ids"], feeds["text_mask"] = feeds["text_ids"][:, :seq], feeds["text_mask"][:, :seq]
            else:  # pad with masked-out tokens
                pad = (0, seq - feeds["text_ids"].shape[1])
                feeds["text_ids"] = nn.functional.pad(feeds["text_ids"], pad)
                feeds["text_mask"] = nn.functional.pad(feeds["text_mask"], pad)
            got = session.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
            np.testing.assert_allclose(got, run(pruned, feeds).numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("config", "names"),
    [
        (PruneConfig(ratios={"audio": 1.0}), ["'audio'", "[0, 1)"]),
        (PruneConfig(ratios={"image": -0.1}), ["'image'", "[0, 1)"]),
        (PruneConfig(global_ratio=1.5), ["'global'", "[0, 1)"]),
        (PruneConfig(head_ratio=1.0), ["'heads'", "[0, 1)"]),
        (PruneConfig(ratios={"lidar": 0.5}), ["lidar", "image, text, audio, fusion"]),
        (PruneConfig(ratios={"text": 0.5}, global_ratio=0.5), ["both"]),
        (PruneConfig(round_to=0), ["round_to"]),
        (PruneConfig(importance="taylor"), ["taylor", "l2"]),
    ],
)
def test_bad_config_is_a_usage_error(config, names):
    model = build()
    with pytest.raises(UsageError) as e:
        prune(model, IO, config)
    assert e.value.exit_code == 2
    assert all(n in str(e.value) for n in names), str(e.value)


@pytest.mark.parametrize("arch", ["late", "attention"])
def test_save_and_load_round_trip(arch, real_feeds, tmp_path):
    pruned = prune(build(arch, "teacher"), IO, ALL_HALF).model
    base = {"factory": "edgekit.models:build_fusion_model", "kwargs": {**KWARGS, "arch": arch, "preset": "teacher",
                                                                       "overrides": TEACHER_LIKE}}  # fmt: skip
    path = save_pruned(pruned, IO, tmp_path / "pkg", base, labels=[str(i) for i in range(10)], meta={"stage": "prune"})
    manifest = yaml.safe_load((path / "edgekit-model.yaml").read_text())
    assert manifest["factory"] == FACTORY and manifest["weights"] == "model.safetensors"
    assert {h["num_heads"] for h in manifest["kwargs"]["heads"].values()} == {4}
    loaded = load_model(path)
    assert loaded.labels == tuple(str(i) for i in range(10)) and loaded.io == IO
    assert torch.equal(run(loaded.model, real_feeds), run(pruned, real_feeds))


def test_hugging_face_heads_go_whole_and_the_model_rebuilds(real_feeds):
    """all-MiniLM-L6-v2 (transformers, pretrained) inside a user's fusion model: silence half the heads of every
    layer; head pruning at 0.5 removes exactly those, in place (transformers 5 has no prune_heads), the outputs on
    real samples do not change, and the package factory rebuilds the pruned shapes from its recorded kwargs."""
    from edgekit.data.text import WordTokenizer
    from edgekit.stages.prune import architecture, load_pruned_architecture
    from tests.conformance_models import build_pretrained

    vocab = WordTokenizer().vocab
    torch.manual_seed(0)
    model = build_pretrained(vocab, pretrained=True).eval()
    feeds = {k: v for k, v in real_feeds.items() if k != "modality_mask"}
    silenced = [1, 4, 5, 7, 9, 10]
    with torch.no_grad():
        for layer in model.prose.bert.encoder.layer:
            attn, out = layer.attention.self, layer.attention.output.dense
            for h in silenced:
                rows = slice(h * attn.attention_head_size, (h + 1) * attn.attention_head_size)
                attn.query.weight[rows] *= 0.01
                attn.value.weight[rows], attn.value.bias[rows], out.weight[:, rows] = 0.0, 0.0, 0.0
    want = run(model, feeds)
    report = prune_heads(model, 0.5)
    assert set(report.values()) == {(12, 6)} and len(report) == 6
    for layer in model.prose.bert.encoder.layer:
        attn = layer.attention.self
        assert (attn.num_attention_heads, attn.all_head_size, attn.query.weight.shape) == (6, 192, (192, 384))
        assert layer.attention.output.dense.weight.shape == (384, 192)
    torch.testing.assert_close(run(model, feeds), want, atol=1e-5, rtol=1e-5)
    kwargs = architecture(model, {"factory": "tests.conformance_models:build_pretrained", "kwargs": {"vocab": vocab}})
    assert len(kwargs["heads"]) == 6 and all(h == {"num_heads": 6, "head_dim": 32} for h in kwargs["heads"].values())
    rebuilt = load_pruned_architecture(**kwargs)
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(run(rebuilt.eval(), feeds), want, atol=1e-5, rtol=1e-5)
