"""Measure drift of the answers against a reference window, by the population stability index.

PSI = sum over bins of (p - q) * ln(p / q), p the current share of a bin and q the
reference share. It is symmetric, needs no distribution assumptions and has the usual
reading: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift. Two signals are
watched: the detection scores (all detections of the window's requests) and the number
of detections per request.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

SCORE_EDGES = np.linspace(0.0, 1.0, 11)  # ten bins of 0.1
# Detections per request: 0, 1, 2, 3-4, 5-9, 10-19, 20-49, 50+
COUNT_EDGES = np.array([0, 1, 2, 3, 5, 10, 20, 50, np.inf])
# Empty bins get this share instead of 0, so a bin that appears or vanishes gives a
# large but finite PSI (the common convention).
PSI_FLOOR = 1e-4


def shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Compute the fraction of ``values`` per bin, floored at PSI_FLOOR and renormalised.

    Args:
        values: float64-convertible [K].
        edges: float [B + 1]; bin i is [edges[i], edges[i+1]) (the last bin closed).

    Returns:
        float64 [B]; uniform when no value falls in a bin.
    """
    counts, _ = np.histogram(np.asarray(values, np.float64), bins=edges)
    total = counts.sum()
    if total == 0:
        return np.full(len(counts), 1.0 / len(counts))
    p = np.maximum(counts / total, PSI_FLOOR)
    return p / p.sum()


def psi(reference: np.ndarray, current: np.ndarray, edges: np.ndarray) -> float:
    """Compute the population stability index of ``current`` against ``reference``.

    Args:
        reference, current: values [K] and [L], binned by ``edges`` (as ``shares``).
        edges: float [B + 1].
    """
    q, p = shares(reference, edges), shares(current, edges)
    return float(np.sum((p - q) * np.log(p / q)))


@dataclass(frozen=True)
class DriftSettings:
    """Configure drift detection.

    Attributes:
        reference_size: the first this-many events form the reference.
        window_size: the current window is the last this-many events.
        check_every: recompute after this many new events once both windows are full.
        threshold: PSI above which an alert is raised (0.25: a large shift).
    """

    reference_size: int = 500
    window_size: int = 500
    check_every: int = 50
    threshold: float = 0.25

    def __post_init__(self):
        for name in ("reference_size", "window_size", "check_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"drift {name} must be >= 1, got {getattr(self, name)}")
        if not self.threshold > 0:
            raise ValueError(f"drift threshold must be > 0, got {self.threshold}")


@dataclass(frozen=True)
class DriftAlert:
    """One signal's PSI passing the threshold."""

    signal: str  # "scores" or "detections"
    psi: float
    threshold: float
    events: int  # events seen when it was raised

    def to_dict(self) -> dict:
        """The alert as JSON-able data, as subscribers receive it."""
        return {"type": "alert", "kind": f"drift_{self.signal}", "psi": round(self.psi, 4),
                "threshold": self.threshold, "events": self.events}


class DriftMonitor:
    """Watch drift: feed one event at a time, get the alerts it raises.

    An alert is raised when a signal's PSI goes above the threshold, once per
    excursion: it re-arms when the PSI falls back below. Not thread-safe (the
    monitoring model feeds it from its one worker thread).
    """

    SIGNALS = {"scores": SCORE_EDGES, "detections": COUNT_EDGES}
    # Every kind of alert it raises (DriftAlert.to_dict): a fixed set, so a metric
    # labelled by kind has these series and no others.
    ALERT_KINDS = tuple(f"drift_{signal}" for signal in SIGNALS)

    def __init__(self, settings: DriftSettings = DriftSettings()):
        self.settings = settings
        self.reset()

    def reset(self) -> None:
        """Forget the reference: the next reference_size events form a new one (after a
        deliberate change, such as a new model version, the old reference is moot)."""
        self.events = 0
        self._reference = {"scores": [], "detections": []}
        self._window: deque[tuple[np.ndarray, int]] = deque(maxlen=self.settings.window_size)
        self._frozen: dict[str, np.ndarray] | None = None
        self._alerting = {name: False for name in self.SIGNALS}
        self.latest: dict[str, float] = {}

    def add(self, scores: np.ndarray, detections: int) -> list[DriftAlert]:
        """Add one event.

        Args:
            scores: float32 [N], the event's detection scores.
            detections: N.

        Returns:
            The alerts it raises (none until the reference and a window are full).
        """
        self.events += 1
        scores = np.asarray(scores, np.float32)
        if self._frozen is None:
            self._reference["scores"].append(scores)
            self._reference["detections"].append(detections)
            if self.events == self.settings.reference_size:
                self._frozen = {"scores": np.concatenate(self._reference["scores"]),
                                "detections": np.array(self._reference["detections"])}
            return []
        self._window.append((scores, detections))
        seen = self.events - self.settings.reference_size
        if len(self._window) < self.settings.window_size or seen % self.settings.check_every:
            return []
        current = {"scores": np.concatenate([s for s, _ in self._window]),
                   "detections": np.array([d for _, d in self._window])}
        alerts = []
        for name, edges in self.SIGNALS.items():
            value = psi(self._frozen[name], current[name], edges)
            self.latest[name] = value
            above = value > self.settings.threshold
            if above and not self._alerting[name]:
                alerts.append(DriftAlert(name, value, self.settings.threshold, self.events))
            self._alerting[name] = above
        return alerts
