import json
import re

import numpy as np
import pytest

from edgekit.data import AVDigitsConfig, build_avdigits, from_arrays, load_npz_split, with_modalities
from edgekit.data.audio import SAMPLE_RATE, Utterance, log_mel, place_and_mix, synthesize
from edgekit.data.avdigits import _occlude
from edgekit.data.text import CLS, PAD, UNK, WordTokenizer, hint
from edgekit.errors import UsageError
from edgekit.evaluation import scores

SMALL = AVDigitsConfig(n_samples=200, seed=3)


def test_default_build_is_real_and_split_by_speaker(avdigits):
    meta = json.loads((avdigits / "meta.json").read_text())
    assert sum(s["samples"] for s in meta["splits"].values()) >= 1500
    speakers = {k: set(v["speakers"]) for k, v in meta["splits"].items()}
    assert not speakers["train"] & speakers["test"] and not speakers["train"] & speakers["val"]
    assert not speakers["val"] & speakers["test"]
    train = load_npz_split(avdigits, "train")
    feeds, y = next(train.batches(len(train)))
    assert feeds["audio"].shape[1:] == (1, 40, 98) and feeds["image"].shape[1:] == (1, 28, 28)
    assert np.bincount(y, minlength=10).min() >= len(y) // 10 - 1  # balanced classes
    # audio is normalised with training statistics: roughly zero mean, unit variance
    assert abs(float(feeds["audio"].mean())) < 0.05 and 0.9 < float(feeds["audio"].std()) < 1.1


def test_occlusion_masks_large_blocks_of_the_requested_share():
    hidden = (_occlude(np.ones((2000, 28, 28), np.float32), 0.6, np.random.default_rng(0)) == 0).sum(axis=(1, 2))
    assert 0.55 < np.mean(hidden > 0) < 0.65
    assert hidden[hidden > 0].min() >= 14 * 14


def test_build_is_deterministic_and_cached(tmp_path):
    a = build_avdigits(SMALL, tmp_path / "a")
    b = build_avdigits(SMALL, tmp_path / "b")
    for split in ("train", "val", "test"):
        za, zb = np.load(a / f"{split}.npz"), np.load(b / f"{split}.npz")
        assert za.files == zb.files
        for k in za.files:
            np.testing.assert_array_equal(za[k], zb[k])
    mtime = (a / "meta.json").stat().st_mtime_ns
    assert build_avdigits(SMALL, tmp_path / "a") == a and (a / "meta.json").stat().st_mtime_ns == mtime
    other = AVDigitsConfig(n_samples=200, seed=4)
    assert other.key() != SMALL.key()


def test_a_build_another_process_holds_is_waited_for_not_repeated(tmp_path):
    """Two processes that want the same cache entry at once: the second waits on the first's lock, then finds the
    build done and returns it without building again (the split files are the first's, untouched)."""
    import subprocess
    import sys
    import time

    from edgekit.fsutil import cache_lock

    out, ready = tmp_path / "shared", build_avdigits(SMALL, tmp_path / "built")  # what the first process builds
    config = f"AVDigitsConfig(n_samples={SMALL.n_samples}, seed={SMALL.seed})"
    script = f"import sys; from edgekit.data import *; print(build_avdigits({config}, sys.argv[1]))"
    with cache_lock(out):  # the first process, building
        second = subprocess.Popen([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, text=True)
        time.sleep(3)  # long enough to import EdgeKit and reach the lock
        assert second.poll() is None and not out.exists()  # it waits instead of building beside the first
        ready.rename(out)  # the first one's build lands
        mtime = (out / "train.npz").stat().st_mtime_ns
    assert second.communicate(timeout=120)[0].strip() == str(out) and second.returncode == 0
    assert (out / "train.npz").stat().st_mtime_ns == mtime


def test_video_clips_reveal_the_digit(tmp_path):
    d = build_avdigits(AVDigitsConfig(n_samples=100, video_frames=6), tmp_path)
    z = np.load(d / "train.npz")
    assert "image" not in z.files and "text_ids" not in z.files
    video = z["video"]
    assert video.shape[1:] == (6, 1, 28, 28)
    ink = (video > video.min() + 0.5).reshape(len(video), 6, -1).sum(-1)
    assert (ink[:, -1] >= ink[:, 0]).all() and (ink[:, -1] > ink[:, 0]).mean() > 0.9  # strokes appear over time


def test_tts_engines_speak_and_features_have_the_documented_shape():
    rng = np.random.default_rng(0)
    clips = [synthesize(Utterance("espeak-ng", "f3", "en-gb", "seven", 1.0, 0.5)),
             synthesize(Utterance("flite", "slt", "", "seven", 1.0, 0.5))]  # fmt: skip
    for c in clips:
        assert 0.2 * SAMPLE_RATE < len(c) < SAMPLE_RATE and c.std() > 0.01
    mel = log_mel(np.stack([place_and_mix(c, rng, (10, 10)) for c in clips]))
    assert mel.shape == (2, 1, 40, 98) and np.isfinite(mel).all()


def test_tokenizer_is_deterministic_and_hints_are_partial():
    tok = WordTokenizer()
    rng = np.random.default_rng(0)
    texts = [hint(d % 10, rng) for d in range(200)]
    ids, mask = tok.encode(texts[0], 16)
    assert ids[0] == CLS and (ids[mask == 0] == PAD).all()
    assert all(UNK not in tok.encode(t, 16)[0] for t in texts)  # the shipped vocab covers every hint
    assert len({tuple(tok.encode(t, 16)[0]) for t in texts}) < 150  # hints repeat across digits


def test_adapter_errors_and_modality_subsets(tmp_path, avdigits_io):
    with pytest.raises(UsageError, match=re.escape("has no train.npz (it is empty)")):
        load_npz_split(tmp_path, "train")
    ds = from_arrays({"audio": np.ones((4, 1, 40, 98), np.float32)}, np.arange(4))
    feeds, _ = next(ds.batches(4))
    out = with_modalities(avdigits_io, feeds, ("audio",))
    np.testing.assert_array_equal(out["modality_mask"], [[0, 0, 1]] * 4)


def test_macro_f1():
    s = scores(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]))
    assert s.accuracy == 0.75 and s.values["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
