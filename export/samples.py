"""Generated scenes: deterministic images for the export check, tests and the demo when
no photos are at hand (no file in this repository is a photo)."""

from __future__ import annotations

import cv2
import numpy as np


def scene(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """Generate a scene: a gradient with noise and a few filled shapes.

    Returns:
        uint8 [height, width, 3] BGR.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, 3).astype(np.float32)
    image = base + 40 * np.stack([xx / width, yy / height, (xx + yy) / (width + height)], -1)
    image += rng.normal(0, 6, image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 7))):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        rx = int(rng.integers(max(width // 20, 2), max(width // 4, 3)))
        ry = int(rng.integers(max(height // 20, 2), max(height // 4, 3)))
        if rng.random() < 0.5:
            cv2.ellipse(image, (cx, cy), (rx, ry), float(rng.uniform(0, 180)), 0, 360, color, -1)
        else:
            cv2.rectangle(image, (cx - rx, cy - ry), (cx + rx, cy + ry), color, -1)
    return image


def encode(image: np.ndarray, ext: str = ".jpg") -> bytes:
    """Encode ``image`` (uint8 [H, W, 3] BGR or [H, W]) with OpenCV as ``ext`` says.

    Raises:
        ValueError: OpenCV cannot encode it.
    """
    ok, buf = cv2.imencode(ext, image)
    if not ok:
        raise ValueError(f"OpenCV cannot encode {image.shape} {image.dtype} as {ext}")
    return buf.tobytes()
