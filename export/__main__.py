"""python -m export: write a TorchScript Mask R-CNN into a Triton model repository.

  python -m export torchvision --repository build/repository            # seeded random weights
  python -m export torchvision --checkpoint my_maskrcnn.pth --repository build/repository
  python -m export torchvision --pretrained --repository ...             # downloads COCO weights
  python -m export assemble --model model.pt --repository build/repository
  python -m export tune --repository build/repository --model mask_rcnn --instances 2 --intra-op-threads 1
  python -m export standin --repository build/standin --latency-ms 10  # answers like a GPU model
  python -m export detectron2 --config COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml ...
  python -m export parity --config ... --weights ... --repository build/repository ...
  python -m export evaluate --annotations val.json --images val/ --url 127.0.0.1:8001 ...
  (Detectron2: docs/detectron2.md; COCO AP of the served model: export/evaluate.py)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bls.contract.metadata import ModelMetadata
from bls.contract.tensors import MODEL_NAME
from export import detectron2_cli
from export import tune as tune_cli


def _overrides(values: list[str]) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep:
            raise SystemExit(f"--set expects MODEL=PBTXT, got {value!r}")
        out[name] = (out.get(name, "") + "\n" + text).strip()
    return out


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repository", type=Path, required=True,
                   help="model repository to (re)build, e.g. build/repository")
    p.add_argument("--set", action="append", default=[], metavar="MODEL=PBTXT",
                   help="replace top-level config fields of a model, e.g. "
                        "'pipeline_bls=dynamic_batching { max_queue_delay_microseconds: 5000 }'")
    p.add_argument("--execution-env", type=Path, metavar="ENV",
                   help="Python execution environment for the Python models: a conda-pack "
                        "archive (envs/build_conda_env.sh) or a directory with bin/activate "
                        "(envs/build_env_dir.sh); see docs/deploy.md")


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m export``; return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["evaluate"]:  # its own parser (export/evaluate.py)
        from export import evaluate

        return evaluate.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("evaluate", add_help=False,
                   help="COCO box and mask AP of the served pipeline against the in-process "
                        "reference (python -m export evaluate --help)")

    tv = sub.add_parser("torchvision", help="torchvision maskrcnn_resnet50_fpn")
    _common(tv)
    weights = tv.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", type=Path,
                         help="torchvision Mask R-CNN state dict (.pth); default: random weights")
    weights.add_argument("--pretrained", action="store_true",
                         help="download torchvision's COCO weights (network access)")
    tv.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    tv.add_argument("--min-size", type=int, default=800, help="resize: shortest edge")
    tv.add_argument("--max-size", type=int, default=1333, help="resize: longest edge at most")
    tv.add_argument("--score-threshold", type=float, default=0.5,
                    help="pipeline's default score threshold (requests may override)")
    tv.add_argument("--box-score-thresh", type=float, default=0.05,
                    help="model-internal score threshold before NMS (torchvision's)")
    tv.add_argument("--detections", type=int, default=100, help="detections per image, at most")
    tv.add_argument("--proposals", type=int, default=1000,
                    help="RPN proposals per image at test time (fewer is faster, less accurate)")
    tv.add_argument("--class-names", type=Path, help="file with one class name per line")
    tv.add_argument("--sample-image", type=Path, action="append", default=[],
                    help="image(s) to check the export on; default: a generated scene")
    tv.add_argument("--method", choices=("script", "trace"), default="script")
    tv.add_argument("--output", type=Path, help="also keep a copy of the model file here")

    asm = sub.add_parser("assemble", help="rebuild a repository around an exported model file")
    _common(asm)
    asm.add_argument("--model", type=Path, required=True, help="model file written by an export")
    si = sub.add_parser("standin", help="a stand-in mask_rcnn answering after --latency-ms, "
                        "without weights or a core (export/standin.py, docs/benchmarks.md)")
    _common(si)
    si.add_argument("--latency-ms", type=float, required=True, help="per request (a GPU's)")
    si.add_argument("--detections", type=int, default=20, help="per answer (default 20)")
    si.add_argument("--mask-resolution", type=int, default=28, help="M of its [N, 1, M, M] "
                    "masks (default 28; 0: no masks)")
    si.add_argument("--min-size", type=int, default=800, help="resize: shortest edge")
    si.add_argument("--max-size", type=int, default=1333, help="resize: longest edge at most")
    tune_cli.add_parser(sub)  # python -m export tune (export/tune.py)

    detectron2_cli.add_parsers(sub, _common)

    args = parser.parse_args(argv)
    if args.command == "tune":
        return tune_cli.run(args)
    from export.repository import assemble, staged_model_file  # after argparse: fast --help

    if args.command in detectron2_cli.COMMANDS:
        return detectron2_cli.run(args, assemble, _overrides(getattr(args, "set", [])))
    overrides = _overrides(args.set)
    if args.command == "standin":
        from export import standin

        for name in ("latency_ms", "detections", "mask_resolution"):
            if getattr(args, name) < 0:
                parser.error(f"--{name.replace('_', '-')}: must be >= 0, got {getattr(args, name)}")
        repo = standin.make_repository(args.repository, args.latency_ms, args.detections,
                                       args.mask_resolution or None, args.min_size,
                                       args.max_size, overrides, args.execution_env)
        print(f"repository ready: {repo} (mask_rcnn: a stand-in, {args.latency_ms:g} ms)")
        return 0
    if args.command == "assemble":
        repo = assemble(args.model, args.repository, overrides, args.execution_env)
        print(f"repository ready: {repo}")
        return 0

    import torch

    from export import exporter
    from export import torchvision_maskrcnn as tvm

    model, weights_desc = tvm.build(args.checkpoint, args.pretrained, args.seed,
                                    args.box_score_thresh, args.detections, args.proposals)
    num_classes = model.roi_heads.box_predictor.cls_score.out_features
    names = tvm.class_names(num_classes, args.class_names)
    meta = ModelMetadata(
        source="torchvision:maskrcnn_resnet50_fpn", channel_order=tvm.CHANNEL_ORDER,
        min_size=args.min_size, max_size=args.max_size, mask_resolution=tvm.MASK_RESOLUTION,
        class_names=names, category_ids=tuple(range(num_classes)),
        score_threshold=args.score_threshold, weights=weights_desc,
        torch_version=torch.__version__.split("+")[0], device="cpu",
        extra={"box_score_thresh": args.box_score_thresh, "proposals": args.proposals,
               "detections": args.detections, "method": args.method})
    print(f"weights: {weights_desc}")
    print(f"input: uint8 [3, H, W] {meta.channel_order}, shortest edge {meta.min_size}, "
          f"longest at most {meta.max_size}; {num_classes} classes")
    images = [p.read_bytes() for p in args.sample_image]
    with staged_model_file(args.repository) as staging:
        exporter.export_module(tvm.TorchvisionMaskRCNN(model), meta, staging, args.method, images)
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_bytes(staging.read_bytes())
        repo = assemble(staging, args.repository, overrides, args.execution_env)
    print(f"wrote {repo / MODEL_NAME / '1' / 'model.pt'} (torch {meta.torch_version})")
    print(f"repository ready: {repo}")
    print(f"note: NVIDIA's Triton container loads this file with its own libtorch, which must "
          f"be torch {meta.torch_version} or newer (see docs/serving.md, 'Torch version rule').")
    return 0


if __name__ == "__main__":
    sys.exit(main())
