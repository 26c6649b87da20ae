"""What run_triton.sh --mode container needs to know about a model repository: which
tritonserver image can serve it, and how much shared memory its Python models need.

  python envs/triton_container.py plan --repository build/repository [--image IMAGE]
  python envs/triton_container.py choose --torch 2.5.1 [--python 3.12]

The image: the container's libtorch loads model.pt, so its PyTorch must not be older than
the torch the model was exported with (recorded in the model_metadata of the Python
models' configs); the newest release with the export's major.minor is taken, else the
oldest newer one. Where the repository carries an execution environment, its Python must
be the stub's. Releases come from envs/triton-containers.tsv.

Shared memory: the Python backend moves every tensor through /dev/shm, and a batch's
answers sit there together. A dense answer is detections x H x W bytes (uint8 masks), so
each Python model that answers masks needs instances x batch x that, plus its 16 MiB
default region, plus headroom for the BLS tensors.

``plan`` prints shell assignments (KEY=value, quoted) for run_triton.sh to eval; errors
go to stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

TABLE = Path(__file__).resolve().parent / "triton-containers.tsv"
IMAGE = "nvcr.io/nvidia/tritonserver:{release}-py3"
MIB = 1024 * 1024
SHM_DEFAULT = 16 * MIB  # run_triton.sh's shm-default-byte-size
SHM_HEADROOM = 256 * MIB  # BLS tensors to and from mask_rcnn, inputs, the allocator's slack
DEFAULT_DETECTIONS = 100
DEFAULT_IMAGE = (1920, 1080)


class PlanError(ValueError):
    pass


@dataclass(frozen=True)
class Release:
    release: str
    tritonserver: str
    pytorch: str
    python: str

    @property
    def image(self) -> str:
        return IMAGE.format(release=self.release)

    @property
    def torch(self) -> tuple[int, int]:
        return major_minor(self.pytorch)


def major_minor(version: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", version)
    if not match:
        raise PlanError(f"not a version: {version!r}")
    return int(match.group(1)), int(match.group(2))


def load_table(path: Path = TABLE) -> list[Release]:
    rows = [line.split("\t") for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    header, body = rows[0], rows[1:]
    if header != ["release", "tritonserver", "pytorch", "python"]:
        raise PlanError(f"{path}: unexpected header {header}")
    return sorted((Release(*row) for row in body), key=lambda r: r.release)


def choose(torch: str, python: str | None, table: list[Release]) -> Release:
    """The release for a model exported with ``torch`` and an environment of ``python``
    (None: no environment, any Python)."""
    want = major_minor(torch)
    fits = [r for r in table if python is None or r.python == python]
    if not fits:
        pythons = sorted({r.python for r in table})
        raise PlanError(f"no tritonserver release in {TABLE.name} has a Python {python} stub "
                        f"(releases have {pythons}); rebuild the execution environment for "
                        "one of those (envs/build_conda_env.sh --python X.Y)")
    same = [r for r in fits if r.torch == want]
    if same:
        return same[-1]
    newer = [r for r in fits if r.torch > want]
    if newer:
        return newer[0]
    newest = fits[-1]
    raise PlanError(
        f"the model was exported with torch {torch}, newer than the PyTorch of every "
        f"tritonserver release in {TABLE.name}"
        + (f" with Python {python}" if python else "")
        + f" (newest: {newest.release}, PyTorch {newest.pytorch}); that libtorch cannot be "
        f"trusted to load it. Export with torch {newest.torch[0]}.{newest.torch[1]} or older, "
        "or pass --image for a release you have checked (docs/deploy.md)")


def check_image(image: str, torch: str, python: str | None, table: list[Release]) -> list[str]:
    """Errors for an image the operator named, where the table knows its release;
    warnings (returned) where it does not."""
    match = re.search(r":(\d\d\.\d\d)-py3$", image)
    known = {r.release: r for r in table}
    if not match or match.group(1) not in known:
        return [f"image {image} is not in {TABLE.name}: its PyTorch and stub Python are not "
                f"checked against the export (torch {torch})"
                + (f" and the environment (Python {python})" if python else "")]
    release = known[match.group(1)]
    if python is not None and release.python != python:
        raise PlanError(f"image {image} has a Python {release.python} stub, the repository's "
                        f"execution environment is Python {python}; rebuild the environment "
                        f"with --python {release.python} or choose another image")
    if release.torch < major_minor(torch):
        raise PlanError(f"image {image} has PyTorch {release.pytorch}, older than the export's "
                        f"torch {torch}; its libtorch may not load model.pt")
    return []


@dataclass
class Repository:
    torch: str
    detections: int
    env_python: str | None
    without_env: list[str]
    shm_bytes: int


def read_repository(repository: Path, image_size: tuple[int, int] = DEFAULT_IMAGE) -> Repository:
    """The container's view of a repository: every model's config.pbtxt."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    torch = detections = None
    env_pythons, without_env = set(), []
    shm = SHM_HEADROOM
    configs = sorted(Path(repository).glob("*/config.pbtxt"))
    if not configs:
        raise PlanError(f"{repository} has no */config.pbtxt: not a model repository")
    width, height = image_size
    for path in configs:
        config = text_format.Parse(path.read_text(), mc.ModelConfig())
        params = {k: v.string_value for k, v in config.parameters.items()}
        if "model_metadata" in params and torch is None:
            meta = json.loads(params["model_metadata"])
            torch = meta.get("torch_version")
            detections = int(meta.get("extra", {}).get("detections", DEFAULT_DETECTIONS))
        if config.backend != "python":
            continue
        if "EXECUTION_ENV_PATH" in params:
            env_pythons.add(params.get("execution_env_python", "unknown"))
        else:
            without_env.append(config.name)
        instances = sum(g.count or 1 for g in config.instance_group) or 1
        batch = max(1, config.max_batch_size)
        answers_masks = any(o.name == "masks" for o in config.output)
        shm += instances * SHM_DEFAULT
        if answers_masks:
            shm += instances * batch * (detections or DEFAULT_DETECTIONS) * width * height
    if torch is None:
        raise PlanError(f"{repository}: no model_metadata with torch_version in any config; "
                        "assemble it with `python -m export`")
    if len(env_pythons) > 1:
        raise PlanError(f"{repository}: Python models carry environments of different "
                        f"Pythons {sorted(env_pythons)}")
    return Repository(torch, detections or DEFAULT_DETECTIONS,
                      env_pythons.pop() if env_pythons else None, without_env, shm)


def shm_size(nbytes: int) -> str:
    """Docker's --shm-size, in whole GiB."""
    return f"{max(1, math.ceil(nbytes / (1024 * MIB)))}g"


def plan(repository: Path, image: str | None, image_size: tuple[int, int]) -> dict[str, str]:
    repo = read_repository(repository, image_size)
    table = load_table()
    if repo.env_python is not None and repo.without_env:
        raise PlanError(f"{repository}: some Python models have an execution environment and "
                        f"{repo.without_env} have none; assemble with --execution-env")
    if image:
        for warning in check_image(image, repo.torch, repo.env_python, table):
            print(f"run_triton.sh: warning: {warning}", file=sys.stderr)
    else:
        image = choose(repo.torch, repo.env_python, table).image
    return {"IMAGE": image, "SHM_SIZE_AUTO": shm_size(repo.shm_bytes),
            "EXPORT_TORCH": repo.torch, "ENV_PYTHON": repo.env_python or "",
            "HAS_ENV": "1" if repo.env_python else "0"}


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="image and --shm-size for a repository (shell assignments)")
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--image", help="the operator's choice; checked where the table knows it")
    p.add_argument("--answer-image", type=_size, default=DEFAULT_IMAGE, metavar="WxH",
                   help="largest image whose dense answer shared memory must hold (1920x1080)")
    c = sub.add_parser("choose", help="the image for an export's torch and an env's Python")
    c.add_argument("--torch", required=True)
    c.add_argument("--python")
    args = parser.parse_args(argv)
    try:
        if args.command == "choose":
            release = choose(args.torch, args.python, load_table())
            print(f"{release.image}\t{release.pytorch}\t{release.python}")
        else:
            for key, value in plan(args.repository, args.image, args.answer_image).items():
                print(f"{key}={shlex.quote(value)}")
    except PlanError as e:
        print(f"run_triton.sh: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
