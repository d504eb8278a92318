"""``python -m retinaface_ext evaluate``: predictions in the WIDER format and the official APs."""
import argparse
import os


def add_evaluate_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--images", default=None,
                        help="WIDER val images folder (<event>/<name>.jpg); omit to only score --out")
    parser.add_argument("--weights", default="pretrained",
                        help="model weights (.pth / .onnx, a training checkpoint such as OUT/last.pt, or "
                             "'pretrained' for the bundled mobilenet0.25)")
    parser.add_argument("--backbone", default="mobilenet0.25")
    parser.add_argument("--out", required=True, help="prediction folder (written, then scored)")
    parser.add_argument("--gt", default=None, help="folder with wider_{face,easy,medium,hard}_val.mat")
    parser.add_argument("--score-threshold", type=float, default=0.02)
    parser.add_argument("--nms-threshold", type=float, default=0.4)
    parser.add_argument("--integer-boxes", action="store_true",
                        help="truncate coordinates to ints as biubug6's test_widerface.py")
    parser.add_argument("--device", default=None)
    parser.add_argument("--missing", choices=("error", "empty"), default="error",
                        help="what to do with ground-truth images that have no prediction file")
    return parser


def load_model(weights, backbone="mobilenet0.25", device=None):
    """A RetinaFace in eval mode with ``weights``: 'pretrained', a .pth / .onnx file or a training
    checkpoint (OUT/last.pt), all read without unpickling code (``load_weights``)."""
    import torch

    from ..models import RetinaFace
    from ..weights import load_weights

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if weights == "pretrained":
        return RetinaFace.from_pretrained(backbone, device=device).eval()
    return load_weights(RetinaFace(backbone=backbone), weights).to(device).eval()


def run_evaluate(args) -> int:
    from .predict import predict_directory
    from .widerface import widerface_ap

    import sys

    if not args.images and not args.gt:
        print("retinaface-ext evaluate: nothing to do: pass --images to write predictions into --out and/or "
              "--gt to score the predictions in --out", file=sys.stderr)
        return 2
    skipped = []
    if args.images:
        if not os.path.isdir(args.images):
            raise FileNotFoundError(f"--images: no such folder: {args.images}")
        model = load_model(args.weights, args.backbone, args.device)
        count = predict_directory(model, args.images, args.out, args.score_threshold, args.nms_threshold,
                                  integer_boxes=args.integer_boxes, skipped=skipped)
        print(f"wrote predictions for {count} images to {args.out}"
              + (f"; {len(skipped)} unreadable images skipped (see above)" if skipped else ""))
    if args.gt:
        aps = widerface_ap(args.out, args.gt, missing=args.missing)
        print("==================== Results ====================")
        for setting in ("easy", "medium", "hard"):
            print(f"{setting.capitalize():<6} Val AP: {aps[setting]:.4f}")
        print("=================================================")
    return 1 if skipped else 0


def main(argv=None):
    parser = add_evaluate_arguments(argparse.ArgumentParser(description="WIDER FACE evaluation"))
    return run_evaluate(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
