#include <gtest/gtest.h>

#include <cmath>

#include "quantkit/fp16.h"

using namespace quantkit;

TEST(Fp16, RoundTripsEveryHalf) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    uint16_t x = uint16_t(h);
    float f = f16_to_f32(x);
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_f16(f), x) << std::hex << h;
  }
}

TEST(Fp16, RoundsToNearestEven) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(1.0f + 1.0f / 2048), 0x3c00);          // tie -> even
  EXPECT_EQ(f32_to_f16(1.0f + 3.0f / 2048), 0x3c02);          // tie -> even (up)
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);                     // rounds to inf
  EXPECT_EQ(f32_to_f16(5.9604645e-8f), 0x0001);                // smallest subnormal
  EXPECT_EQ(f32_to_f16(2.9802322e-8f), 0x0000);                // tie at half subnormal -> 0
  EXPECT_EQ(f32_to_bf16(1.0f + 1.0f / 256), 0x3f80);           // tie -> even
  EXPECT_FLOAT_EQ(bf16_to_f32(0x4049), 3.140625f);
}
