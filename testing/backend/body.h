// Deterministic test bodies and the FNV-1a-64 hash shared by the backend and
// the load generator.
//
// Contract (the client relies on it to verify every byte independently):
//
//   BodyWord(seed, w) = SplitMix64Finalize(seed + (w + 1) * 0x9E3779B97F4A7C15)
//   byte i of the body for `seed` = byte (i % 8) of BodyWord(seed, i / 8),
//                                   little-endian, i.e. (word >> (8 * (i % 8))) & 0xff
//
// SplitMix64Finalize(z): z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
//                        z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
//                        return z ^ (z >> 31).
//
// A body is a pure function of (seed, offset), so any range of it can be
// generated or checked without the preceding bytes; one 64-bit mix per eight
// bytes keeps generation far faster than the socket.
//
// X-Body-Fnv / X-Upload-Fnv carry FNV-1a-64 (offset basis 0xcbf29ce484222325,
// prime 0x100000001b3) of the body bytes as 16 lowercase hex digits.

#ifndef REMATCHER_TESTING_BACKEND_BODY_H_
#define REMATCHER_TESTING_BACKEND_BODY_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace rematcher::backend {

inline uint64_t SplitMix64Finalize(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

inline uint64_t BodyWord(uint64_t seed, uint64_t word_index) {
  return SplitMix64Finalize(seed + (word_index + 1) * 0x9E3779B97F4A7C15ULL);
}

inline uint8_t BodyByte(uint64_t seed, uint64_t offset) {
  return static_cast<uint8_t>(BodyWord(seed, offset / 8) >> (8 * (offset % 8)));
}

// Writes body bytes [offset, offset + n) for `seed` to `out`.
inline void FillBody(uint64_t seed, uint64_t offset, char* out, size_t n) {
  // Unaligned head, byte by byte.
  while (n > 0 && offset % 8 != 0) {
    *out++ = static_cast<char>(BodyByte(seed, offset++));
    --n;
  }
  // Whole words; GCC merges the eight shifted stores into one.
  uint64_t w = offset / 8;
  while (n >= 8) {
    const uint64_t v = BodyWord(seed, w++);
    for (int b = 0; b < 8; ++b) out[b] = static_cast<char>(v >> (8 * b));
    out += 8;
    n -= 8;
  }
  offset = w * 8;
  while (n > 0) {
    *out++ = static_cast<char>(BodyByte(seed, offset++));
    --n;
  }
}

// Incremental FNV-1a-64.
class Fnv1a64 {
 public:
  static constexpr uint64_t kOffsetBasis = 0xcbf29ce484222325ULL;
  static constexpr uint64_t kPrime = 0x100000001b3ULL;

  void Update(const char* data, size_t n) {
    uint64_t h = h_;
    for (size_t i = 0; i < n; ++i) {
      h ^= static_cast<uint8_t>(data[i]);
      h *= kPrime;
    }
    h_ = h;
  }
  uint64_t value() const { return h_; }
  void Reset() { h_ = kOffsetBasis; }

 private:
  uint64_t h_ = kOffsetBasis;
};

inline uint64_t Fnv1a64Of(const char* data, size_t n) {
  Fnv1a64 f;
  f.Update(data, n);
  return f.value();
}

// FNV-1a-64 of the whole body of `size_bytes` for `seed`, generated in chunks.
inline uint64_t BodyFnv(uint64_t seed, uint64_t size_bytes) {
  constexpr size_t kChunkBytes = 16 * 1024;
  char buf[kChunkBytes];
  Fnv1a64 f;
  for (uint64_t off = 0; off < size_bytes; off += kChunkBytes) {
    const size_t n = static_cast<size_t>(
        size_bytes - off < kChunkBytes ? size_bytes - off : kChunkBytes);
    FillBody(seed, off, buf, n);
    f.Update(buf, n);
  }
  return f.value();
}

// 16 lowercase hex digits, the wire form of X-Body-Fnv and X-Upload-Fnv.
inline std::string FnvHex(uint64_t v) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i) {
    s[i] = kDigits[v & 0xf];
    v >>= 4;
  }
  return s;
}

}  // namespace rematcher::backend

#endif  // REMATCHER_TESTING_BACKEND_BODY_H_
