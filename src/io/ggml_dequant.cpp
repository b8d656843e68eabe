// Placeholder until the decoders land: every quantized type reports it is unreadable.
#include "io/ggml_dequant.h"
#include "quantkit/error.h"
namespace quantkit {
#define QK_NOT_YET(fn) void fn(const void*, float*, int64_t) { fail("{}: not implemented yet", #fn); }
QK_NOT_YET(dequant_q4_0) QK_NOT_YET(dequant_q4_1) QK_NOT_YET(dequant_q5_0) QK_NOT_YET(dequant_q5_1)
QK_NOT_YET(dequant_q8_0) QK_NOT_YET(dequant_q8_1) QK_NOT_YET(dequant_q2_k) QK_NOT_YET(dequant_q3_k)
QK_NOT_YET(dequant_q4_k) QK_NOT_YET(dequant_q5_k) QK_NOT_YET(dequant_q6_k) QK_NOT_YET(dequant_q8_k)
QK_NOT_YET(dequant_iq4_nl)
}
