"""retinaface_ext.data.decode: simplejpeg where it gives cv2.imread's pixels, OpenCV otherwise."""
import io

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from retinaface_ext.data import decode  # noqa: E402
from retinaface_ext.data.decode import exif_orientation, read_bgr_image  # noqa: E402


@pytest.fixture(scope="module")
def photo():
    skimage_data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(cv2.resize(skimage_data.coffee(), (301, 203))[:, :, ::-1])


@pytest.mark.parametrize("flags", [
    [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420],
    [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422],
    [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444],
    [cv2.IMWRITE_JPEG_PROGRESSIVE, 1],
    [cv2.IMWRITE_JPEG_QUALITY, 60],
], ids=["420", "422", "444", "progressive", "q60"])
def test_same_pixels_as_cv2_imread(tmp_path, photo, flags):
    path = str(tmp_path / "a.jpg")
    assert cv2.imwrite(path, photo, flags)
    assert np.array_equal(read_bgr_image(path), cv2.imread(path, cv2.IMREAD_COLOR))


def test_grayscale_and_png(tmp_path, photo):
    gray = str(tmp_path / "g.jpg")
    png = str(tmp_path / "p.png")
    assert cv2.imwrite(gray, cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)) and cv2.imwrite(png, photo)
    for path in (gray, png):
        assert np.array_equal(read_bgr_image(path), cv2.imread(path, cv2.IMREAD_COLOR))


def test_simplejpeg_is_used_for_plain_jpegs(tmp_path, photo, monkeypatch):
    pytest.importorskip("simplejpeg")
    path = str(tmp_path / "a.jpg")
    cv2.imwrite(path, photo)
    calls = []
    real = decode.simplejpeg.decode_jpeg
    monkeypatch.setattr(decode.simplejpeg, "decode_jpeg", lambda *a, **k: calls.append(1) or real(*a, **k))
    read_bgr_image(path)
    assert calls


def test_exif_rotation_falls_back_to_opencv(tmp_path, photo):
    image = pytest.importorskip("PIL.Image")
    path = str(tmp_path / "rotated.jpg")
    exif = image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.fromarray(photo[:, :, ::-1]).save(path, exif=exif)
    with open(path, "rb") as f:
        assert exif_orientation(f.read()) == 6
    expected = cv2.imread(path, cv2.IMREAD_COLOR)
    assert expected.shape[:2] == (photo.shape[1], photo.shape[0])  # cv2 applied the rotation
    assert np.array_equal(read_bgr_image(path), expected)


def test_truncated_jpeg_decodes_like_opencv(tmp_path, photo):
    path = tmp_path / "cut.jpg"
    ok, data = cv2.imencode(".jpg", photo)
    path.write_bytes(data.tobytes()[: len(data) * 2 // 3])
    expected = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if expected is None:
        with pytest.raises(FileNotFoundError, match="cannot decode"):
            read_bgr_image(str(path))
    else:
        assert np.array_equal(read_bgr_image(str(path)), expected)


def test_missing_and_garbage_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="image not found: .*missing.jpg"):
        read_bgr_image(str(tmp_path / "missing.jpg"))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8not a jpeg")
    with pytest.raises(FileNotFoundError, match="cannot decode image: .*bad.jpg"):
        read_bgr_image(str(tmp_path / "bad.jpg"))


region_decoder = decode._region_decoder()
needs_region_decode = pytest.mark.skipif(region_decoder is None,
                                         reason="the extension was built without libjpeg (csrc/io/jpeg_region.cpp)")
FORMATS = {
    "420": [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420],
    "422": [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422],
    "444": [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444],
    "progressive": [cv2.IMWRITE_JPEG_PROGRESSIVE, 1],
    "gray": None,
}


@needs_region_decode
@pytest.mark.parametrize("name", list(FORMATS))
def test_region_decode_equals_the_whole_decode(tmp_path, photo, name):
    path = str(tmp_path / "a.jpg")
    image = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY) if name == "gray" else photo
    assert cv2.imwrite(path, image, FORMATS[name] or [])
    expected = cv2.imread(path, cv2.IMREAD_COLOR)
    jpeg = decode.open_lazily(path)
    assert isinstance(jpeg, decode.JpegFile) and jpeg.shape == expected.shape
    rng = np.random.default_rng(0)
    # The whole image, rectangles on every edge and iMCU boundary, tiny ones, random ones.
    regions = [(0, 0, 301, 203), (0, 0, 1, 1), (300, 202, 1, 1), (16, 16, 16, 16), (15, 17, 33, 31),
               (0, 100, 301, 103), (150, 0, 151, 203)]
    for _ in range(20):
        w, h = int(rng.integers(1, 302)), int(rng.integers(1, 204))
        regions.append((int(rng.integers(0, 302 - w)), int(rng.integers(0, 204 - h)), w, h))
    for left, top, w, h in regions:
        assert np.array_equal(jpeg.decode_region(left, top, w, h), expected[top:top + h, left:left + w]), \
            (left, top, w, h)


@needs_region_decode
def test_region_decode_of_a_truncated_file_matches_opencv(tmp_path, photo):
    path = tmp_path / "cut.jpg"
    ok, data = cv2.imencode(".jpg", photo)
    path.write_bytes(data.tobytes()[: len(data) * 2 // 3])
    expected = cv2.imread(str(path), cv2.IMREAD_COLOR)
    jpeg = decode.open_lazily(str(path))
    assert expected is not None and isinstance(jpeg, decode.JpegFile)
    assert np.array_equal(jpeg.decode_region(40, 150, 200, 50), expected[150:200, 40:240])


@needs_region_decode
def test_region_decode_rejects_bad_regions(tmp_path, photo):
    import torch

    path = str(tmp_path / "a.jpg")
    cv2.imwrite(path, photo)
    data = torch.frombuffer(bytearray(open(path, "rb").read()), dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="not inside the image"):
        region_decoder(data, 290, 0, 20, 10)
    with pytest.raises(RuntimeError, match="not inside the image"):  # checked before 12 GB are allocated
        region_decoder(data, 0, 0, 65535, 65535)
    lying = bytearray(data.numpy().tobytes())  # a header that claims 40000 x 40000 pixels
    frame = lying.find(b"\xff\xc0")
    lying[frame + 5:frame + 9] = (40000).to_bytes(2, "big") * 2
    with pytest.raises(RuntimeError, match="more than 2\\^30 pixels"):
        region_decoder(torch.frombuffer(lying, dtype=torch.uint8), 0, 0, 40000, 40000)
    with pytest.raises(RuntimeError, match="bad region"):
        region_decoder(data, 0, 0, 0, 10)
    with pytest.raises(RuntimeError, match="cannot decode"):
        region_decoder(torch.frombuffer(bytearray(b"\xff\xd8not a jpeg"), dtype=torch.uint8), 0, 0, 1, 1)


def test_open_lazily_decodes_what_it_cannot_defer(tmp_path, photo):
    png = str(tmp_path / "p.png")
    cv2.imwrite(png, photo)
    assert np.array_equal(decode.open_lazily(png), cv2.imread(png, cv2.IMREAD_COLOR))
    with pytest.raises(FileNotFoundError, match="image not found"):
        decode.open_lazily(str(tmp_path / "missing.jpg"))
    ok, data = cv2.imencode(".jpg", photo)
    assert decode.jpeg_size(data.tobytes()) == photo.shape[:2]
    assert decode.jpeg_size(b"\xff\xd8\xff\xd9") is None


@pytest.mark.parametrize("orientation", [1, 6])
def test_open_lazily_reads_jpegs_with_exif(tmp_path, photo, orientation):
    # open_lazily reads the file as a bytearray (for torch.frombuffer): the EXIF parse must take one.
    image = pytest.importorskip("PIL.Image")
    path = str(tmp_path / "exif.jpg")
    exif = image.Exif()
    exif[0x0112] = orientation
    image.fromarray(photo[:, :, ::-1]).save(path, exif=exif)
    with open(path, "rb") as f:
        assert exif_orientation(bytearray(f.read())) == orientation
    expected = cv2.imread(path, cv2.IMREAD_COLOR)
    lazy = decode.open_lazily(path)
    if isinstance(lazy, decode.JpegFile):
        assert orientation == 1
        lazy = lazy.decode_region(0, 0, lazy.shape[1], lazy.shape[0])
    assert np.array_equal(lazy, expected)


def test_headers_larger_than_cv2_reads_are_refused_before_decoding(tmp_path, photo, monkeypatch):
    # A few kB whose frame header claims 40000 x 40000 pixels: cv2.imread refuses it (more than
    # OPENCV_IO_MAX_IMAGE_PIXELS, 2**30); we must too, naming the file, without allocating 4.8 GB first.
    from retinaface_ext.data import TrainTransform, WiderFaceDataset, write_label_file

    ok, encoded = cv2.imencode(".jpg", photo)
    data = bytearray(encoded.tobytes())
    frame = data.find(b"\xff\xc0")
    data[frame + 5:frame + 9] = (40000).to_bytes(2, "big") * 2
    (tmp_path / "images").mkdir()
    path = tmp_path / "images" / "huge.jpg"
    path.write_bytes(bytes(data))
    assert decode.jpeg_size(data) == (40000, 40000)

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded a header larger than cv2.imread reads")

    if decode.simplejpeg is not None:
        monkeypatch.setattr(decode.simplejpeg, "decode_jpeg", must_not_decode)
    monkeypatch.setattr(decode, "_region_decoder", lambda: must_not_decode)
    with pytest.raises(FileNotFoundError, match="cannot decode image: .*huge.jpg"):
        read_bgr_image(str(path))
    with pytest.raises(FileNotFoundError, match="cannot decode image: .*huge.jpg"):
        decode.open_lazily(str(path))
    label = tmp_path / "label.txt"
    write_label_file(label, [("huge.jpg", np.array([[10, 10, 50, 50] + [-1] * 10 + [-1]], np.float32))])
    dataset = WiderFaceDataset(label, transform=TrainTransform(64))
    with pytest.raises(FileNotFoundError, match=r"huge.jpg \(listed in .*label.txt:1\)"):
        dataset[0]


@needs_region_decode
def test_a_jpeg_cut_after_its_frame_header_names_the_label_line(tmp_path, photo):
    # open_lazily accepts it (the size is in the header); the region decode fails, and so does
    # the whole decode it falls back to: the error names the file and the label.txt line.
    from retinaface_ext.data import TrainTransform, WiderFaceDataset, write_label_file

    ok, encoded = cv2.imencode(".jpg", photo)
    data = encoded.tobytes()
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "cut.jpg").write_bytes(data[:data.find(b"\xff\xc4")])  # up to the Huffman tables
    assert isinstance(decode.open_lazily(str(tmp_path / "images" / "cut.jpg")), decode.JpegFile)
    label = tmp_path / "label.txt"
    write_label_file(label, [("cut.jpg", np.array([[10, 10, 50, 50] + [-1] * 10 + [-1]], np.float32))])
    with pytest.raises(FileNotFoundError, match=r"cannot decode image: .*cut.jpg \(listed in .*label.txt:1\)"):
        WiderFaceDataset(label, transform=TrainTransform(64))[0]


def test_fill_bytes_before_markers(tmp_path, photo):
    # Any marker may be preceded by 0xFF fill bytes (ITU T.81 B.1.1.2); libjpeg skips them, and so
    # must our header walk: it missed the EXIF rotation, and simplejpeg decoded the image unrotated.
    image = pytest.importorskip("PIL.Image")
    path = tmp_path / "filled.jpg"
    exif = image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.fromarray(photo[:, :, ::-1]).save(buffer, format="JPEG", exif=exif)
    data = buffer.getvalue()
    for marker in (b"\xff\xe1", b"\xff\xc0"):  # EXIF, frame header
        data = data.replace(marker, b"\xff\xff" + marker, 1)
    path.write_bytes(data)
    assert exif_orientation(data) == 6 and decode.jpeg_size(data) == photo.shape[:2]
    expected = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert expected.shape[:2] == (photo.shape[1], photo.shape[0])  # cv2 applied the rotation
    assert np.array_equal(read_bgr_image(str(path)), expected)
    assert np.array_equal(decode.open_lazily(str(path)), expected)
    # Without the rotation: decoded by region, with the whole decode's pixels.
    data = data.replace(b"\xff\xff\xff\xe1", b"\xff\xe1", 1)
    path.write_bytes(data.replace(b"Exif\x00\x00", b"Exig\x00\x00", 1))
    expected = cv2.imread(str(path), cv2.IMREAD_COLOR)
    lazy = decode.open_lazily(str(path))
    if decode._region_decoder() is not None:
        assert isinstance(lazy, decode.JpegFile)
        lazy = lazy.decode_region(0, 0, lazy.shape[1], lazy.shape[0])
    assert np.array_equal(lazy, expected)
