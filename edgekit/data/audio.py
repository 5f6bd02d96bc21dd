"""Spoken digits from two offline TTS engines (espeak-ng, flite), mixed with noise, as log-mel.

Voices are (engine, speaker variant) pairs; the dataset splits by variant so that no test speaker is
heard in training, whatever the accent."""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError

SAMPLE_RATE = 16_000
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ESPEAK_ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
ESPEAK_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3",
    "Andy", "Annie", "Alex", "Denis", "Gene", "Hugo", "Jacky", "Lee", "Mario", "Michael", "Mike", "adam",
    "anika", "belinda", "benjamin", "boris", "caleb", "david", "edward", "john", "linda", "max", "norbert", "paul",
)  # fmt: skip
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")


@dataclass(frozen=True)
class Utterance:
    engine: str  # "espeak-ng" or "flite"
    speaker: str  # variant (espeak-ng) or voice (flite): the unit the splits are made of
    accent: str
    word: str
    rate: float  # 1.0 = the engine's normal speed
    pitch: float  # 0..1 across the engine's range


def speakers() -> list[tuple[str, str]]:
    return [("espeak-ng", v) for v in ESPEAK_VARIANTS] + [("flite", v) for v in FLITE_VOICES]


def require_tts() -> None:
    missing = [p for p in ("espeak-ng", "flite") if shutil.which(p) is None]
    if missing:
        raise UsageError(
            f"text-to-speech program(s) not found: {', '.join(missing)}",
            f"install the Debian package(s): apt-get install {' '.join(missing)} (make demo does this)",
        )


def _read_wav(data: bytes) -> tuple[np.ndarray, int]:
    # espeak-ng --stdout writes a streaming header with bogus sizes; read the fmt and data chunks by hand.
    if data[:4] != b"RIFF":
        raise RuntimeError("TTS did not produce a WAV stream")
    pos, rate, pcm = 12, 0, b""
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if cid == b"fmt ":
            rate = int.from_bytes(data[pos + 12 : pos + 16], "little")
        elif cid == b"data":
            pcm = data[pos + 8 : pos + 8 + min(size, len(data) - pos - 8)]
            break
        pos += 8 + size
    return np.frombuffer(pcm[: len(pcm) // 2 * 2], "<i2").astype(np.float32) / 32768.0, rate


def synthesize(u: Utterance) -> np.ndarray:
    """Raw speech at SAMPLE_RATE, float32 in [-1, 1]."""
    if u.engine == "espeak-ng":
        cmd = ["espeak-ng", "--stdout", "-v", f"{u.accent}+{u.speaker}", "-s", str(int(160 * u.rate)),
               "-p", str(int(20 + 60 * u.pitch)), u.word]  # fmt: skip
        audio, rate = _read_wav(subprocess.run(cmd, capture_output=True, check=True).stdout)
    else:
        with tempfile.NamedTemporaryFile(suffix=".wav") as f:
            subprocess.run(
                ["flite", "-voice", u.speaker, "--setf", f"duration_stretch={1 / u.rate:.3f}",
                 "--setf", f"int_f0_target_mean={int(90 + 90 * u.pitch)}", "-t", u.word, "-o", f.name],
                capture_output=True, check=True,
            )  # fmt: skip
            with wave.open(io.BytesIO(Path(f.name).read_bytes())) as w:
                rate = w.getframerate()
                audio = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
    return resample(audio, rate, SAMPLE_RATE)


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Band-limited resampling by zero-padding or truncating the spectrum."""
    if src == dst:
        return x
    n = round(len(x) * dst / src)
    spec = np.fft.rfft(x)
    out = np.zeros(n // 2 + 1, np.complex128)
    k = min(len(spec), len(out))
    out[:k] = spec[:k]
    return (np.fft.irfft(out, n) * (n / len(x))).astype(np.float32)


def place_and_mix(speech: np.ndarray, rng: np.random.Generator, snr_db: tuple[float, float]) -> np.ndarray:
    """Put the word at a random offset in a 1 s clip, with a random gain, and add noise at a random SNR."""
    speech = speech[:SAMPLE_RATE] * rng.uniform(0.3, 1.0)
    clip = np.zeros(SAMPLE_RATE, np.float32)
    start = int(rng.integers(0, SAMPLE_RATE - len(speech) + 1))
    clip[start : start + len(speech)] = speech
    power = float(np.mean(speech**2)) + 1e-10  # SNR over the spoken word, not the silence around it
    white = rng.standard_normal(SAMPLE_RATE).astype(np.float32)
    # Mix white with brown (integrated) noise so that low frequencies are covered too.
    brown = np.cumsum(rng.standard_normal(SAMPLE_RATE)).astype(np.float32)
    brown -= np.linspace(brown[0], brown[-1], SAMPLE_RATE, dtype=np.float32)
    noise = white / white.std() + rng.uniform(0, 1) * brown / (brown.std() + 1e-6)
    snr = rng.uniform(*snr_db)
    noise *= np.sqrt(power / 10 ** (snr / 10) / np.mean(noise**2))
    return clip + noise.astype(np.float32)


def _mel_filterbank(n_mels: int, n_fft: int, sr: int, fmin: float = 20.0) -> torch.Tensor:
    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595 * np.log10(1 + f / 700)

    mels = np.linspace(hz_to_mel(np.array(fmin)), hz_to_mel(np.array(sr / 2)), n_mels + 2)
    hz = 700 * (10 ** (mels / 2595) - 1)
    bins = np.fft.rfftfreq(n_fft, 1 / sr)
    fb = np.zeros((n_mels, len(bins)), np.float32)
    for i in range(n_mels):
        lo, c, hi = hz[i], hz[i + 1], hz[i + 2]
        fb[i] = np.clip(np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)), 0, None)
    return torch.from_numpy(fb)


def log_mel(clips: np.ndarray, n_mels: int = 40, win_ms: float = 25, hop_ms: float = 10) -> np.ndarray:
    """(N, samples) -> (N, 1, n_mels, frames) natural-log mel power; 1 s gives 40 x 98."""
    n_fft, hop = int(SAMPLE_RATE * win_ms / 1000), int(SAMPLE_RATE * hop_ms / 1000)
    x = torch.from_numpy(np.ascontiguousarray(clips, np.float32))
    spec = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft), center=False, return_complex=True)
    mel = _mel_filterbank(n_mels, n_fft, SAMPLE_RATE) @ spec.abs().pow(2)
    return torch.log(mel + 1e-6).unsqueeze(1).numpy()
