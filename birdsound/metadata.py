"""What travels inside every model file, and the error for model files that cannot be used.

The model file is the single source of truth for sample rate, window, labels and the mel
front end's settings; the constants here are only the defaults of a new model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SAMPLE_RATE_HZ = 32000
WINDOW_S = 3.0
DEFAULT_FMAX_HZ = 15000.0  # top of the mel front end of models whose metadata does not say


class ModelError(Exception):
    """A model file that cannot be used; the message names the file."""


@dataclass
class Metadata:
    """Labels, sample rate, window, version and licence of a model, plus free-form `extra`
    (front end settings, parameters, MFLOPs, training facts)."""

    labels: list[str]
    sample_rate: int = SAMPLE_RATE_HZ
    window_s: float = WINDOW_S
    model_version: str = "untrained"
    license: str = "unspecified"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.sample_rate))

    @property
    def fmax_hz(self) -> float:
        """Highest frequency the model hears (its mel front end's top, at most Nyquist)."""
        fe = self.extra.get("frontend") or {}
        return float(min(fe.get("fmax_hz", DEFAULT_FMAX_HZ), self.sample_rate / 2))

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.extra)
        d.update(labels=list(self.labels), sample_rate=int(self.sample_rate),
                 window_s=float(self.window_s), model_version=self.model_version,
                 license=self.license)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Metadata":
        core = {"labels", "sample_rate", "window_s", "model_version", "license"}
        missing = {"labels", "sample_rate", "window_s"} - set(d)
        if missing:
            raise ValueError(f"metadata lacks {sorted(missing)}")
        return cls(labels=list(d["labels"]), sample_rate=int(d["sample_rate"]),
                   window_s=float(d["window_s"]), model_version=str(d.get("model_version", "")),
                   license=str(d.get("license", "")),
                   extra={k: v for k, v in d.items() if k not in core})
