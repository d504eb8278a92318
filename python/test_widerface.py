"""biubug6's test_widerface.py, over retinaface-ext: writes WIDER FACE prediction files.

    python python/test_widerface.py -m ./weights/mobilenet0.25_Final.pth --network mobile0.25 \
        --dataset_folder ./data/widerface/val/images/

For every image of ``<dataset_folder>/../wider_val.txt`` it writes
``<save_folder>/<event>/<name>.txt`` in the official format (name, count,
then ``x y w h score`` per face) -- what the WIDER FACE evaluation reads. The
resizing follows biubug6 (shorter side 1600, longer side at most 2150) unless
``--origin_size`` is true. The AP evaluation itself runs through
retinaface_ext.evaluation once that exists.
"""
import argparse
import os
import sys
import time

import _bootstrap  # noqa: F401


def str2bool(value):
    return str(value).lower() in ("1", "true", "yes", "y")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Retinaface")
    parser.add_argument("-m", "--trained_model", default="./weights/Resnet50_Final.pth",
                        help="trained state_dict file (.pth / BN-folded .onnx), or 'mobilenet0.25' (pretrained)")
    parser.add_argument("--network", default="resnet50", help="Backbone network mobile0.25 or resnet50")
    parser.add_argument("--origin_size", default=True, type=str2bool, help="Whether use origin image size to evaluate")
    parser.add_argument("--save_folder", default="./widerface_evaluate/widerface_txt/", help="Dir to save txt results")
    parser.add_argument("--cpu", action="store_true", default=False, help="Use cpu inference")
    parser.add_argument("--dataset_folder", default="./data/widerface/val/images/", help="dataset path")
    parser.add_argument("--confidence_threshold", default=0.02, type=float, help="confidence_threshold")
    parser.add_argument("--top_k", default=5000, type=int, help="top_k")
    parser.add_argument("--nms_threshold", default=0.4, type=float, help="nms_threshold")
    parser.add_argument("--keep_top_k", default=750, type=int, help="keep_top_k")
    parser.add_argument("-s", "--save_image", action="store_true", default=False, help="show detection results")
    parser.add_argument("--vis_thres", default=0.5, type=float, help="visualization_threshold")
    return parser.parse_args(argv)


def biubug6_resize_factor(height, width, target_size=1600, max_size=2150):
    """biubug6's test-time scale: shorter side to 1600 unless the longer side would exceed 2150."""
    short, long = min(height, width), max(height, width)
    resize = float(target_size) / float(short)
    if round(resize * long) > max_size:
        resize = float(max_size) / float(long)
    return resize


def main(argv=None):
    import numpy as np
    import torch

    from retinaface_ext import RetinaFace, detect, load_weights
    from retinaface_ext.detection import draw_detections, import_cv2, read_image

    args = parse_args(argv)
    cv2 = import_cv2()
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    if args.trained_model in ("mobilenet0.25", "mobile0.25"):
        model = RetinaFace.from_pretrained("mobilenet0.25")
    else:
        model = load_weights(RetinaFace(args.network), args.trained_model)
    model = model.to(device).eval()

    folder = os.path.normpath(args.dataset_folder)
    list_file = os.path.join(os.path.dirname(folder), "wider_val.txt")
    if not os.path.isfile(list_file):
        sys.exit(f"no image list at {list_file} (biubug6's layout: data/widerface/val/wider_val.txt)")
    with open(list_file) as handle:
        names = [line.strip().lstrip("/") for line in handle if line.strip()]
    tic = time.perf_counter()
    for i, name in enumerate(names):
        image = read_image(os.path.join(folder, name))
        resize = 1.0 if args.origin_size else biubug6_resize_factor(*image.shape[:2])
        if resize != 1.0:
            image = cv2.resize(image, None, None, fx=resize, fy=resize, interpolation=cv2.INTER_LINEAR)
        dets = detect(model, image, score_threshold=args.confidence_threshold, nms_threshold=args.nms_threshold,
                      pre_nms_top_k=args.top_k, max_detections=args.keep_top_k)
        dets[:, :4] /= resize
        dets[:, 5:] /= resize
        target = os.path.join(args.save_folder, os.path.splitext(name)[0] + ".txt")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as out:
            out.write(os.path.splitext(os.path.basename(name))[0] + "\n")
            out.write(f"{len(dets)}\n")
            for box in dets:
                x, y = int(box[0]), int(box[1])
                out.write(f"{x} {y} {int(box[2]) - x} {int(box[3]) - y} {box[4]} \n")
        if args.save_image:
            back_to_resized = np.array([resize] * 4 + [1.0] + [resize] * 10, dtype=np.float32)
            shown = draw_detections(image, dets[dets[:, 4] >= args.vis_thres] * back_to_resized)
            os.makedirs("./results", exist_ok=True)
            cv2.imwrite(os.path.join("./results", f"{i}.jpg"), shown)
        print(f"im_detect: {i + 1:d}/{len(names):d} {name}", end="\r")
    print(f"\nwrote {len(names)} prediction files to {args.save_folder} in {time.perf_counter() - tic:.1f} s")
    try:
        from retinaface_ext import evaluation  # noqa: F401
        print("evaluate them with retinaface_ext.evaluation (WIDER FACE AP)")
    except ImportError:
        print("AP evaluation: not in retinaface-ext yet (retinaface_ext.evaluation); use "
              "biubug6's widerface_evaluate on these files meanwhile")
    return 0


if __name__ == "__main__":
    sys.exit(main())
