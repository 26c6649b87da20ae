"""The exported file: TorchScript with the pipeline's metadata inside it.

The metadata travels as an extra file in the TorchScript zip archive, which the libtorch
backend ignores; ``read_metadata`` reads it back with zipfile alone, without torch.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from bls.contract.metadata import METADATA_FILE, ModelMetadata

MODEL_FILENAME = "model.pt"  # the libtorch backend's default_model_filename


def save(module, meta: ModelMetadata, path: Path) -> None:
    """Save a scripted or traced ``module`` with ``meta`` inside it, replacing ``path`` at once."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.jit.save(module, str(tmp), _extra_files={METADATA_FILE: meta.to_json()})
    tmp.replace(path)  # a reader never sees half a model


def read_metadata(path: Path) -> ModelMetadata:
    """Read the metadata inside an exported file, without torch.

    Raises:
        ValueError: the file has none (it was not written by ``python -m export``).
    """
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_FILE}")]
        if not names:
            raise ValueError(f"{path} has no {METADATA_FILE}: it was not written by "
                             "`python -m export`, so the pipeline's resize, channel order and "
                             "class names are unknown")
        return ModelMetadata.from_json(archive.read(names[0]))
