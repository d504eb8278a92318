// retinaface_io::decode_jpeg_region: the pixels of one rectangle of a JPEG,
// decoded with libjpeg(-turbo)'s partial decompression: rows below the
// rectangle are never decoded, rows above it are only entropy-decoded
// (jpeg_skip_scanlines), and only the iMCU columns that cover it go through
// the IDCT and colour conversion (jpeg_crop_scanline). A training crop covers
// about 40 % of a WIDER FACE image on average, so this saves a good part of
// the decode.
//
// The pixels equal those of decoding the whole image (accurate integer IDCT,
// smooth "fancy" chroma upsampling, as cv2.imread and simplejpeg): the
// decoded area extends kContext pixels beyond the rectangle on every side, so
// the upsampler never sees a cut edge inside it (tests/test_decode.py).
//
// Built only when libjpeg's headers are found (setup.py); Python falls back
// to decoding the whole image otherwise.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <csetjmp>
#include <cstdio>  // before jpeglib.h, which uses FILE without including it
#include <cstring>
#include <vector>

#include <jpeglib.h>

namespace retinaface {
namespace {

constexpr int kContext = 16;  // one iMCU of 4:2:0 / 4:2:2 images

struct ErrorManager {
  jpeg_error_mgr pub;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void raise_error(j_common_ptr info) {
  auto* manager = reinterpret_cast<ErrorManager*>(info->err);
  (*info->err->format_message)(info, manager->message);
  std::longjmp(manager->jump, 1);
}

void ignore_message(j_common_ptr, int) {}  // warnings (e.g. extraneous bytes), as cv2.imread

struct Region {
  int left, top, width, height;
};

// Plain data only between setjmp and longjmp (no destructors are skipped).
// Writes the image's width and height from its header into image_size, then,
// unless out is nullptr (the header only), decodes the region into out.
// Returns nullptr, or the reason the rectangle cannot be decoded here.
const char* decode_region(const uint8_t* data, size_t size, const Region& region, uint8_t* out, unsigned char* row,
                          size_t row_capacity, int image_size[2], ErrorManager* errors) {
  jpeg_decompress_struct info;
  info.err = jpeg_std_error(&errors->pub);
  errors->pub.error_exit = raise_error;
  errors->pub.emit_message = ignore_message;
  jpeg_create_decompress(&info);
  if (setjmp(errors->jump)) {
    jpeg_destroy_decompress(&info);
    return errors->message;
  }
  jpeg_mem_src(&info, data, static_cast<unsigned long>(size));
  jpeg_read_header(&info, TRUE);
  const int image_width = static_cast<int>(info.image_width), image_height = static_cast<int>(info.image_height);
  image_size[0] = image_width;
  image_size[1] = image_height;
  // Checked in the header-only pass already, before the caller allocates.
  if (info.jpeg_color_space != JCS_YCbCr && info.jpeg_color_space != JCS_GRAYSCALE) {
    jpeg_destroy_decompress(&info);
    return "only YCbCr and grayscale JPEGs are decoded by region";
  }
  if (out == nullptr) {
    jpeg_destroy_decompress(&info);
    return nullptr;
  }
  // The caller has checked the region against image_size.
  const int left = region.left, top = region.top, width = region.width, height = region.height;
  info.out_color_space = JCS_EXT_BGR;
  info.dct_method = JDCT_ISLOW;
  info.do_fancy_upsampling = TRUE;
  jpeg_start_decompress(&info);
  JDIMENSION x = static_cast<JDIMENSION>(std::max(0, left - kContext));
  JDIMENSION decoded_width = static_cast<JDIMENSION>(std::min(image_width, left + width + kContext)) - x;
  if (decoded_width < info.output_width) jpeg_crop_scanline(&info, &x, &decoded_width);
  if (static_cast<size_t>(decoded_width) * 3 > row_capacity) {
    jpeg_abort_decompress(&info);
    jpeg_destroy_decompress(&info);
    return "internal error: row buffer too small";
  }
  const int first_row = std::max(0, top - kContext);
  if (first_row > 0) jpeg_skip_scanlines(&info, static_cast<JDIMENSION>(first_row));
  const size_t skip = static_cast<size_t>(left - static_cast<int>(x)) * 3;
  for (int y = first_row; y < top + height; ++y) {
    JSAMPROW rows[1] = {row};
    jpeg_read_scanlines(&info, rows, 1);
    if (y >= top) std::memcpy(out + static_cast<size_t>(y - top) * width * 3, row + skip, static_cast<size_t>(width) * 3);
  }
  jpeg_abort_decompress(&info);
  jpeg_destroy_decompress(&info);
  return nullptr;
}

at::Tensor decode_jpeg_region(const at::Tensor& data, int64_t left, int64_t top, int64_t width, int64_t height) {
  TORCH_CHECK(data.device().is_cpu() && data.scalar_type() == at::kByte && data.dim() == 1,
              "decode_jpeg_region(): data must be a 1-D uint8 CPU tensor (the file's bytes), got ",
              data.scalar_type(), " ", data.sizes(), " on ", data.device());
  TORCH_CHECK(width >= 1 && height >= 1 && width <= 65535 && height <= 65535 && left >= 0 && top >= 0,
              "decode_jpeg_region(): bad region (left ", left, ", top ", top, ", width ", width, ", height ", height,
              ")");
  const auto bytes = data.contiguous();
  const uint8_t* file = bytes.data_ptr<uint8_t>();
  const size_t file_size = static_cast<size_t>(bytes.numel());
  const Region region{static_cast<int>(left), static_cast<int>(top), static_cast<int>(width), static_cast<int>(height)};
  ErrorManager errors;
  int image_size[2] = {0, 0};
  // The header first: a region outside the image fails before its size is allocated.
  const char* failure = decode_region(file, file_size, region, nullptr, nullptr, 0, image_size, &errors);
  TORCH_CHECK(failure == nullptr, "decode_jpeg_region(): cannot decode this region: ", failure);
  TORCH_CHECK(left + width <= image_size[0] && top + height <= image_size[1],
              "decode_jpeg_region(): the region (left ", left, ", top ", top, ", width ", width, ", height ", height,
              ") is not inside the image (", image_size[0], " x ", image_size[1], ")");
  // cv2.imread's default limit (CV_IO_MAX_IMAGE_PIXELS): a header may claim any size up to 65535 x 65535.
  TORCH_CHECK(width * height <= (int64_t{1} << 30), "decode_jpeg_region(): the region (", width, " x ", height,
              ") has more than 2^30 pixels, the most cv2.imread decodes");
  at::Tensor out = at::empty({height, width, 3}, bytes.options());
  // Wide enough for the rectangle, its context and jpeg_crop_scanline's iMCU alignment.
  std::vector<unsigned char> row(static_cast<size_t>(width + 2 * kContext + 64) * 3);
  failure = decode_region(file, file_size, region, out.data_ptr<uint8_t>(), row.data(), row.size(), image_size,
                          &errors);
  TORCH_CHECK(failure == nullptr, "decode_jpeg_region(): cannot decode this region: ", failure);
  return out;
}

}  // namespace

TORCH_LIBRARY(retinaface_io, m) {
  m.def("decode_jpeg_region(Tensor data, int left, int top, int width, int height) -> Tensor");
  m.impl("decode_jpeg_region", c10::DispatchKey::CPU, &decode_jpeg_region);
}

}  // namespace retinaface
