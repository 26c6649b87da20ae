"""The Detectron2 subcommands of ``python -m export``.

  python -m export detectron2 --config COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml \\
      --weights model_final_f10217.pkl --repository build/repository
  python -m export detectron2-checkpoint --config ... --output build/d2/calibrated.pth
  python -m export parity --config ... --weights ... --repository build/repository \\
      --images photos/ --generated 3

detectron2 is imported when a subcommand runs, not here: --help works without it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

COMMANDS = ("detectron2", "detectron2-checkpoint", "parity")
CONFIG_HELP = ("detectron2 yaml config: a file, or a model-zoo name such as "
               "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")
OPTS_HELP = ("detectron2 config overrides, KEY VALUE pairs (as detectron2's tools take them), "
             "e.g. --opts MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.5 INPUT.MIN_SIZE_TEST 640")


def add_parsers(sub, common) -> None:
    """Add the detectron2, detectron2-checkpoint and parity subcommands to ``sub``.

    Args:
        sub: the subparsers of ``python -m export``.
        common: adds --repository, --set (and whatever else every repository-writing
            command takes) to a parser.
    """
    d2 = sub.add_parser("detectron2", help="a Detectron2 Mask R-CNN / Faster R-CNN (needs detectron2)",
                        description="Export a Detectron2 GeneralizedRCNN to the mask_rcnn contract "
                                    "and assemble the repository. See docs/detectron2.md.")
    common(d2)
    d2.add_argument("--config", required=True, help=CONFIG_HELP)
    d2.add_argument("--weights",
                    help="model-zoo .pkl or checkpoint .pth (DetectionCheckpointer); "
                         "default: seeded random weights (meaningless detections)")
    d2.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE", help=OPTS_HELP)
    d2.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    d2.add_argument("--method", choices=("trace", "script"), default="trace",
                    help="trace (default; detectron2's TracingAdapter) or script")
    d2.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where the file will be served; it is verified there (cuda needs a GPU "
                         "on this machine). The trace itself is made on the CPU either way")
    d2.add_argument("--score-threshold", type=float,
                    help="pipeline's default score threshold; default: "
                         "MODEL.ROI_HEADS.SCORE_THRESH_TEST (the default answer is then "
                         "DefaultPredictor's)")
    d2.add_argument("--class-names", type=Path,
                    help="file with one class name per line (index 0 = first class); default: "
                         "the DATASETS.TEST dataset's names when detectron2 has it registered")
    d2.add_argument("--sample-image", type=Path, action="append", default=[],
                    help="image(s) to check the export on; default: two generated scenes")
    d2.add_argument("--serving-torch", metavar="VERSION",
                    help="torch (libtorch) version of the server that will load the file; the "
                         "export refuses to write a file it cannot load. Default: report only, "
                         "against tritonserver 24.12 (PyTorch 2.6)")
    d2.add_argument("--output", type=Path, help="also keep a copy of the model file here")

    ck = sub.add_parser("detectron2-checkpoint",
                        help="write calibrated random weights for tests and parity (needs detectron2)",
                        description="Seeded random initialisation of the config's model, rescaled "
                                    "so its scores and masks are decisive like a trained model's. "
                                    "The detections mean nothing.")
    ck.add_argument("--config", required=True, help=CONFIG_HELP)
    ck.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE", help=OPTS_HELP)
    ck.add_argument("--seed", type=int, default=0)
    ck.add_argument("--output", type=Path, required=True, help=".pth file to write")

    par = sub.add_parser("parity", help="served pipeline_bls vs detectron2's DefaultPredictor "
                                        "(needs detectron2)",
                         description="Send the same images to the served pipeline_bls and to "
                                     "detectron2's DefaultPredictor (same config, same weights) "
                                     "and report, per image, class agreement, the largest box "
                                     "difference in pixels and the mask IoU. Exit status 1 if a "
                                     "target is missed.")
    par.add_argument("--config", required=True, help=CONFIG_HELP)
    par.add_argument("--weights", type=Path, required=True,
                     help="the weights the served model was exported with")
    par.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE",
                     help=OPTS_HELP + "; must be the export's")
    where = par.add_mutually_exclusive_group(required=True)
    where.add_argument("--repository", type=Path,
                       help="start an embedded server on this repository (free loopback ports)")
    where.add_argument("--url", help="a running server, e.g. 127.0.0.1:8001")
    par.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    par.add_argument("--images", type=Path, nargs="*", default=[],
                     help="image files or folders (jpg, jpeg, png, bmp, tif, webp)")
    par.add_argument("--generated", type=int, default=0, metavar="N",
                     help="also N generated scenes (JPEG and PNG, several sizes)")
    par.add_argument("--score-threshold", type=float, default=0.0,
                     help="request parameter of every pipeline request (default 0: every "
                          "detection the model returns, as DefaultPredictor answers)")
    par.add_argument("--python", type=Path, default=Path(sys.executable),
                     help="interpreter of the embedded server (default: this one)")
    par.add_argument("--json", type=Path, help="write the per-image figures here")
    par.add_argument("--box-tolerance", type=float, default=0.01)
    par.add_argument("--min-iou", type=float, default=0.99)


def run(args: argparse.Namespace, assemble, overrides: dict) -> int:
    """Run one of COMMANDS.

    Returns:
        The exit status: 0 done, 1 refused (the message says why; nothing was written),
        2 detectron2 missing.
    """
    from export.detectron2_maskrcnn import (Detectron2Unavailable, ExportMismatch,
                                            TargetUnavailable, UnsupportedModel)

    try:
        if args.command == "detectron2":
            return _export(args, assemble, overrides)
        if args.command == "detectron2-checkpoint":
            return _checkpoint(args)
        return _parity(args)
    except Detectron2Unavailable as e:
        print(f"python -m export {args.command}: {e}", file=sys.stderr)
        return 2
    except (UnsupportedModel, ExportMismatch, TargetUnavailable, FileNotFoundError,
            ValueError) as e:
        print(f"python -m export {args.command}: {e}", file=sys.stderr)
        return 1


def _export(args, assemble, overrides) -> int:
    from bls.contract.tensors import MODEL_NAME
    from export import detectron2_maskrcnn as d2

    cfg = d2.load_config(args.config, args.opts)
    devices = ("cpu",) if args.device == "cpu" else ("cpu", "cuda")
    d2.check_devices(devices)
    model, weights_desc = d2.build(cfg, args.weights, args.seed)
    ours, theirs, loadable = d2.torch_rule(args.serving_torch)
    meta = d2.metadata(cfg, args.config, weights_desc, args.method, args.device,
                       args.score_threshold, args.class_names, args.weights,
                       extra={"serving_torch": theirs, "serving_torch_loads": loadable})
    print(f"detectron2 {d2.detectron2_version()}: {cfg.MODEL.META_ARCHITECTURE} from {args.config}"
          f" ({'masks ' + str(meta.mask_resolution) + 'x' + str(meta.mask_resolution) if meta.has_masks else 'boxes only, no masks'})")
    if args.weights is None:
        print("WARNING: no --weights: RANDOM WEIGHTS, the detections are meaningless")
    print(f"weights: {weights_desc}")
    print(f"input: uint8 [3, H, W] {meta.channel_order} (INPUT.FORMAT), shortest edge "
          f"{meta.min_size} (MIN_SIZE_TEST), longest at most {meta.max_size} (MAX_SIZE_TEST); "
          f"{len(meta.class_names)} classes ({meta.extra['class_names_from']}); "
          f"default score threshold {meta.score_threshold}")
    print(f"torch rule: exported with torch {ours}; the serving libtorch must be >= it. "
          f"Container libtorch {theirs}: "
          + ("loads it." if loadable else "TOO OLD, NVIDIA's container will refuse this file "
             "(the embedded server, whose runner uses this torch, loads it); export with torch "
             f"<= {theirs} for the container."))
    if args.serving_torch and not loadable:
        print(f"refusing: --serving-torch {args.serving_torch} cannot load a torch {ours} file; "
              "nothing was written", file=sys.stderr)
        return 1
    images = [p.read_bytes() for p in args.sample_image]
    from export.repository import staged_model_file

    with staged_model_file(args.repository) as staging:
        d2.export(model, meta, staging, args.method, images, devices)
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_bytes(staging.read_bytes())
        env = getattr(args, "execution_env", None)
        repo = assemble(staging, args.repository, overrides, *([env] if env else []))
    print(f"wrote {repo / MODEL_NAME / '1' / 'model.pt'} ({args.method}, verified on "
          f"{', '.join(devices)}; torch {meta.torch_version})")
    print(f"repository ready: {repo}")
    return 0


def _checkpoint(args) -> int:
    from export import detectron2_maskrcnn as d2

    cfg = d2.load_config(args.config, args.opts)
    path = d2.write_test_checkpoint(cfg, args.output, args.seed)
    print(f"wrote {path}: calibrated RANDOM weights (seed {args.seed}) for tests and parity "
          "runs; the detections are meaningless")
    return 0


def _parity(args) -> int:
    from export import detectron2_parity as parity

    report = parity.run(config=args.config, weights=args.weights, opts=args.opts,
                        repository=args.repository, url=args.url, protocol=args.protocol,
                        images=args.images, generated=args.generated,
                        score_threshold=args.score_threshold, python=args.python,
                        box_tolerance=args.box_tolerance, min_iou=args.min_iou)
    for line in report.lines():
        print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(report.to_json())
        print(f"wrote {args.json}")
    return 0 if report.ok else 1
