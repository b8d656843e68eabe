// Tensor type conversion of a whole model (F32 <-> F16/BF16), used by `convert`.
#pragma once
#include "quantkit/model_file.h"

namespace quantkit {

// Returns a copy of m whose 2-D weight tensors are stored as `type` (F32, F16 or BF16);
// 1-D tensors (norms) stay F32, as llama.cpp expects. New tensor bytes are owned by the
// returned ModelFile.
ModelFile convert_tensor_types(const ModelFile& m, DType type);

}  // namespace quantkit
