"""Running a model over a WIDER-style image folder and writing the prediction files."""
import os

from .widerface import write_prediction_file

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def list_images(images_dir):
    """``[(event, name, path)]`` for ``images_dir/<event>/<name>.<ext>`` (files at the top: event '.')."""
    found = []
    for root, _dirs, files in os.walk(images_dir):
        for file_name in files:
            stem, suffix = os.path.splitext(file_name)
            if suffix.lower() in IMAGE_SUFFIXES:
                event = os.path.relpath(root, images_dir)
                found.append((event, stem, os.path.join(root, file_name)))
    return sorted(found)


def predict_directory(model, images_dir, out_dir, score_threshold=0.02, nms_threshold=0.4,
                      integer_boxes=False, progress=True, skipped=None):
    """Detects faces in every image (at its original size, as biubug6's ``--origin_size``) and
    writes ``out_dir/<event>/<name>.txt``; returns the number of prediction files written.

    An image that cannot be read (missing, corrupt, truncated) is skipped with a
    message on stderr, as ``detect`` does, and its ``(path, reason)`` appended to
    ``skipped`` when a list is given: one bad file does not stop the whole set.
    """
    import sys

    from ..detection import detect, read_image

    images = list_images(images_dir)
    iterator = images
    if progress:
        from tqdm import tqdm

        iterator = tqdm(images, desc="detecting", dynamic_ncols=True)
    written = 0
    for event, name, path in iterator:
        try:
            image = read_image(path)
        except ValueError as error:
            print(f"{error}, skipped", file=sys.stderr)
            if skipped is not None:
                skipped.append((path, str(error)))
            continue
        detections = detect(model, image, score_threshold=score_threshold, nms_threshold=nms_threshold)
        write_prediction_file(out_dir, event, name, detections[:, :5], integer_boxes=integer_boxes)
        written += 1
    return written
