"""Shared fixtures: one small exported model and repository per session, the in-process
reference pipeline over the same TorchScript file, the real server, and a guard that
fails any test that reaches for the network."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from bls.contract.metadata import ModelMetadata
from bls.pipeline.steps import Pipeline
from export import samples
from export.torchscript import MODEL_FILENAME, read_metadata

# Small enough for CI on 2 cores (~0.3 s per image), large enough to detect things:
# input 256-384 px, 100 proposals, at most 20 detections.
TEST_EXPORT_ARGS = ["--min-size", "256", "--max-size", "384", "--proposals", "100",
                    "--detections", "20", "--seed", "0"]
# Requests sent together must meet in one pipeline_bls batch for the batch tests.
TEST_QUEUE_DELAY_US = 200_000
# CI (.ci/run, CI=true) runs every test; `make test` elsewhere leaves out those marked
# `ci` (slow smoke runs of scripts whose logic other tests cover, and checks that reach
# PyPI), so that it stays under 10 minutes on 2 cores (docs/testing.md).
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")


def pytest_collection_modifyitems(config, items):
    if IN_CI:
        return
    skip = pytest.mark.skip(reason="runs under CI (CI=true make test): a slow smoke run or a "
                                   "check that reaches PyPI")
    for item in items:
        if "ci" in item.keywords:
            item.add_marker(skip)

# The model's normalisation subtracts torchvision's ImageNet mean (RGB 0.485, 0.456,
# 0.406): an image of exactly that colour becomes ~0 everywhere and the seeded model
# finds nothing in it, a genuine zero-detection output (checked where it is used).
MEAN_COLOUR_BGR = (104, 116, 124)


@pytest.fixture(scope="session", autouse=True)
def no_network():
    """Only loopback and Unix sockets: nothing here may download weights."""
    original = socket.socket.connect

    def guarded(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
                raise RuntimeError(f"test tried to reach the network: {address}")
        return original(sock, address)

    socket.socket.connect = guarded
    yield
    socket.socket.connect = original


@dataclass(frozen=True)
class Exported:
    repository: Path
    model_file: Path
    meta: ModelMetadata


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Exported:
    from export.__main__ import main

    repository = tmp_path_factory.mktemp("export") / "repository"
    rc = main(["torchvision", "--repository", str(repository), *TEST_EXPORT_ARGS,
               "--set", f"pipeline_bls=dynamic_batching {{ max_queue_delay_microseconds: "
                        f"{TEST_QUEUE_DELAY_US} }}"])
    assert rc == 0
    model_file = repository / "mask_rcnn" / "1" / MODEL_FILENAME
    return Exported(repository, model_file, read_metadata(model_file))


@pytest.fixture(scope="session")
def torchscript(exported):
    """model input (uint8 [3, H, W]) -> outputs by contract name, from the exported file."""
    import torch
    import torchvision  # noqa: F401  registers the ops the file calls

    module = torch.jit.load(str(exported.model_file), map_location="cpu").eval()
    names = [spec.name for spec in exported.meta.outputs]

    def call(model_input: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            outputs = module(torch.from_numpy(np.ascontiguousarray(model_input)))
        return {n: t.numpy() for n, t in zip(names, outputs)}

    return call


@pytest.fixture(scope="session")
def reference(exported, torchscript) -> Pipeline:
    """The in-process pipeline: same TorchScript file, same bls functions as the server."""
    return Pipeline(exported.meta, torchscript)


@pytest.fixture(scope="session")
def images() -> dict[str, bytes]:
    """Generated test images, none of them a photo."""
    gray = samples.scene(200, 260, seed=3)[:, :, 1]
    return {
        "scene.jpg": samples.encode(samples.scene(240, 320, seed=1), ".jpg"),
        "tall.png": samples.encode(samples.scene(330, 210, seed=2), ".png"),
        "gray.png": samples.encode(gray, ".png"),
    }


@pytest.fixture(scope="session")
def empty_image() -> bytes:
    return samples.encode(np.full((120, 160, 3), MEAN_COLOUR_BGR, np.uint8), ".png")


@pytest.fixture(scope="session")
def server(exported):
    from server.launcher import TritonServer

    with TritonServer(exported.repository) as running:
        yield running
        assert not running.exited, (f"the session's server died during the tests; its log: "
                                    f"{running.log_path}")
