"""Raw samples for every modality of a synthetic video: face crops, body crops, voice log-mel patches.

Each identity has fixed traits drawn from its own seed; each sample adds pose, lighting and noise
so frames of one track are near-duplicates and tracks of one identity vary:

- face ``[3, 32, 32]``: an ellipse of the identity's skin tone, hair band colour and height, eye
  spacing and mouth width, shifted and lit per sample;
- body ``[3, 32, 32]``: a torso silhouette whose colour and stripe texture (frequency, angle)
  come from the identity's *outfit*, so the same person looks different across scene groups;
- voice ``[1, 32, 32]``: 0.5 s of harmonic speech-like sound at 8 kHz, the speaker's pitch and two
  formants, with vibrato and noise, as a 32-band log-mel spectrogram of 32 frames.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = ["SAMPLE_RATE", "body_crop", "face_crop", "log_mel", "voice_patch", "voice_wave"]

SAMPLE_RATE = 8000
SIZE = 32


def _traits(identity: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([identity, salt, 7919])


def _grid() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / (SIZE - 1)
    return yy, xx


def face_crop(identity: int, rng: np.random.Generator) -> np.ndarray:
    """One face sample of ``identity`` (float32 CHW in [0, 1])."""
    t = _traits(identity, 1)
    skin, hair = t.uniform(0.3, 0.95, 3), t.uniform(0.0, 0.7, 3)
    width, hair_h = t.uniform(0.28, 0.4), t.uniform(0.15, 0.35)
    eye_dx, mouth_w = t.uniform(0.1, 0.2), t.uniform(0.08, 0.2)
    yy, xx = _grid()
    cx, cy = 0.5 + rng.normal(0, 0.03), 0.52 + rng.normal(0, 0.03)
    img = np.zeros((3, SIZE, SIZE), np.float32) + rng.uniform(0.1, 0.5, (3, 1, 1)).astype(np.float32)
    face = ((xx - cx) / width) ** 2 + ((yy - cy) / 0.42) ** 2 <= 1
    img[:, face] = skin[:, None]
    top = face & (yy < cy - 0.42 + hair_h)
    img[:, top] = hair[:, None]
    for sx in (-1, 1):
        eye = (xx - (cx + sx * eye_dx)) ** 2 + (yy - (cy - 0.05)) ** 2 <= 0.035**2
        img[:, eye] = 0.05
    mouth = (np.abs(xx - cx) <= mouth_w) & (np.abs(yy - (cy + 0.2)) <= 0.025)
    img[:, mouth] = np.array([0.6, 0.1, 0.1], np.float32)[:, None]
    lit = img * rng.uniform(0.7, 1.2) + rng.normal(0, 0.05, img.shape)
    return np.clip(lit, 0, 1).astype(np.float32)


def body_crop(identity: int, outfit: int, rng: np.random.Generator) -> np.ndarray:
    """One body sample of ``identity`` wearing ``outfit`` (float32 CHW in [0, 1])."""
    t = _traits(identity, 2)
    o = np.random.default_rng([identity, outfit, 104729])
    colour, second = o.uniform(0.0, 1.0, 3), o.uniform(0.0, 1.0, 3)
    freq, angle = o.uniform(2, 8), o.uniform(0, math.pi)
    shoulders = t.uniform(0.25, 0.4)
    yy, xx = _grid()
    cx = 0.5 + rng.normal(0, 0.03)
    img = np.zeros((3, SIZE, SIZE), np.float32) + rng.uniform(0.1, 0.5, (3, 1, 1)).astype(np.float32)
    torso = (np.abs(xx - cx) <= shoulders * (1 - 0.3 * yy)) & (yy >= 0.15)
    stripes = np.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle))) > 0
    img[:, torso & stripes] = colour[:, None]
    img[:, torso & ~stripes] = second[:, None]
    head = (xx - cx) ** 2 + (yy - 0.07) ** 2 <= 0.08**2
    img[:, head] = t.uniform(0.3, 0.95, 3)[:, None]
    lit = img * rng.uniform(0.7, 1.2) + rng.normal(0, 0.05, img.shape)
    return np.clip(lit, 0, 1).astype(np.float32)


def voice_wave(identity: int, rng: np.random.Generator, seconds: float = 0.5) -> np.ndarray:
    """Harmonic speech-like sound: the speaker's pitch, formants, vibrato; float32 in [-1, 1]."""
    t = _traits(identity, 3)
    f0, f1, f2 = t.uniform(90, 260), t.uniform(400, 900), t.uniform(1100, 2600)
    n = int(SAMPLE_RATE * seconds)
    time = np.arange(n) / SAMPLE_RATE
    pitch = f0 * (1 + 0.03 * np.sin(2 * math.pi * rng.uniform(3, 7) * time)) * rng.uniform(0.95, 1.05)
    phase = 2 * math.pi * np.cumsum(pitch) / SAMPLE_RATE
    wave = np.zeros(n)
    for h in range(1, 30):
        freq = h * f0
        if freq >= SAMPLE_RATE / 2:
            break
        gain = math.exp(-(((freq - f1) / 150) ** 2)) + 0.6 * math.exp(-(((freq - f2) / 250) ** 2)) + 0.02
        wave += gain * np.sin(h * phase + rng.uniform(0, 2 * math.pi))
    envelope = np.clip(np.sin(math.pi * time / seconds) * 1.5, 0, 1)
    wave = wave * envelope + rng.normal(0, 0.05, n)
    return (wave / max(1e-6, float(np.abs(wave).max()))).astype(np.float32)


@lru_cache(maxsize=4)
def _mel_filters(n_fft: int, n_mels: int) -> np.ndarray:
    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595 * np.log10(1 + f / 700)

    mels = np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(SAMPLE_RATE / 2)), n_mels + 2)
    hz = 700 * (10 ** (mels / 2595) - 1)
    bins = np.fft.rfftfreq(n_fft, 1 / SAMPLE_RATE)
    fb = np.zeros((n_mels, bins.size), np.float64)
    for m in range(n_mels):
        lo, mid, hi = hz[m], hz[m + 1], hz[m + 2]
        fb[m] = np.clip(np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)), 0, None)
    return fb


def log_mel(wave: np.ndarray, n_mels: int = 32, frames: int = 32) -> np.ndarray:
    """``[1, n_mels, frames]`` log-mel spectrogram (Hann-windowed frames, triangular mel filters; no torchaudio)."""
    n_fft = 256
    hop = max(1, (wave.size - n_fft) // (frames - 1))
    starts = np.arange(frames) * hop
    windows = np.stack([wave[s : s + n_fft] for s in starts]) * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(windows, axis=1)) ** 2  # [frames, bins]
    mel = np.log(_mel_filters(n_fft, n_mels) @ power.T + 1e-6)
    mel = (mel - mel.mean()) / (mel.std() + 1e-6)
    return mel[None].astype(np.float32)


def voice_patch(identity: int, rng: np.random.Generator) -> np.ndarray:
    """One voice sample of ``identity`` as its log-mel patch ``[1, 32, 32]``."""
    return log_mel(voice_wave(identity, rng))
