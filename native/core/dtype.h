// Storage dtypes and scalar conversions.
//
// f16: IEEE binary16; bf16: the top 16 bits of a binary32. Both convert from
// f32 with round-to-nearest-even, keep Inf, and keep NaN a (quiet) NaN.
// Conversions are exact in the f16/bf16 -> f32 direction.
#pragma once
#include <cstdint>
#include <cstring>
#include <cstddef>

namespace kvsq {

enum class DType : int32_t { F32 = 0, F16 = 1, BF16 = 2, I32 = 3 };

inline size_t dtype_size(DType t) { return t == DType::F16 || t == DType::BF16 ? 2 : 4; }
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    case DType::I32: return "i32";
  }
  return "?";
}
// True for the dtypes K, V and Q may be stored in.
inline bool is_float_dtype(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

inline float bf16_to_f32(uint16_t h) { return bits_f32(uint32_t(h) << 16); }
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x0040u);  // NaN stays quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even; overflow rounds to Inf correctly
  return uint16_t(u >> 16);
}

inline float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: renormalise
      int e = -1;
      do { man <<= 1; ++e; } while (!(man & 0x400u));
      u = sign | uint32_t(127 - 15 - e) << 23 | (man & 0x3ffu) << 13;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | man << 13 | (man ? 0x400000u : 0u);
  } else {
    u = sign | (exp + 112u) << 23 | man << 13;
  }
  return bits_f32(u);
}

inline uint16_t f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // NaN
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65536: Inf
  if (a < 0x38800000u) {  // result is subnormal or zero
    // add 0.5 (as f32) so the FPU does the round-to-nearest-even of the shifted mantissa
    float r = bits_f32(a) + 0.5f;
    return uint16_t(sign | (f32_bits(r) - 0x3f000000u));
  }
  uint32_t mant_odd = (a >> 13) & 1u;
  a += 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) and round to nearest even
  return uint16_t(sign | (a >> 13));
}

// Bulk conversions (vectorised with F16C where the CPU has it; chosen at run time).
void convert_to_f32(DType src_type, const void* src, float* dst, size_t n);
void convert_from_f32(DType dst_type, const float* src, void* dst, size_t n);

}  // namespace kvsq
