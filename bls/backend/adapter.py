"""The ``TritonPythonModel`` class of a model.py, made from a class of bls.

Triton's Python backend instantiates ``TritonPythonModel`` from each model.py and calls
``initialize(args)``, ``execute(requests)`` and ``finalize()``. Every Python model of this
project does the same in them: build its handler from ``pb_utils``, the model config and
which instance it is, then hand each call to it. So a model.py is one line over a handler
of bls, which bls.testing's double tests exactly as the stub runs it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol


@dataclass(frozen=True)
class ModelInstance:
    """Which instance of a model this is, from ``initialize``'s args.

    Attributes:
        name: Triton's instance name (``pipeline_bls_0_0``).
        kind: ``CPU``, ``GPU`` or ``MODEL``, the instance_group kind.
        device_id: the GPU Triton assigned to the instance (0 for a CPU instance).
    """

    name: str = ""
    kind: str = "CPU"
    device_id: int = 0

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> "ModelInstance":
        """Read it from the args Triton hands to ``initialize``."""
        return cls(args.get("model_instance_name", ""), args.get("model_instance_kind", "CPU"),
                   int(args.get("model_instance_device_id") or 0))


class Handler(Protocol):
    def execute(self, requests: list) -> list | None: ...

    def finalize(self) -> None: ...


def python_model(pb_utils, handler: Callable[[Any, dict, ModelInstance], Handler]) -> type:
    """Make the class Triton's Python backend looks for in a model.py.

    Args:
        pb_utils: ``triton_python_backend_utils`` as the model.py imported it (the stub's
            module, or bls.testing's double).
        handler: a class taking ``(pb_utils, model_config, instance)``, the config as a
            dict, with ``execute(requests)`` and ``finalize()``.

    Returns:
        A ``TritonPythonModel`` class whose ``initialize`` builds the handler and whose
        ``execute`` and ``finalize`` are the handler's.
    """
    class TritonPythonModel:
        def initialize(self, args):
            self.handler = handler(pb_utils, json.loads(args["model_config"]),
                                   ModelInstance.from_args(args))

        def execute(self, requests):
            return self.handler.execute(requests)

        def finalize(self):
            self.handler.finalize()

    TritonPythonModel.__doc__ = handler.__doc__
    return TritonPythonModel
