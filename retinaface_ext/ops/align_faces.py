"""Face alignment: crops of faces warped onto a five-point template (insightface's norm_crop, batched)."""
import functools

import torch

from .. import reference
from .._extension import check_same_device, fused_op, register_fake, register_no_gradient
from ..reference._checks import check_integer
from ..reference.align_faces import arcface_template

__all__ = ["align_faces", "arcface_template"]


def align_faces(images, landmarks, image_index, size=112, template=None, return_transforms=False):
    """Crops of faces aligned to a five-point template, as insightface's ``norm_crop``, all at once.

    Args:
        images: [B, H, W, C] uint8 (or float32/float64/float16/bfloat16) images,
            channels last (e.g. BGR as ``cv2.imread`` gives them, C = 3).
        landmarks: [N, 5, 2] floating, the five landmarks of N faces in image
            pixels (left eye, right eye, nose, left and right mouth corner:
            ``detect()``'s columns 5-14), on the images' device.
        image_index: [N] integer, the image of each face.
        size: the crops' side in pixels.
        template: [5, 2] target points in crop pixels; default the ArcFace
            template for this size (:func:`arcface_template`).
        return_transforms: also return the transforms.

    Returns:
        crops [N, size, size, C] in the images' dtype, and with
        ``return_transforms`` the float64 [N, 2, 3] image -> crop matrices
        (``cv2.warpAffine``'s convention; map a crop point back with their
        inverse).

    Per face, the least-squares similarity transform (rotation, uniform scale,
    translation) from the landmarks to the template, in closed form (Umeyama
    1991; scikit-image's ``SimilarityTransform`` estimate to float64
    rounding), then ``cv2.warpAffine(image, M, (size, size),
    borderValue=0)``'s bilinear sampling: crop pixel (x, y) samples image
    point M^-1 (x, y) (no half-pixel offset), in OpenCV's fixed-point
    arithmetic (positions in 1/32 pixel, integer weights), so uint8 crops are
    bit-identical to OpenCV 4.10 and earlier (OpenCV 4.11+ interpolates in
    float32: about 0.05 gray levels apart on average). Outside the image is
    black.

    A face whose transform is undefined -- all five landmarks equal (e.g.
    biubug6's -1 for faces without landmarks), a NaN or infinite coordinate,
    or a template whose points are all equal -- gets an all-zero crop and a
    NaN transform; filter with ``torch.isnan(transforms).any((1, 2))``.
    Out-of-range ``image_index`` values raise on the CPU; on CUDA, which would
    need a host synchronisation to check them, such faces get an all-zero
    crop. Not differentiable: asking for a gradient raises.

    The CPU kernel runs faces in parallel; for 3-channel uint8 images it
    samples 16 pixels per step with AVX-512 (8 with AVX2) where the CPU has it.
    """
    size = check_integer("align_faces", "size", size)
    template = _template(template, size, images)
    op = fused_op("align_faces")
    if op is None:
        _check_align_args(images, landmarks, image_index, size, template)
        return reference.align_faces(images, landmarks, image_index, size, template, return_transforms)
    crops, transforms = op(images, landmarks, image_index, size, template)
    return (crops, transforms) if return_transforms else crops


@functools.lru_cache(maxsize=16)
def _default_template(size, device):
    return arcface_template(size, device)


def _template(template, size, images):
    if template is None:
        if size > 0:
            return _default_template(size, images.device)
        return arcface_template(size, images.device)  # raises the ValueError for a bad size
    if isinstance(template, torch.Tensor):
        return template
    return torch.as_tensor(template, dtype=torch.float64, device=images.device)


# ---------------------------------------------------------------- fake (meta)
# The checks of csrc/common/align_faces_checks.h, with the same messages: the
# fake is what reports a bad call under torch.compile, and the reference
# fallback runs them too.

_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_align_args(images, landmarks, image_index, size, template):
    op = "align_faces()"
    torch._check(images.dim() == 4,
                 lambda: f"{op}: images must have shape [B, H, W, C], got {list(images.shape)}")
    torch._check(images.dtype == torch.uint8 or images.dtype in _FLOATING,
                 lambda: f"{op}: images must be uint8 or floating (float32, float64, float16 or bfloat16), "
                 f"got {images.dtype}")
    torch._check(landmarks.dim() == 3 and landmarks.shape[1] == 5 and landmarks.shape[2] == 2,
                 lambda: f"{op}: landmarks must have shape [N, 5, 2], got {list(landmarks.shape)}")
    torch._check(landmarks.dtype in _FLOATING,
                 lambda: f"{op}: landmarks must be a floating tensor (float32, float64, float16 or bfloat16), "
                 f"got {landmarks.dtype}")
    torch._check(image_index.dim() == 1 and image_index.shape[0] == landmarks.shape[0],
                 lambda: f"{op}: image_index must have shape [N] with N = landmarks.size(0) = "
                 f"{landmarks.shape[0]}, got {list(image_index.shape)}")
    torch._check(not image_index.dtype.is_floating_point and not image_index.dtype.is_complex
                 and image_index.dtype != torch.bool,
                 lambda: f"{op}: image_index must be an integer tensor, got {image_index.dtype}")
    torch._check(template.dim() == 2 and template.shape[0] == 5 and template.shape[1] == 2,
                 lambda: f"{op}: template must have shape [5, 2], got {list(template.shape)}")
    torch._check(template.dtype in _FLOATING,
                 lambda: f"{op}: template must be a floating tensor (float32, float64, float16 or bfloat16), "
                 f"got {template.dtype}")
    torch._check(size > 0, lambda: f"{op}: size must be positive, got {size}")
    check_same_device("align_faces", "images", images, landmarks=landmarks, image_index=image_index,
                      template=template)


@register_fake("align_faces")
def _align_faces_fake(images, landmarks, image_index, size, face_template):
    _check_align_args(images, landmarks, image_index, size, face_template)
    crops = images.new_empty((landmarks.shape[0], size, size, images.shape[3]))
    transforms = landmarks.new_empty((landmarks.shape[0], 2, 3), dtype=torch.float64)
    return crops, transforms


# ------------------------------------------------------------------- autograd


register_no_gradient("align_faces", "it crops images for recognition. Detach its inputs (images, landmarks), "
                     "or use torch.nn.functional.grid_sample for a differentiable warp.")
