"""Find where a traced graph lets a CPU-only tensor meet a tensor that follows the model.

Why: Triton's libtorch backend (and models/mask_rcnn's Python runner) load model.pt with
``torch.jit.load(path, map_location=<instance device>)``. That moves the parameters, the
input and every tensor constant recorded in the graph (``prim::Constant`` tensors, such
as the ``31`` and ``32`` of a "round up to a multiple of 32") to the serving device. Some
tensors do not follow: a tracer turns ``x.shape[i]`` into ``prim::NumToTensor`` (always a
CPU tensor), and a factory call (``torch.arange(..., device=d)``) records its device as a
constant. When such a tensor meets one that moved (an op with both as inputs) the graph
works on the CPU, where it was traced, and fails on a GPU with "Expected all tensors to
be on the same device". detectron2's ``ImageList.from_tensors`` does exactly this during
tracing: ``max_size`` is a stack of ``NumToTensor`` sizes and is added to a constant
(triton-inference-server/server#2024, detectron2#4580, #5025).

``host_device_mixing`` walks the graph once and names every op that mixes the two kinds,
so the export can refuse such a file on a machine without a GPU, before anyone serves it.

Kinds: *follows* (graph inputs, parameters, buffers, tensor constants, and anything
computed from one of them, or moved to one's device by ``x.to(y.device)``); *host*
(``NumToTensor`` / ``_shape_as_tensor`` results, factories whose device is a CPU constant
or left out, and anything computed from host tensors alone). Allowed mixes: a 0-dim host
tensor in elementwise arithmetic (PyTorch accepts CPU scalars beside CUDA tensors there).
A factory with a CUDA constant device is reported too: it would pin the file to that GPU.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

FOLLOWS, HOST = "follows", "host"

_FACTORIES = {f"aten::{op}" for op in (
    "arange zeros ones full empty empty_strided tensor as_tensor scalar_tensor randperm "
    "eye linspace rand randn randint").split()}
_LIKE_FIRST = {f"aten::{op}" for op in "new_full new_zeros new_ones new_empty".split()}
# TensorIterator ops: a 0-dim CPU tensor is accepted beside tensors of another device.
_CPU_SCALAR_OK = {f"aten::{op}" for op in (
    "add add_ sub sub_ rsub mul mul_ div div_ floor_divide remainder pow "
    "eq ne lt le gt ge").split()}
_CONTAINERS = {"prim::ListConstruct", "prim::TupleConstruct", "prim::DictConstruct"}


def _tensorish(t) -> bool:
    kind = t.kind()
    if kind == "TensorType":
        return True
    if kind in ("ListType", "OptionalType"):
        return _tensorish(t.getElementType())
    if kind == "TupleType":
        return any(_tensorish(e) for e in t.elements())
    return False


def _dim(value) -> int | None:
    try:
        return value.type().dim()
    except (RuntimeError, AttributeError):
        return None


def _where(node) -> str:
    text = node.sourceRange() or ""
    return text.strip().splitlines()[0] if text.strip() else node.kind()


def host_device_mixing(graph) -> list[str]:
    """Name the ops of ``graph`` where a host tensor meets a tensor that follows the model.

    Factories pinned to a CUDA device are named too.

    Args:
        graph: a traced module's ``inlined_graph`` (complete tensor types make 0-dim
            tensors known).

    Returns:
        One line per problem, naming the op and where; empty when the graph runs the same
        on any device.
    """
    kinds: dict[int, str] = {}
    problems: list[str] = []

    def kind_of(value):
        return kinds.get(value.unique())

    def set_kind(value, kind):
        if kind is not None and _tensorish(value.type()):
            kinds[value.unique()] = kind

    def device_kind(value) -> str:
        """Kind of a Device value: a constant is where factories put tensors (host for
        cpu, the device's name otherwise); prim::device(x) is wherever x is."""
        node = value.node()
        if node.kind() == "prim::Constant":
            device = str(value.toIValue())
            return HOST if device.startswith("cpu") else device
        return kinds.get(value.unique(), HOST)

    def visit(node):
        op = node.kind()
        inputs, outputs = list(node.inputs()), list(node.outputs())
        if op == "prim::Constant":
            out = outputs[0]
            if out.type().kind() == "TensorType":
                kinds[out.unique()] = FOLLOWS  # map_location moves tensor constants
            return
        if op == "prim::GetAttr":
            set_kind(outputs[0], FOLLOWS)
            return
        if op == "prim::device":
            kinds[outputs[0].unique()] = kind_of(inputs[0]) or HOST
            return
        if op in ("prim::NumToTensor", "aten::_shape_as_tensor"):
            set_kind(outputs[0], HOST)
            return
        blocks = list(node.blocks())
        for block in blocks:
            for inner in block.nodes():
                visit(inner)
        if blocks:  # prim::If / prim::Loop: an output follows if any branch's does
            for block in blocks:
                for i, value in enumerate(block.outputs()):
                    if i < len(outputs) and kind_of(value) is not None:
                        previous = kind_of(outputs[i])
                        set_kind(outputs[i], FOLLOWS if FOLLOWS in (previous, kind_of(value))
                                 else kind_of(value))
            return
        tensors = [v for v in inputs if _tensorish(v.type())]
        devices = [v for v in inputs if v.type().kind() == "DeviceObjType"]
        if op in _FACTORIES or op in _LIKE_FIRST or (op in ("aten::to", "aten::_to_copy")
                                                      and devices):
            if devices:
                kind = device_kind(devices[0])
            elif op in _LIKE_FIRST and tensors:
                kind = kind_of(tensors[0])
            else:
                kind = HOST  # no device argument: the default device, the CPU
            if kind not in (HOST, FOLLOWS):
                problems.append(f"{op} creates a tensor on constant device {kind!r} "
                                f"(pins the file to it) at {_where(node)}")
                kind = FOLLOWS
            for out in outputs:
                set_kind(out, kind)
            return
        if op == "aten::to" and len(tensors) >= 2:  # x.to(other): other's device and dtype
            for out in outputs:
                set_kind(out, kind_of(tensors[1]))
            return
        present = {kind_of(v) for v in tensors} - {None}
        if len(present) > 1 and op not in _CONTAINERS:
            hosts = [v for v in tensors if kind_of(v) == HOST]
            if not (op in _CPU_SCALAR_OK and all(_dim(v) == 0 for v in hosts)):
                shapes = ", ".join(f"{kind_of(v)} {_dim(v) if _dim(v) is not None else '?'}-dim"
                                   for v in tensors if kind_of(v) is not None)
                problems.append(f"{op} mixes a host tensor with model-device tensors "
                                f"({shapes}) at {_where(node)}")
        kind = FOLLOWS if FOLLOWS in present else (HOST if present else None)
        for out in outputs:
            set_kind(out, kind)

    for value in graph.inputs():
        set_kind(value, FOLLOWS)
    for node in graph.nodes():
        visit(node)
    return problems


_CUDA_LITERAL = re.compile(r"""["']cuda(:\d+)?["']""")


def hardcoded_cuda(model_file: Path) -> list[str]:
    """Find the lines of a saved TorchScript file's code that name a CUDA device.

    A file traced on a GPU records them; it then fails on a CPU-only machine and copies
    across GPUs. detectron2's own export test makes the same check.

    Returns:
        ``<code file>: <line>`` per line found; empty when none.
    """
    found = []
    with zipfile.ZipFile(model_file) as archive:
        for name in archive.namelist():
            if "/code/" in name and name.endswith(".py"):
                for line in archive.read(name).decode(errors="replace").splitlines():
                    if _CUDA_LITERAL.search(line):
                        found.append(f"{name.split('/code/', 1)[1]}: {line.strip()[:160]}")
    return found
