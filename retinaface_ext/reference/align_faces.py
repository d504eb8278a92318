"""Face alignment in pure PyTorch: the oracle of align_faces' kernels and its fallback.

The arithmetic is csrc/common/align_math.h's, written with whole-tensor
operations in the same order, so the results equal the kernels' bit for bit:
the least-squares similarity transform of the five landmarks onto the template
(closed-form Umeyama, float64), its inverse as cv2.warpAffine computes it, the
source positions in OpenCV's fixed point (1/1024 pixel, cut to 1/32) and
bilinear weights that are integers summing to 1024, black outside the image.
"""
import torch

from ._checks import check_integer

#: insightface's ArcFace template for 112 x 112 crops (left eye, right eye, nose,
#: left and right mouth corners), in crop pixels.
ARCFACE_TEMPLATE_112 = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)

_POSITION_BITS = 10  # positions in 1/1024 pixel ...
_FRACTION_BITS = 5  # ... cut to 1/32 pixel
_ROW_ROUNDING = 1 << (_POSITION_BITS - _FRACTION_BITS - 1)
_WEIGHT_BITS = 2 * _FRACTION_BITS  # the four weights sum to 1024
_ROUNDING_BIAS = 6755399441055744.0  # 1.5 * 2^52


def arcface_template(size=112, device=None):
    """insightface's ArcFace template for ``size`` x ``size`` crops, float32 [5, 2] in crop pixels.

    As insightface's ``estimate_norm``: for a size that is a multiple of 112
    the 112-pixel template scaled by size / 112; for other multiples of 128
    scaled by size / 128 and shifted 8 * size / 128 pixels right (the
    128-pixel crops some models take). insightface refuses other sizes; here
    they get the template scaled by size / 112. The arithmetic is float32, as
    insightface's (its template is a float32 array), so the points are the
    same floats.
    """
    size = check_integer("arcface_template", "size", size)
    if size <= 0:
        raise ValueError(f"arcface_template(): size must be positive, got {size}")
    if size % 112 != 0 and size % 128 == 0:
        ratio, shift = size / 128.0, 8.0 * size / 128.0
    else:
        ratio, shift = size / 112.0, 0.0
    template = torch.tensor(ARCFACE_TEMPLATE_112, dtype=torch.float32) * ratio
    template[:, 0] += shift
    return template.to(device)


def similarity_transforms(landmarks, template):
    """The least-squares similarity transforms taking landmarks [N, 5, 2] to template [5, 2].

    Float64 [N, 2, 3] image -> crop matrices (cv2.warpAffine's convention),
    all NaN where undefined (all points equal, a non-finite coordinate, or a
    template whose points are all equal). Closed-form Umeyama, see
    csrc/common/align_math.h.
    """
    src = landmarks.to(torch.float64)
    dst = template.to(device=src.device, dtype=torch.float64)
    # Sums in point order, as the kernels' loops.
    src_x = src[:, 0, 0] + src[:, 1, 0] + src[:, 2, 0] + src[:, 3, 0] + src[:, 4, 0]
    src_y = src[:, 0, 1] + src[:, 1, 1] + src[:, 2, 1] + src[:, 3, 1] + src[:, 4, 1]
    dst_x = dst[0, 0] + dst[1, 0] + dst[2, 0] + dst[3, 0] + dst[4, 0]
    dst_y = dst[0, 1] + dst[1, 1] + dst[2, 1] + dst[3, 1] + dst[4, 1]
    src_x, src_y, dst_x, dst_y = src_x / 5, src_y / 5, dst_x / 5, dst_y / 5
    px, py = src[:, :, 0] - src_x[:, None], src[:, :, 1] - src_y[:, None]
    qx, qy = dst[:, 0] - dst_x, dst[:, 1] - dst_y
    dot_terms = px * qx + py * qy
    cross_terms = px * qy - py * qx
    norm_terms = px * px + py * py
    dot = dot_terms[:, 0] + dot_terms[:, 1] + dot_terms[:, 2] + dot_terms[:, 3] + dot_terms[:, 4]
    cross = cross_terms[:, 0] + cross_terms[:, 1] + cross_terms[:, 2] + cross_terms[:, 3] + cross_terms[:, 4]
    norm = norm_terms[:, 0] + norm_terms[:, 1] + norm_terms[:, 2] + norm_terms[:, 3] + norm_terms[:, 4]
    a, b = dot / norm, cross / norm
    tx = dst_x - (a * src_x - b * src_y)
    ty = dst_y - (b * src_x + a * src_y)
    transforms = torch.stack([torch.stack([a, -b, tx], 1), torch.stack([b, a, ty], 1)], 1)
    valid = (a * a + b * b > 0) & torch.isfinite(a) & torch.isfinite(b) & torch.isfinite(tx) & torch.isfinite(ty)
    return torch.where(valid[:, None, None], transforms, torch.full_like(transforms, float("nan")))


def _round_to_int32(v):
    """cvRound + saturate_cast<int> (nearest, ties to even, clamped; NaN -> INT32_MIN), as int64."""
    v = torch.where(v > -2147483648.0, v, torch.full_like(v, -2147483648.0))
    v = torch.where(v < 2147483647.0, v, torch.full_like(v, 2147483647.0))
    return ((v + _ROUNDING_BIAS) - _ROUNDING_BIAS).to(torch.int64)


def _fixed_point_positions(transforms, size):
    """Source positions of every crop pixel in 1/32 pixel: (x32, y32), int64 [N, size, size] each."""
    m = transforms.reshape(-1, 6)
    m0, m1, m2, m3, m4, m5 = m.unbind(1)
    d = m0 * m4 - m1 * m3
    d = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    i0, i1, i3, i4 = m4 * d, m1 * -d, m3 * -d, m0 * d
    i2 = -i0 * m2 - i1 * m5
    i5 = -i3 * m2 - i4 * m5
    steps = torch.arange(size, dtype=torch.float64, device=m.device)
    scale = float(1 << _POSITION_BITS)

    def column(coefficient):
        return _round_to_int32(coefficient[:, None] * steps * scale)

    def row(coefficient, constant):
        return _round_to_int32((coefficient[:, None] * steps + constant[:, None]) * scale) + _ROW_ROUNDING

    shift = _POSITION_BITS - _FRACTION_BITS
    x32 = (row(i1, i2)[:, :, None] + column(i0)[:, None, :]) >> shift
    y32 = (row(i4, i5)[:, :, None] + column(i3)[:, None, :]) >> shift
    return x32, y32


def align_faces(images, landmarks, image_index, size=112, template=None, return_transforms=False):
    """Crops of faces aligned to a template; see retinaface_ext.ops.align_faces for the contract."""
    size = check_integer("align_faces", "size", size)
    if template is None:
        template = arcface_template(size, images.device)
    elif not isinstance(template, torch.Tensor):
        template = torch.as_tensor(template, dtype=torch.float64, device=images.device)
    num_faces, channels = landmarks.shape[0], images.shape[3]
    transforms = similarity_transforms(landmarks, template)
    index = image_index.to(torch.int64)
    if num_faces and ((index < 0) | (index >= images.shape[0])).any():
        bad = int(torch.nonzero((index < 0) | (index >= images.shape[0]))[0, 0])
        raise IndexError(f"align_faces(): image_index[{bad}] = {int(index[bad])} is out of range for "
                         f"{images.shape[0]} images")
    if num_faces == 0 or images.shape[1] == 0 or images.shape[2] == 0:  # nothing to sample
        crops = images.new_zeros((num_faces, size, size, channels))
        return (crops, transforms) if return_transforms else crops
    x32, y32 = _fixed_point_positions(transforms, size)
    ix, iy = x32 >> _FRACTION_BITS, y32 >> _FRACTION_BITS
    fx, fy = x32 & ((1 << _FRACTION_BITS) - 1), y32 & ((1 << _FRACTION_BITS) - 1)
    one = 1 << _FRACTION_BITS
    weights = ((one - fx) * (one - fy), fx * (one - fy), (one - fx) * fy, fx * fy)
    height, width = images.shape[1], images.shape[2]
    uint8 = images.dtype == torch.uint8
    compute = torch.float64 if images.dtype == torch.float64 else torch.float32
    per_face = index[:, None, None].expand_as(ix)
    total = None
    for k, weight in enumerate(weights):
        x, y = ix + (k & 1), iy + (k >> 1)
        inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
        values = images[per_face, y.clamp(0, height - 1), x.clamp(0, width - 1)]
        if uint8:
            term = values.to(torch.int64) * weight[..., None]
        else:
            term = values.to(compute) * (weight.to(compute) * (1.0 / (1 << _WEIGHT_BITS)))[..., None]
        term = torch.where(inside[..., None], term, torch.zeros_like(term))
        total = term if total is None else total + term
    if uint8:
        crops = ((total + (1 << (_WEIGHT_BITS - 1))) >> _WEIGHT_BITS).to(torch.uint8)
    else:
        crops = total.to(images.dtype)
    valid = ~torch.isnan(transforms).any(dim=(1, 2))
    crops = torch.where(valid[:, None, None, None], crops, torch.zeros_like(crops))
    return (crops, transforms) if return_transforms else crops
