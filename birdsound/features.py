"""Mel front end: raw PCM windows to normalised log-mel spectrograms, as an ``nn.Module``.

It is the model's first layer, so an exported model takes raw PCM and is self-contained.
It is split in two steps so training can precompute the (expensive, augmentation-free)
power mel once per recording and apply augmentations in the power domain:

``pcm [B, S] --power_mel--> [B, N_MELS, T] --normalize--> [B, 1, N_MELS, T]``
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

N_FFT = 1024
HOP_SAMPLES = 640
N_MELS = 64
FMIN_HZ = 150.0
FMAX_HZ = 15000.0
LOG_EPS = 1e-8
SORT_MEDIAN = False  # set by the ONNX export only (median via sort: same values, 2.5x slower in torch)


def n_frames(n_samples: int, hop: int = HOP_SAMPLES, n_fft: int = N_FFT) -> int:
    """Frames the front end makes of `n_samples` samples (no centre padding)."""
    return 1 + (n_samples - n_fft) // hop


class MelFrontEnd(nn.Module):
    """Power mel (torchaudio) followed by log and per-window median normalisation.

    Subtracting each mel bin's median over the window removes the stationary background
    and the recording channel's colouring, so the network sees what changes: the bird.
    """

    def __init__(self, sample_rate: int, n_mels: int = N_MELS, n_fft: int = N_FFT,
                 hop: int = HOP_SAMPLES, fmin: float = FMIN_HZ, fmax: float = FMAX_HZ):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, hop_length=hop, f_min=fmin,
            f_max=min(fmax, sample_rate / 2), n_mels=n_mels, center=False, power=2.0,
            norm="slaney", mel_scale="slaney",
        )

    def power_mel(self, pcm: torch.Tensor) -> torch.Tensor:
        """``[B, S]`` float PCM -> ``[B, n_mels, T]`` mel power."""
        return self.mel(pcm)

    @staticmethod
    def normalize(power: torch.Tensor) -> torch.Tensor:
        """``[B, n_mels, T]`` mel power -> ``[B, 1, n_mels, T]`` median-normalised log-mel."""
        logmel = torch.log(power + LOG_EPS)
        if SORT_MEDIAN:  # ONNX has no median; the lower middle of the sorted values is the same number
            mid = (logmel.shape[-1] - 1) // 2
            med = torch.sort(logmel, dim=-1).values[..., mid:mid + 1]
        else:
            med = torch.median(logmel, dim=-1, keepdim=True).values
        return (logmel - med).unsqueeze(1)

    def forward(self, pcm: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.power_mel(pcm))
