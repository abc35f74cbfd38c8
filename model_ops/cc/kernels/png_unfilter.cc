// PNG's scanline filters undone, as a plain C function that Python calls
// through ctypes (service.pipeline.png). Inflating is left to the caller:
// libdeflate inflates a PNG's stream many times faster than the zlib that
// libpng uses, and what no Python-reachable library does alone is the
// filters, which run sequentially along every row. A C function rather than
// a TensorFlow op: it writes into the caller's aligned NumPy buffer (an op's
// output would come from TensorFlow's allocator, which keeps large blocks).
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace {

enum Filter : uint8_t { kNone = 0, kSub = 1, kUp = 2, kAverage = 3, kPaeth = 4 };

// The predictor, written without branches (p - a = b - c, p - b = a - c):
// along a row each byte waits for the one before, so the chain is the cost.
inline uint8_t Paeth(int a, int b, int c) {
  const int pa = std::abs(b - c), pb = std::abs(a - c), pc = std::abs(a + b - 2 * c);
  const int nearer = pb <= pc ? b : c;
  return static_cast<uint8_t>(pa <= pb && pa <= pc ? a : nearer);
}

// One row (PNG specification, section 9): `in` its filtered bytes, `prior`
// the previous unfiltered row (nullptr above the first: zeros), `out` this
// row unfiltered. False for an unknown filter type.
bool UnfilterRow(uint8_t filter, const uint8_t* in, const uint8_t* prior, uint8_t* out,
                 int64_t n, int64_t bpp) {
  switch (filter) {
    case kNone:
      std::memcpy(out, in, n);
      return true;
    case kSub:
      if (bpp == 1) {  // the left byte carried in a register, not reloaded from `out`
        uint8_t left = 0;
        for (int64_t i = 0; i < n; ++i) out[i] = left = static_cast<uint8_t>(in[i] + left);
        return true;
      }
      for (int64_t i = 0; i < n; ++i) out[i] = in[i] + (i >= bpp ? out[i - bpp] : 0);
      return true;
    case kUp:
      if (prior == nullptr) {
        std::memcpy(out, in, n);
      } else {
        for (int64_t i = 0; i < n; ++i) out[i] = in[i] + prior[i];
      }
      return true;
    case kAverage:
      for (int64_t i = 0; i < n; ++i) {
        const int left = i >= bpp ? out[i - bpp] : 0;
        const int up = prior == nullptr ? 0 : prior[i];
        out[i] = in[i] + static_cast<uint8_t>((left + up) >> 1);
      }
      return true;
    case kPaeth:
      if (prior == nullptr) {  // Paeth(a, 0, 0) = a: Sub
        return UnfilterRow(kSub, in, prior, out, n, bpp);
      }
      for (int64_t i = 0; i < bpp && i < n; ++i) out[i] = in[i] + prior[i];  // Paeth(0, b, 0) = b
      if (bpp == 1) {
        uint8_t left = out[0];
        for (int64_t i = 1; i < n; ++i) {
          out[i] = left = static_cast<uint8_t>(in[i] + Paeth(left, prior[i], prior[i - 1]));
        }
        return true;
      }
      for (int64_t i = bpp; i < n; ++i) {
        out[i] = in[i] + Paeth(out[i - bpp], prior[i], prior[i - bpp]);
      }
      return true;
    default:
      return false;
  }
}

}  // namespace

// `scanlines`: `size` bytes, `height` rows of a filter byte then `row_bytes`
// bytes; `pixel_bytes` (1..8) how far back Sub, Average and Paeth look; `out`:
// height * row_bytes bytes. Returns 0, or -1 when the sizes disagree, or
// 1 + the index of the first row with an unknown filter type.
extern "C" int64_t ats_png_unfilter(const uint8_t* scanlines, int64_t size, int64_t height,
                                    int64_t row_bytes, int64_t pixel_bytes, uint8_t* out) {
  if (height <= 0 || row_bytes <= 0 || pixel_bytes < 1 || pixel_bytes > 8 ||
      size != height * (row_bytes + 1)) {
    return -1;
  }
  const uint8_t* prior = nullptr;
  for (int64_t y = 0; y < height; ++y) {
    const uint8_t* in = scanlines + y * (row_bytes + 1);
    uint8_t* row = out + y * row_bytes;
    if (!UnfilterRow(in[0], in + 1, prior, row, row_bytes, pixel_bytes)) return y + 1;
    prior = row;
  }
  return 0;
}
