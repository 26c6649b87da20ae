"""Store captured samples under a disk quota and a file-count cap.

A sample is two files, ``<sequence>.<image extension>`` and ``<sequence>.json``. Names
come from a counter only; the extension from a fixed table of image signatures, so no
byte of a request ever becomes part of a path. When a new sample would exceed the
quota or the cap, the oldest samples are deleted first (recent samples are the useful
ones); a sample larger than the whole quota is refused and counted.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# (signature at offset 0, extension); anything else is stored as .bin
_SIGNATURES = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF8", "gif"),
               (b"BM", "bmp"), (b"II*\x00", "tif"), (b"MM\x00*", "tif"))
_SAMPLE = re.compile(r"^(\d{10})\.(jpg|png|gif|bmp|tif|webp|bin|json)$")


def image_extension(data: bytes) -> str:
    """Name the file extension of an encoded image by its signature; "bin" if unknown."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((ext for sig, ext in _SIGNATURES if data.startswith(sig)), "bin")


@dataclass(frozen=True)
class CaptureSettings:
    """Where samples go and how much of them is kept.

    Attributes:
        directory: where samples are written (created if missing).
        max_bytes: disk quota of the samples, bytes.
        max_files: files kept (a sample is two).

    Raises:
        ValueError: a quota that cannot hold one sample.
    """

    directory: Path
    max_bytes: int = 256 * 1024 * 1024
    max_files: int = 1000

    def __post_init__(self):
        if self.max_bytes < 1 or self.max_files < 2:
            raise ValueError(f"capture quota must allow one sample: max_bytes={self.max_bytes} "
                             f"(>= 1), max_files={self.max_files} (>= 2)")


class CaptureStore:
    """Save samples as files, deleting the oldest to stay under the quota.

    ``save(image, predictions_json)`` -> the paths written, or None when refused.

    Only files this store names (``_SAMPLE``) are counted and deleted; anything else in
    the directory is left alone and does not count. Not thread-safe: the monitoring
    model writes from its one worker thread.
    """

    def __init__(self, settings: CaptureSettings):
        self.settings = settings
        self.directory = Path(settings.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._samples: dict[int, list[Path]] = {}
        for path in self.directory.iterdir():
            match = _SAMPLE.match(path.name)
            if match and path.is_file():
                self._samples.setdefault(int(match.group(1)), []).append(path)
        self._sizes = {p: p.stat().st_size for paths in self._samples.values() for p in paths}
        self._next = max(self._samples, default=0) + 1
        self.saved = 0
        self.refused = 0
        self.evicted = 0

    @property
    def bytes_used(self) -> int:
        """Bytes of the samples in the directory."""
        return sum(self._sizes.values())

    @property
    def files(self) -> int:
        """Sample files in the directory."""
        return len(self._sizes)

    def save(self, image: bytes, predictions: str) -> list[Path] | None:
        """Write one sample (the image, and the predictions as JSON), evicting old ones.

        Returns:
            The paths written; None (counted ``refused``) for a sample over the quota.
        """
        payload = [(image_extension(image), image), ("json", predictions.encode())]
        size = sum(len(data) for _, data in payload)
        if size > self.settings.max_bytes:
            self.refused += 1
            return None
        while self._samples and (self.bytes_used + size > self.settings.max_bytes
                                 or self.files + len(payload) > self.settings.max_files):
            self._evict_oldest()
        sequence, self._next = self._next, self._next + 1
        written = []
        for ext, data in payload:
            path = self.directory / f"{sequence:010d}.{ext}"
            partial = path.with_name(path.name + ".partial")
            partial.write_bytes(data)
            os.replace(partial, path)  # readers never see half a file
            self._sizes[path] = len(data)
            written.append(path)
        self._samples[sequence] = written
        self.saved += 1
        return written

    def _evict_oldest(self) -> None:
        oldest = min(self._samples)
        for path in self._samples.pop(oldest):
            path.unlink(missing_ok=True)
            self._sizes.pop(path, None)
        self.evicted += 1
