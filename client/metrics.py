"""Read Triton's Prometheus metrics port: the nv_* metrics and the models' own
(pipeline_bls's request metrics, bls/backend/metrics.py; the monitoring model's,
bls/monitoring/metrics.py).

Samples keep the names the server exposes. (prometheus_client's text parser appends
``_total`` to every counter sample, so ``nv_inference_request_success`` would not be
found under its own name.)"""

from __future__ import annotations

import re
import time
import urllib.request
from typing import Callable

Samples = dict[tuple[str, frozenset], float]
_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> Samples:
    """Parse Prometheus text format into {(name, frozenset of label items): value}."""
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = frozenset(_LABEL.findall(match.group(2) or ""))
            samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def scrape(url: str, timeout: float = 10) -> Samples:
    """Fetch and parse the samples at ``http://host:port/metrics``."""
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return parse(reply.read().decode())


def value(samples: Samples, name: str, **labels) -> float:
    """Look up one sample's value; 0 when absent (a counter not yet created counts nothing)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape_until(url: str, ready: Callable[[Samples], bool], timeout: float = 5.0,
                 interval: float = 0.05) -> Samples:
    """Scrape until ``ready(samples)`` holds, or ``timeout`` s have passed: the last scrape.

    pipeline_bls counts in memory and flushes its counters every 250 ms
    (bls/backend/metrics.py), so a count can lag the answer it counts by that much."""
    deadline = time.monotonic() + timeout
    samples = scrape(url)
    while not ready(samples) and time.monotonic() < deadline:
        time.sleep(interval)
        samples = scrape(url)
    return samples


def scrape_settled(url: str, prefix: str = "pipeline_", quiet_s: float = 0.3,
                   timeout: float = 10.0) -> Samples:
    """Scrape until the samples named ``prefix``... of two scrapes ``quiet_s`` apart agree
    (the counts a flush was still to bring are in), or ``timeout`` s have passed."""
    def mine(samples: Samples) -> Samples:
        return {k: v for k, v in samples.items() if k[0].startswith(prefix)}

    deadline = time.monotonic() + timeout
    samples = scrape(url)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        again = scrape(url)
        if mine(again) == mine(samples):
            return again
        samples = again
    return samples
