"""Script or trace an eager model, check it against the eager model, write it.

Source-independent: the torchvision and detectron2 exports build an eager module that
already follows the contract, then call ``export_module``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from bls.contract.metadata import ModelMetadata
from bls.pipeline.steps import prepare
from export import samples
from export.torchscript import save
from export.verify import ExportMismatch, check_outputs, compare

METHODS = ("script", "trace")


def names_from_file(path: Path, count: int, what: str) -> tuple[str, ...]:
    """Read class names from ``path``, one per line (blank lines skipped).

    Args:
        path: the names file.
        count: the model's number of classes.
        what: what the model's classes are, for the message.

    Raises:
        ValueError: the file does not hold ``count`` names.
    """
    names = tuple(line.strip() for line in Path(path).read_text().splitlines() if line.strip())
    if len(names) != count:
        raise ValueError(f"{path} has {len(names)} names; the model has {count} classes "
                         f"({what})")
    return names


def sample_inputs(meta: ModelMetadata, images: Sequence[bytes] = ()) -> list[torch.Tensor]:
    """Make model inputs exactly as the pipeline makes them (decode, resize, layout).

    Args:
        meta: the export's metadata (channel order, resize).
        images: encoded images; none: a generated scene.

    Returns:
        One uint8 [3, H, W] tensor per image.
    """
    images = list(images) or [samples.encode(samples.scene(480, 640, seed=0))]
    return [torch.from_numpy(prepare(data, meta).model_input) for data in images]


def export_module(eager: torch.nn.Module, meta: ModelMetadata, output: Path,
                  method: str = "script", images: Sequence[bytes] = (), log=print) -> Path:
    """Export ``eager`` (forward(image uint8 [3, H, W]) -> contract outputs) to ``output``.

    The exported module is saved, loaded back and run on every sample; any output
    that differs from the eager model beyond verify.TOLERANCES aborts the export and
    nothing is written.

    Args:
        eager: the module to export.
        meta: the metadata saved inside the file.
        output: where the file goes.
        method: "script" or "trace".
        images: encoded sample images; none: a generated scene.
        log: prints the comparison.

    Returns:
        ``output``.

    Raises:
        ValueError: ``method`` is neither.
        ExportMismatch: an output differs beyond verify.TOLERANCES.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    eager = eager.eval()
    inputs = sample_inputs(meta, images)
    with torch.no_grad():
        if method == "script":
            exported = torch.jit.script(eager)
        else:
            exported = torch.jit.trace(eager, (inputs[0],), check_trace=False)
    specs = meta.outputs
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / "model.pt"
        save(exported, meta, candidate)
        reloaded = torch.jit.load(str(candidate), map_location="cpu")
        failed = False
        for i, image in enumerate(inputs):
            with torch.inference_mode():
                reference = eager(image)
                result = reloaded(image)
            check_outputs(result, specs)
            diffs = compare(reference, result, specs)
            log(f"sample {i} {list(image.shape)}: {method}ed vs eager "
                f"({len(result[0])} detections)")
            for d in diffs:
                log(str(d))
            failed |= not all(d.ok for d in diffs)
        if failed:
            raise ExportMismatch(f"the {method}ed model disagrees with the eager model "
                                 "(see the differences above); nothing was written")
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(candidate, output)
    return output
