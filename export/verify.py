"""Traced/scripted vs eager: the export refuses to write a model that disagrees."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bls.contract.tensors import TensorSpec


class ExportMismatch(RuntimeError):
    """The exported model disagrees with the eager one, or breaks the contract."""


@dataclass(frozen=True)
class Difference:
    """Hold how one output of the exported model differs from the eager model's.

    Attributes:
        name: the output's contract name.
        shapes: (eager shape, exported shape).
        max_abs: the largest absolute difference; inf when the shapes differ.
        tolerance: the largest allowed (TOLERANCES).
    """

    name: str
    shapes: tuple[tuple[int, ...], tuple[int, ...]]
    max_abs: float  # inf when shapes differ
    tolerance: float

    @property
    def ok(self) -> bool:
        """Whether the shapes are equal and the difference within the tolerance."""
        return self.shapes[0] == self.shapes[1] and self.max_abs <= self.tolerance

    def __str__(self) -> str:
        status = "ok" if self.ok else "MISMATCH"
        shapes = (f"shape {list(self.shapes[0])}" if self.shapes[0] == self.shapes[1]
                  else f"shapes {list(self.shapes[0])} vs {list(self.shapes[1])}")
        return (f"  {self.name:<16} {shapes:<24} max |diff| {self.max_abs:.3g} "
                f"(tolerance {self.tolerance:g}) {status}")


# Per-output absolute tolerances. Boxes are in pixels; scores and masks in [0, 1];
# integers must match exactly. Scripting reorders nothing, so these are loose bounds
# for float reassociation, not for model changes.
TOLERANCES = {"boxes": 1e-2, "masks": 1e-3, "scores": 1e-4, "classes": 0, "image_size": 0}


def compare(eager: tuple[torch.Tensor, ...], exported: tuple[torch.Tensor, ...],
            specs: tuple[TensorSpec, ...]) -> list[Difference]:
    """Compare the eager and exported models' outputs, output by output.

    Args:
        eager, exported: the two models' outputs, in the order of ``specs``.
        specs: the model's output TensorSpecs.

    Returns:
        One Difference per output.

    Raises:
        ExportMismatch: either model gave a different number of outputs.
    """
    if len(eager) != len(specs) or len(exported) != len(specs):
        raise ExportMismatch(f"expected {len(specs)} outputs ({[s.name for s in specs]}), "
                             f"eager gave {len(eager)}, exported gave {len(exported)}")
    diffs = []
    for spec, a, b in zip(specs, eager, exported):
        a, b = a.detach().cpu().numpy(), b.detach().cpu().numpy()
        field = spec.name.rsplit("__", 1)[0]
        if a.shape == b.shape:
            d = np.abs(a.astype(np.float64) - b.astype(np.float64))
            max_abs = float(d.max()) if d.size else 0.0
        else:
            max_abs = float("inf")
        diffs.append(Difference(spec.name, (a.shape, b.shape), max_abs, TOLERANCES[field]))
    return diffs


def check_outputs(outputs: tuple[torch.Tensor, ...], specs: tuple[TensorSpec, ...]) -> None:
    """Check that the outputs have the contract's dtypes and fixed dims.

    Raises:
        ExportMismatch: naming the first output that does not.
    """
    for spec, t in zip(specs, outputs):
        want = torch.from_numpy(np.zeros(0, spec.numpy_dtype)).dtype
        fixed_ok = len(t.shape) == len(spec.dims) and all(
            d == -1 or d == s for d, s in zip(spec.dims, t.shape))
        if t.dtype != want or not fixed_ok:
            raise ExportMismatch(f"output {spec.name}: expected {spec.dtype} {list(spec.dims)}, "
                                 f"got {t.dtype} {list(t.shape)}")
