// llama.cpp's block types as quantkit formats: "q8_0", "q4_0", "q4_1", "q5_0", "q5_1",
// "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_nl" (ggml's type names, lower case).
//
// Packed.bytes of a rows x cols matrix are exactly ggml's blocks of the rows in order
// (each row cols / block_size blocks), so they can be written unchanged as the data of a
// GGUF tensor of the matching type. The encoders are quantkit's own (formats/ggml_encode.h);
// decoding uses the llama.cpp-exact decoders of io/ggml_dequant.h.
#pragma once
#include <optional>
#include <string>

#include "quantkit/dtype.h"
#include "quantkit/format.h"

namespace quantkit::formats {

// The ggml tensor type a format spec stores ("q4_k" -> DType::Q4_K); nullopt when the spec
// is not one of these formats (options are not accepted: "q4_0:g64" is not a ggml type).
std::optional<DType> ggml_type_for_spec(const std::string& spec);

// The ggml tensor type of a format (nullopt for non-ggml formats), for the GGUF writer.
inline std::optional<DType> ggml_type_of(const Format& f) { return ggml_type_for_spec(f.spec()); }

}  // namespace quantkit::formats
