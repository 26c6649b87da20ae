"""Draw detections over their image with OpenCV: a translucent mask, a box and a
"name score" label per detection, in a colour fixed by the class."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from client.results import Detections

_GOLDEN = 0.618033988749895
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_color(index: int) -> tuple[int, int, int]:
    """Give a class index its BGR colour.

    Hues step by the golden ratio, so neighbouring indices differ strongly, and a class
    has the same colour in every image and run.
    """
    hue = int((index * _GOLDEN) % 1.0 * 180)  # OpenCV's 8-bit hue range is 0..179
    bgr = cv2.cvtColor(np.uint8([[[hue, 200, 255]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def decode_image(data: bytes) -> np.ndarray:
    """Decode an encoded image into uint8 [H, W, 3] BGR.

    EXIF orientation is applied, as the server does, so the image lines up with the
    detections.

    Raises:
        ValueError: OpenCV cannot decode it.
    """
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"OpenCV cannot decode this image ({len(data)} bytes)")
    return image


def draw_overlay(image_bgr: np.ndarray, det: Detections, masks: np.ndarray | None = None,
                 alpha: float = 0.45) -> np.ndarray:
    """Draw the detections over ``image_bgr``, into a new image.

    Lower scores are drawn first, so the most confident detection ends on top.

    Args:
        image_bgr: uint8 [H, W, 3] BGR or [H, W] grayscale, the size of det.image_size.
        det: the detections.
        masks: uint8/bool [N, H, W] (``results.decode_masks``) or None to draw boxes only.
        alpha: the masks' opacity.

    Returns:
        uint8 [H, W, 3] BGR.

    Raises:
        ValueError: the image or the masks do not match the detections.
    """
    image = image_bgr if image_bgr.ndim == 3 else cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
    height, width = image.shape[:2]
    if (height, width) != tuple(det.image_size):
        raise ValueError(f"image is {height}x{width} but the detections are for "
                         f"{det.image_size[0]}x{det.image_size[1]}")
    if masks is not None and (len(masks) != len(det) or masks.shape[1:] != (height, width)):
        raise ValueError(f"masks {list(masks.shape)} do not match {len(det)} detections "
                         f"on {height}x{width}")
    out = np.ascontiguousarray(image, np.uint8).copy()
    order = range(len(det) - 1, -1, -1)
    colors = [class_color(int(c)) for c in det.classes]
    if masks is not None:
        for i in order:
            region = masks[i].astype(bool)
            blended = out[region] * (1.0 - alpha) + np.float32(colors[i]) * alpha
            out[region] = np.clip(blended, 0, 255).astype(np.uint8)
            contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, colors[i], 1, cv2.LINE_AA)
    scale = max(0.35, min(height, width) / 1000)
    thickness = max(1, round(min(height, width) / 500))
    for i in order:
        x1, y1, x2, y2 = (int(round(v)) for v in det.boxes[i].tolist())
        cv2.rectangle(out, (x1, y1), (x2, y2), colors[i], thickness, cv2.LINE_AA)
        _label(out, f"{det.class_names[i]} {float(det.scores[i]):.2f}", x1, y1, colors[i],
               scale)
    return out


def _label(image: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int],
           scale: float) -> None:
    """Text on a filled box at the box's top-left corner: above the box when there is
    room, else just inside it; shifted left to stay in the image."""
    (tw, th), baseline = cv2.getTextSize(text, _FONT, scale, 1)
    h = th + baseline + 2
    top = y - h if y - h >= 0 else y
    x = max(0, min(x, image.shape[1] - tw - 2))
    cv2.rectangle(image, (x, top), (x + tw + 2, top + h), color, -1)
    # dark text on light colours, light text on dark ones
    luma = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
    ink = (0, 0, 0) if luma > 128 else (255, 255, 255)
    cv2.putText(image, text, (x + 1, top + th + 1), _FONT, scale, ink, 1, cv2.LINE_AA)


def write_png(path: Path, image: np.ndarray) -> Path:
    """Write ``image`` (uint8 [H, W, 3] BGR) as PNG, creating the folder; return ``path``.

    Raises:
        OSError: OpenCV could not write it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"OpenCV could not write {path}")
    return path
