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
"""
import os
import struct

import numpy as np

try:
    import simplejpeg
except ImportError:  # optional: OpenCV decodes everything then
    simplejpeg = None


def exif_orientation(data):
    """The EXIF orientation tag (1..8) of JPEG bytes, or None when there is none."""
    position = 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no more headers
            return None
        length = struct.unpack(">H", data[position + 2:position + 4])[0]
        segment = data[position + 4:position + 2 + length]
        if marker == 0xE1 and segment[:6] == b"Exif\x00\x00":
            tiff = segment[6:]
            order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
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
        position += 2 + length
    return None


def decode_jpeg_bgr(data):
    """BGR uint8 [H, W, 3] from JPEG bytes with simplejpeg, or None where OpenCV must decode them."""
    if simplejpeg is None or data[:2] != b"\xff\xd8" or exif_orientation(data) not in (None, 1):
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
    if image is None:
        image = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if image is None:
        reason = "image not found" if not os.path.exists(path) else "cannot decode image"
        raise FileNotFoundError(f"{reason}: {path}{context}")
    return image
