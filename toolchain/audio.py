"""Audio input for speech families (Whisper): WAV reading and log-mel features, in numpy.

The features are what ``transformers.WhisperFeatureExtractor`` computes, re-implemented
here so an artifact runs without transformers (or torch) on the device:

    waveform float32 [n]  (mono, the extractor's sampling rate, values in [-1, 1])
      -> zero-padded / truncated to n_samples = chunk_length * sampling_rate
      -> STFT: reflect-padded by n_fft // 2 on both sides, frames of n_fft every hop_length,
         periodic Hann window, |rfft|^2                       -> power [n_fft // 2 + 1, frames + 1]
      -> mel filter bank (Slaney mel scale and area normalisation, 0..8000 Hz, as
         transformers' mel_filter_bank(norm="slaney", mel_scale="slaney"))
                                                               -> mel [n_mels, frames + 1]
      -> log10(max(mel, 1e-10)), the last frame dropped, floor at (max - 8), (x + 4) / 4
                                                               -> input_features [1, n_mels, frames]

frames = n_samples // hop_length = 2 * the encoder's max_source_positions (3000 for 30 s at
16 kHz). The settings come from the checkpoint's ``preprocessor_config.json`` at export and
travel in the artifact's manifest (``input``), so `run`, `verify` and `probe` compute the
same features. ``dither`` is not applied (it adds random noise; checkpoints ship 0.0).
"""

from __future__ import annotations

import json
import wave
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

PREPROCESSOR = "preprocessor_config.json"
# The extractor's settings (and their WhisperFeatureExtractor defaults) that shape the features.
SETTINGS = {"feature_size": 80, "sampling_rate": 16000, "hop_length": 160, "chunk_length": 30, "n_fft": 400,
            "padding_value": 0.0}


def load_settings(checkpoint: Path, n_mels: int, frames: int) -> dict[str, Any]:
    """The feature settings of a checkpoint (its preprocessor_config.json), checked against the
    model: n_mels mel bins and `frames` frames per input."""
    path = Path(checkpoint) / PREPROCESSOR
    if not path.is_file():
        raise InputError(f"{checkpoint}: no {PREPROCESSOR} (an audio model needs its feature extractor "
                         f"settings: save it with WhisperFeatureExtractor(...).save_pretrained(dir))")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise InputError(f"{path}: cannot read: {e}") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a JSON object")
    s = {k: raw.get(k, default) for k, default in SETTINGS.items()}
    for k in ("feature_size", "sampling_rate", "hop_length", "chunk_length", "n_fft"):
        if not isinstance(s[k], int) or isinstance(s[k], bool) or s[k] < 1:
            raise InputError(f"{path}: {k!r} must be a positive integer, got {s[k]!r}")
    if s["feature_size"] != n_mels:
        raise InputError(f"{path}: feature_size {s['feature_size']} but the model has {n_mels} mel bins "
                         f"(config.json num_mel_bins)")
    n_frames = s["chunk_length"] * s["sampling_rate"] // s["hop_length"]
    if n_frames != frames:
        raise InputError(f"{path}: chunk_length * sampling_rate / hop_length = {n_frames} frames, but the model "
                         f"takes {frames} (2 x config.json max_source_positions)")
    return {**s, "n_samples": s["chunk_length"] * s["sampling_rate"], "frames": frames}


# -- mel filter bank (transformers.audio_utils.mel_filter_bank, slaney/slaney) ------------------


def _hz_to_mel(freq):
    freq = np.asarray(freq, dtype=np.float64)
    logstep = 27.0 / np.log(6.4)
    mels = 3.0 * freq / 200.0
    return np.where(freq >= 1000.0, 15.0 + np.log(np.maximum(freq, 1e-12) / 1000.0) * logstep, mels)


def _mel_to_hz(mels):
    mels = np.asarray(mels, dtype=np.float64)
    logstep = np.log(6.4) / 27.0
    freq = 200.0 * mels / 3.0
    return np.where(mels >= 15.0, 1000.0 * np.exp(logstep * (mels - 15.0)), freq)


def mel_filters(n_fft: int, n_mels: int, sampling_rate: int, fmin: float = 0.0, fmax: float = 8000.0) -> np.ndarray:
    """Triangular filters [n_fft // 2 + 1, n_mels], area-normalised (Slaney)."""
    bins = n_fft // 2 + 1
    filter_freqs = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fft_freqs = np.linspace(0, sampling_rate // 2, bins)
    diff = np.diff(filter_freqs)
    slopes = filter_freqs[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (filter_freqs[2: n_mels + 2] - filter_freqs[:n_mels]))[None, :]


def log_mel(waveform: np.ndarray, settings: dict[str, Any]) -> np.ndarray:
    """Mono waveform (any length; padded or cut to n_samples) -> input_features float32 [1, n_mels, frames]."""
    n_fft, hop, n = settings["n_fft"], settings["hop_length"], settings["n_samples"]
    x = np.asarray(waveform, dtype=np.float32).reshape(-1)[:n]
    if x.size < n:
        x = np.concatenate([x, np.full(n - x.size, settings["padding_value"], dtype=np.float32)])
    x = np.pad(x.astype(np.float64), n_fft // 2, mode="reflect")
    window = np.hanning(n_fft + 1)[:-1]  # periodic Hann
    count = 1 + (x.size - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop][:count]
    power = np.abs(np.fft.rfft(frames * window, axis=1)).astype(np.float64) ** 2  # [count, bins]
    filters = mel_filters(n_fft, settings["feature_size"], settings["sampling_rate"])
    mel = np.maximum(1e-10, filters.T @ power.T)  # [n_mels, count]
    spec = np.log10(mel)[:, :-1]
    spec = np.maximum(spec, spec.max() - 8.0)
    return ((spec + 4.0) / 4.0).astype(np.float32)[None]


# -- WAV files ----------------------------------------------------------------------------------


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A PCM WAV file -> (mono float32 samples in [-1, 1], sampling rate). Channels are averaged."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such WAV file")
    try:
        with wave.open(str(p), "rb") as w:
            channels, width, rate, count = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(count)
    except (wave.Error, EOFError) as e:
        raise InputError(f"{p}: not a PCM WAV file ({e})") from None
    if width == 1:  # 8-bit PCM is unsigned
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        data = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / float(1 << 23)
    elif width == 4:
        data = np.frombuffer(raw, dtype="<i4").astype(np.float32) / float(1 << 31)
    else:
        raise InputError(f"{p}: {8 * width}-bit samples are not supported (PCM 8/16/24/32-bit)")
    if data.size == 0:
        raise InputError(f"{p}: the WAV file has no samples")
    return data.reshape(-1, channels).mean(axis=1), rate


def write_wav(path: str | Path, samples: np.ndarray, rate: int) -> None:
    """Mono float samples in [-1, 1] -> a 16-bit PCM WAV file."""
    pcm = (np.clip(np.asarray(samples, dtype=np.float64), -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def wav_features(path: str | Path, settings: dict[str, Any], truncate: bool = False) -> np.ndarray:
    """A WAV file -> input_features [1, n_mels, frames] with the artifact's feature settings."""
    samples, rate = read_wav(path)
    if rate != settings["sampling_rate"]:
        raise InputError(f"{path}: sampled at {rate} Hz; the model takes {settings['sampling_rate']} Hz audio "
                         f"(resample it first, e.g. ffmpeg -i in.wav -ar {settings['sampling_rate']} out.wav)")
    seconds = settings["n_samples"] / rate
    if samples.size > settings["n_samples"] and not truncate:
        raise InputError(f"{path}: {samples.size / rate:.2f} s of audio; the model takes at most {seconds:g} s "
                         f"per input (pass --truncate to keep the first {seconds:g} s)")
    return log_mel(samples, settings)


def synthetic(kind: str, settings: dict[str, Any], seconds: float | None = None) -> np.ndarray:
    """Deterministic test signals (no recordings in the repository): "chirp" (a rising sweep),
    "tones" (two steady tones), "noise" (amplitude-modulated noise, fixed seed)."""
    rate = settings["sampling_rate"]
    n = int(rate * (seconds if seconds is not None else 0.8 * settings["n_samples"] / rate))
    t = np.arange(n) / rate
    top = min(4000.0, rate / 2.5)
    if kind == "chirp":
        f0, f1 = 0.02 * top, top
        return (0.5 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * t[-1])))).astype(np.float32)
    if kind == "tones":
        return (0.3 * np.sin(2 * np.pi * 0.11 * top * t) + 0.2 * np.sin(2 * np.pi * 0.37 * top * t)).astype(np.float32)
    if kind == "noise":
        rng = np.random.default_rng(0)
        return (0.3 * rng.standard_normal(n) * (0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t))).astype(np.float32)
    raise InputError(f"unknown synthetic signal {kind!r}; choose chirp, tones or noise")


SYNTHETIC = ("chirp", "tones", "noise")
