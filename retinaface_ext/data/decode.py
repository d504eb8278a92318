"""Reading training images: libjpeg-turbo through simplejpeg when it is installed, else OpenCV.

``cv2.imread`` (what biubug6 uses) and simplejpeg both decode JPEGs with
libjpeg-turbo's accurate integer IDCT and smooth chroma upsampling, so the
pixels are the same (tests/test_decode.py checks 4:2:0, 4:2:2, 4:4:4,
progressive and grayscale files); simplejpeg skips OpenCV's overhead (about
15 % of the decode time of a 1024 x 624 photo here). OpenCV is used for
everything else: other formats, CMYK JPEGs, files simplejpeg rejects (it is
strict about truncated data, OpenCV decodes what it can), and JPEGs whose
EXIF orientation asks for a rotation (cv2.imread applies it, simplejpeg
would not). ``pip install simplejpeg`` (in the ``train`` extra) to use it.

The training transform needs only its crop of each image: :func:`open_lazily`
returns a :class:`JpegFile` (the bytes and the size from the header) that
decodes just that rectangle with the extension's ``decode_jpeg_region``
(libjpeg-turbo's partial decompression, csrc/io/jpeg_region.cpp; built when
libjpeg's development files are installed). Its pixels equal the whole
decode's (tests/test_decode.py); without it the whole image is decoded.
"""
import os
import struct

import numpy as np

try:
    import simplejpeg
except ImportError:  # optional: OpenCV decodes everything then
    simplejpeg = None


def _header_segments(data):
    """(marker, segment) of each header segment of JPEG bytes, up to the first scan."""
    position = 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xFF:  # a fill byte: any marker may follow any number of them (T.81 B.1.1.2)
            position += 1
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no more headers
            return
        length = struct.unpack(">H", data[position + 2:position + 4])[0]
        yield marker, data[position + 4:position + 2 + length]
        position += 2 + length


def exif_orientation(data):
    """The EXIF orientation tag (1..8) of JPEG bytes (or a bytearray), or None when there is none."""
    for marker, segment in _header_segments(data):
        if marker == 0xE1 and segment[:6] == b"Exif\x00\x00":
            tiff = segment[6:]
            order = {b"II": "<", b"MM": ">"}.get(bytes(tiff[:2]))  # a bytearray slice is not hashable
            if order is None or len(tiff) < 8:
                return None
            ifd = struct.unpack(order + "I", tiff[4:8])[0]
            if ifd + 2 > len(tiff):
                return None
            count = struct.unpack(order + "H", tiff[ifd:ifd + 2])[0]
            for entry in range(count):
                start = ifd + 2 + 12 * entry
                if start + 12 > len(tiff):
                    return None
                tag, kind = struct.unpack(order + "HH", tiff[start:start + 4])
                if tag == 0x0112 and kind == 3:
                    return struct.unpack(order + "H", tiff[start + 8:start + 10])[0]
            return None
    return None


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers (not DHT, JPG, DAC)


def jpeg_size(data):
    """(height, width) from the frame header of JPEG bytes, or None when there is none."""
    for marker, segment in _header_segments(data):
        if marker in _SOF_MARKERS and len(segment) >= 5:
            height, width = struct.unpack(">HH", segment[1:5])
            return (height, width) if height and width else None
    return None


def max_image_pixels():
    """cv2.imread's limit on width x height (``OPENCV_IO_MAX_IMAGE_PIXELS``, default 2**30)."""
    return int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", 1 << 30))


def _too_large(size):
    # A header claiming more pixels than cv2.imread reads (a few bytes can claim 65500 x 65500):
    # left to cv2, which refuses it, instead of allocating the image first.
    return size is not None and size[0] * size[1] > max_image_pixels()


def decode_jpeg_bgr(data):
    """BGR uint8 [H, W, 3] from JPEG bytes with simplejpeg, or None where OpenCV must decode them."""
    if simplejpeg is None or data[:2] != b"\xff\xd8" or exif_orientation(data) not in (None, 1):
        return None
    if _too_large(jpeg_size(data)):
        return None
    try:
        return simplejpeg.decode_jpeg(data, colorspace="BGR")
    except ValueError:  # CMYK, truncated, ...
        return None


def read_bgr_image(path, context=""):
    """Reads an image file as BGR uint8 [H, W, 3]; ``FileNotFoundError`` naming the path if it cannot."""
    import cv2

    try:
        with open(path, "rb") as handle:
            image = decode_jpeg_bgr(handle.read())
    except OSError:
        image = None
    detail = ""
    if image is None:
        try:
            image = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
        except cv2.error as error:  # e.g. more than OPENCV_IO_MAX_IMAGE_PIXELS
            image, detail = None, f" (cv2.imread: {error.err})"
    if image is None:
        reason = "image not found" if not os.path.exists(path) else "cannot decode image"
        raise FileNotFoundError(f"{reason}: {path}{context}{detail}")
    return image


def _region_decoder():
    import torch

    from .._extension import HAS_EXTENSION

    if not HAS_EXTENSION or not hasattr(torch.ops, "retinaface_io"):
        return None
    try:
        return torch.ops.retinaface_io.decode_jpeg_region
    except (AttributeError, RuntimeError):  # built without libjpeg
        return None


class JpegFile:
    """A JPEG read but not decoded: its bytes and size; decodes the whole image or one rectangle.

    Made by :func:`open_lazily`; ``shape`` is (height, width, 3) as the
    decoded image's; ``context`` ends the message of an error that names the file.
    """

    def __init__(self, path, data, height, width, decoder, context=""):
        self.path = path
        self.data = data
        self.shape = (height, width, 3)
        self._decoder = decoder
        self.context = context

    def decode(self, context=None):
        """The whole image, as :func:`read_bgr_image` gives it."""
        image = decode_jpeg_bgr(self.data)
        return image if image is not None else read_bgr_image(self.path, self.context if context is None else context)

    def decode_region(self, left, top, width, height):
        """BGR uint8 [height, width, 3]: ``decode()[top:top + height, left:left + width]``, decoding less."""
        import torch

        try:
            region = self._decoder(torch.frombuffer(self.data, dtype=torch.uint8), left, top, width, height)
            return region.numpy()
        except RuntimeError:  # CMYK, a corrupt file, ...: the whole decode says what it can
            return np.ascontiguousarray(self.decode()[top:top + height, left:left + width])


def open_lazily(path, context=""):
    """A :class:`JpegFile` for a JPEG that can be decoded by region, else the decoded image (read_bgr_image)."""
    decoder = _region_decoder()
    if decoder is not None:
        try:
            with open(path, "rb") as handle:
                data = bytearray(handle.read())
        except OSError:
            data = None
        if data is not None and data[:2] == b"\xff\xd8" and exif_orientation(data) in (None, 1):
            size = jpeg_size(data)
            if size is not None and not _too_large(size):
                return JpegFile(path, data, size[0], size[1], decoder, context)
    return read_bgr_image(path, context)
