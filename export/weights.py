"""torchvision's COCO weights for Mask R-CNN, when they can be had quickly.

``coco_weights()`` finds them in torch's hub cache (where torchvision itself keeps them,
``$TORCH_HOME/hub/checkpoints``), or downloads them there within a deadline, checking
the SHA-256 prefix torchvision puts in the file name. It never waits on the network for
longer than asked: a closed network (CI, this machine) fails at once or at the connect
timeout, and a slow link is abandoned at the deadline. The demo uses this; the export
itself downloads nothing unless asked (``--pretrained``).
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

COCO_URL = "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
CONNECT_TIMEOUT_S = 5.0
CHUNK = 1 << 20


@dataclass(frozen=True)
class Weights:
    """Hold the weights found, or why there are none.

    Attributes:
        path: the state dict file, or None.
        how: where it came from, or why there is none (for the demo's banner).
    """

    path: Path | None
    how: str


def hub_checkpoints() -> Path:
    """Find torch.hub's checkpoint folder as torch computes it, without importing torch.

    $TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch.
    """
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch")
    return Path(home) / "hub" / "checkpoints"


def sha_prefix(url: str) -> str:
    """Read the SHA-256 prefix torchvision names its files with: ``name-<prefix>.pth``."""
    return Path(url).stem.rsplit("-", 1)[-1]


def download(url: str, target: Path, deadline_s: float) -> str | None:
    """Fetch ``url`` to ``target`` (through a .partial file) within ``deadline_s``
    seconds and check its SHA-256 prefix.

    Returns:
        None on success, else why not.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    start = time.monotonic()
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=CONNECT_TIMEOUT_S) as reply, \
                open(partial, "wb") as out:
            while chunk := reply.read1(CHUNK):  # what has arrived: the deadline holds
                digest.update(chunk)
                out.write(chunk)
                if time.monotonic() - start > deadline_s:
                    return f"not downloaded within {deadline_s:g} s"
    except (OSError, ValueError) as e:  # refused, unreachable, timed out, HTTP error
        return f"cannot be downloaded: {type(e).__name__}: {e}"
    if not digest.hexdigest().startswith(sha_prefix(url)):
        partial.unlink(missing_ok=True)
        return f"downloaded file's SHA-256 does not start with {sha_prefix(url)}"
    os.replace(partial, target)
    return None


def coco_weights(deadline_s: float, url: str = COCO_URL, cache: Path | None = None) -> Weights:
    """Find torchvision's COCO weights: cached, or downloaded within ``deadline_s``.

    Args:
        deadline_s: seconds the download may take; 0: only the cache is looked at.
        url: the weights' URL.
        cache: the folder they are kept in; None: hub_checkpoints().
    """
    target = (cache or hub_checkpoints()) / Path(url).name
    if target.is_file():
        return Weights(target, f"torchvision's COCO weights from the cache ({target})")
    if deadline_s <= 0:
        return Weights(None, f"torchvision's COCO weights are not in the cache ({target})")
    why = download(url, target, deadline_s)
    target.with_name(target.name + ".partial").unlink(missing_ok=True)
    if why is None:
        return Weights(target, f"torchvision's COCO weights, downloaded to {target}")
    return Weights(None, f"torchvision's COCO weights are not in the cache and {why}")
