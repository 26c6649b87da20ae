"""python -m demo: export a Mask R-CNN, serve it with a real Triton server, send
images, show what came back.

  python -m demo                                   # generated scenes, COCO or random weights
  python -m demo --images photos/ --checkpoint maskrcnn.pth
  python -m demo --weights random                  # never look for COCO weights

Weights: --checkpoint if given; else torchvision's COCO weights when they are in torch's
hub cache or download within --download-timeout seconds (export/weights.py); else a
seeded random initialisation, said loudly. Steps: export (`python -m export torchvision`,
skipped when the repository exists with the same weights, unless --reexport), start Triton (embedded, loopback, free ports), send
the images over gRPC the way `python -m client infer` does, send the first one again
over HTTP and check both answers agree, print the detections and the overlays written,
stop the server (always: on errors, Ctrl-C and SIGTERM too). Non-interactive.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from bls.contract.tensors import MODEL_NAME, PIPELINE_NAME
from client import cli
from client.results import differences
from export import samples
from export.torchscript import MODEL_FILENAME, read_metadata
from export.weights import coco_weights
from server.launcher import ROOT, ServerFailed, TritonServer

# With random weights every score is noise; a lower threshold than the export's
# default shows the pipeline's masks and boxes on more of them.
RANDOM_WEIGHTS_THRESHOLD = 0.3
# (height, width, seed, extension) of the generated scenes: both encodings, three sizes.
SCENES = ((480, 640, 1, ".jpg"), (600, 400, 2, ".png"), (360, 540, 3, ".jpg"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse ``python -m demo``'s arguments."""
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", nargs="+", type=Path, metavar="PATH",
                   help="image files or folders; default: 3 generated scenes in OUT/inputs")
    p.add_argument("--checkpoint", type=Path,
                   help="torchvision Mask R-CNN state dict (.pth); default: --weights")
    p.add_argument("--weights", choices=("auto", "random"), default="auto",
                   help="without --checkpoint: auto (default) takes torchvision's COCO weights "
                        "when cached or quickly downloaded, else random; random: random")
    p.add_argument("--download-timeout", type=float, default=60.0,
                   help="seconds the COCO weights may take to download (0: the cache only; "
                        "default 60; connecting gives up after 5)")
    p.add_argument("--repository", type=Path, default=Path("build/repository"))
    p.add_argument("--out", type=Path, default=Path("build/demo"))
    p.add_argument("--reexport", action="store_true",
                   help="export again even though the repository exists")
    p.add_argument("--concurrency", type=int, default=2)
    return p.parse_args(argv)


def banner(*lines: str) -> None:
    """Print ``lines`` between two rules."""
    print("=" * 78)
    for line in lines:
        print(line)
    print("=" * 78, flush=True)


def export(repository: Path, checkpoint: Path | None) -> None:
    """Run ``python -m export torchvision`` into ``repository``; random weights without
    ``checkpoint``.

    Raises:
        subprocess.CalledProcessError: the export failed.
    """
    command = [sys.executable, "-m", "export", "torchvision", "--repository", str(repository)]
    if checkpoint is not None:
        command += ["--checkpoint", str(checkpoint)]
    print("$ " + " ".join(command), flush=True)
    # From the project root, so `-m export` imports whatever the caller's directory
    subprocess.run(command, cwd=ROOT, stdin=subprocess.DEVNULL, check=True)


def expected_weights(checkpoint: Path | None) -> str:
    """Say how the export will describe these weights (export/torchvision_maskrcnn.build)."""
    return f"checkpoint {checkpoint.name}" if checkpoint else "random"


def exported_weights(model_file: Path) -> str:
    """Say the same for a model file already exported: 'checkpoint <name>' or 'random'."""
    weights = read_metadata(model_file).weights
    return "random" if weights.startswith("random") else weights


def generate_scenes(folder: Path) -> list[Path]:
    """Write the SCENES to ``folder`` as JPEG and PNG files; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for height, width, seed, ext in SCENES:
        path = folder / f"scene{seed}_{width}x{height}{ext}"
        path.write_bytes(samples.encode(samples.scene(height, width, seed), ext))
        paths.append(path)
    return paths


def _terminate(signum, frame):
    # SIGTERM would end Python without unwinding; raise so the server gets stopped.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m demo``; return the exit status."""
    args = parse_args(argv)
    repository, out = args.repository.resolve(), args.out.resolve()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        if args.images:
            paths = cli.collect_images(args.images)
            if not paths:
                print(f"error: no images in {' '.join(map(str, args.images))}", file=sys.stderr)
                return 2
        else:
            paths = generate_scenes(out / "inputs")
        checkpoint = args.checkpoint and args.checkpoint.resolve()
        if checkpoint is None and args.weights == "auto":
            found = coco_weights(args.download_timeout)
            print(f"weights: {found.how}" + ("" if found.path else "; using random weights"),
                  flush=True)
            checkpoint = found.path
        model_file = repository / MODEL_NAME / "1" / MODEL_FILENAME
        if args.checkpoint or args.reexport or not model_file.is_file() or \
                exported_weights(model_file) != expected_weights(checkpoint):
            banner(f"1. export torchvision Mask R-CNN -> {repository}")
            export(repository, checkpoint)
        else:
            banner(f"1. export: using the existing repository {repository}, exported with "
                   f"the same weights", "   (pass --reexport to export again)")
        if not args.images:
            print(f"no --images given: generated {len(paths)} scenes (none is a photo) in "
                  f"{out / 'inputs'}")
        out.mkdir(parents=True, exist_ok=True)
        log = out / "triton.log"
        banner("2. start Triton (embedded) on free loopback ports",
               f"   server log: {log}")
        # start()/stop() rather than `with`: __exit__ does not run when Ctrl-C lands
        # while __enter__ is still waiting for the server to become ready.
        server = TritonServer(repository, log=log)
        try:
            server.start()
            print(f"ready: http {server.http_url}, grpc {server.grpc_url}, pid {server.pid}")
            return serve_demo(server, paths, out, args.concurrency)
        finally:
            if server.pid is not None:
                print(f"stopping the server (pid {server.pid})", flush=True)
            server.stop()
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ServerFailed as e:
        print(f"error: the server did not start: {e}", file=sys.stderr)
        return 1
    except cli.ServerUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as e:
        print(f"error: the export failed (status {e.returncode})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the server has been stopped", file=sys.stderr)
        return 130


def serve_demo(server: TritonServer, paths: list[Path], out: Path, concurrency: int) -> int:
    """Run steps 3-5 against a running server; return the exit status."""
    model = asyncio.run(cli.fetch_model(server.grpc_url, "grpc", PIPELINE_NAME))
    weights = model.meta.weights if model.meta else "unknown (no model_metadata)"
    random_weights = "random" in weights.lower()
    banner(f"MODEL WEIGHTS: {weights}",
           *(["   Random weights: the pipeline runs end to end, but the detections are "
              "meaningless.",
              f"   Sending score_threshold {RANDOM_WEIGHTS_THRESHOLD} so some show up; "
              "use --checkpoint FILE for real ones."] if random_weights else []))

    banner(f"3. {len(paths)} image(s) over gRPC, as `python -m client infer` sends them")
    argv = ["infer", *map(str, paths), "--url", server.grpc_url, "--protocol", "grpc",
            "--model", PIPELINE_NAME, "--concurrency", str(concurrency), "--out", str(out)]
    if random_weights:
        argv += ["--score-threshold", str(RANDOM_WEIGHTS_THRESHOLD)]
    infer_args = cli.parse_args(argv)
    run = cli.run_infer(infer_args, paths)

    banner("4. the first image again over HTTP: same answer?")
    same = True
    first = next((r for r in run.results if r.ok), None)
    if first is None:
        print("no image succeeded over gRPC; nothing to compare")
        same = False
    else:
        parameters = cli.request_parameters(infer_args.score_threshold)
        http_det = asyncio.run(cli.infer_bytes(server.http_url, "http", PIPELINE_NAME,
                                               first.path.read_bytes(), parameters))
        found = differences(first.detections, http_det)
        same = not found
        print(f"{first.path.name}: HTTP and gRPC answers are "
              + ("identical" if same else "DIFFERENT: " + "; ".join(found))
              + f" ({len(http_det)} detections)")

    banner("5. detections")
    for r in run.results:
        if not r.ok:
            print(f"{r.path.name}: FAILED: {r.error}")
            continue
        det = r.detections
        print(f"{r.path.name} ({det.image_size[1]}x{det.image_size[0]}): {len(det)} detections")
        for i in range(min(len(det), 5)):
            x1, y1, x2, y2 = det.boxes[i].tolist()
            print(f"   {det.class_names[i]:<16} {float(det.scores[i]):.3f}  "
                  f"box ({x1:.0f}, {y1:.0f}) - ({x2:.0f}, {y2:.0f})")
        if len(det) > 5:
            print(f"   ... and {len(det) - 5} more")
        if r.overlay:
            print(f"   overlay: {r.overlay}")
    print(f"COCO results: {out / cli.RESULTS_FILE}; image ids: {out / cli.IMAGES_FILE}")
    if random_weights:
        print(f"reminder: weights are {weights}")
    return 0 if same and not run.failed else 1


if __name__ == "__main__":
    sys.exit(main())
