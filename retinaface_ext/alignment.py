"""Face crops for recognition: detect()'s faces aligned to the ArcFace template."""
import numpy as np
import torch

from . import ops
from .detection import prepare_images


def align(image, faces, size=112, template=None):
    """Crops of the faces ``detect()`` found in ``image``, aligned as insightface's ``norm_crop``.

    Args:
        image: one BGR uint8 image [H, W, 3] (any form ``detect()`` accepts
            for one image: gray and BGRA arrays are converted, a path is read).
        faces: ``detect()``'s float32 [n, 15] array for this image (the
            landmarks are columns 5-14), or any [n, >= 15] array like it.
        size: the crops' side in pixels (112 for ArcFace models; see
            ``ops.arcface_template`` for other sizes).
        template: [5, 2] target points in crop pixels instead of ArcFace's.

    Returns:
        uint8 [n, size, size, 3] crops in the image's channel order, one per
        face, in the order of ``faces``. A face without usable landmarks (all
        equal, e.g. -1, or NaN) gets an all-black crop.

    Two lines from a photo to crops for a recognition model::

        faces = retinaface_ext.detect(model, image)
        crops = retinaface_ext.align(image, faces)

    One ``ops.align_faces`` call does all faces; for faces of many images at
    once, call ``ops.align_faces`` with a batch of images and ``image_index``.
    """
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            and image.shape[2] == 3):
        images, _ = prepare_images(image, caller="align()")  # converts or raises
        if len(images) != 1:
            raise ValueError(f"align(): image must be one image [H, W, 3], got {len(images)}; align the faces "
                             "of several images in one call with ops.align_faces(images, landmarks, image_index)")
        image = images[0]
    if not image.flags.writeable:
        image = image.copy()  # torch.from_numpy warns about read-only arrays (which we would only read)
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] < 15:
        raise ValueError(f"align(): faces must be detect()'s [n, 15] array, got shape {list(faces.shape)}")
    landmarks = torch.from_numpy(np.ascontiguousarray(faces[:, 5:15], dtype=np.float32).reshape(-1, 5, 2))
    images = torch.from_numpy(np.ascontiguousarray(image)[None])  # no copy when contiguous
    crops = ops.align_faces(images, landmarks, torch.zeros(len(faces), dtype=torch.int64), size, template)
    return crops.numpy()
