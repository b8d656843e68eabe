// Compiles a region of a translation unit for extra instruction sets, with GCC (#pragma GCC
// target) or clang (which ignores that pragma: #pragma clang attribute on every function).
// Only the functions defined inside the region get the features; the caller checks the CPU.
#pragma once

#define QK_TARGET_STR(x) #x
#if defined(__clang__)
#define QK_TARGET_BEGIN(features) \
  _Pragma(QK_TARGET_STR(clang attribute push(__attribute__((target(features))), apply_to = function)))
#define QK_TARGET_END _Pragma("clang attribute pop")
#else
#define QK_TARGET_BEGIN(features) _Pragma("GCC push_options") _Pragma(QK_TARGET_STR(GCC target(features)))
#define QK_TARGET_END _Pragma("GCC pop_options")
#endif

// A function compiled twice, for AVX2+FMA (x86-64-v3) and the baseline, chosen at load time
// through ifunc (GCC on x86-64 ELF; elsewhere only the baseline).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define QK_AVX2_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define QK_AVX2_CLONES
#endif
