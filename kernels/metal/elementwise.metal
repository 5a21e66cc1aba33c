// Element-wise operations between the products.
#include "common.h"

// buf[t] += bias for a.tokens rows of a.width values, a.ld apart. Grid:
// a.tokens threadgroups of one SIMD group.
kernel void add_bias(constant RowArgs &a [[buffer(0)]], device float *buf [[buffer(1)]],
                     device const float *bias [[buffer(2)]],
                     uint t [[threadgroup_position_in_grid]],
                     uint lane [[thread_index_in_simdgroup]]) {
    device float *row = buf + ulong(t) * a.ld;
    for (uint i = lane; i < a.width; i += SIMD) {
        row[i] += bias[i];
    }
}

// buf[t] *= factor for a.tokens rows of a.width values, a.ld apart. Grid:
// a.tokens threadgroups of one SIMD group.
kernel void scale(constant RowArgs &a [[buffer(0)]], device float *buf [[buffer(1)]],
                  constant float &factor [[buffer(2)]],
                  uint t [[threadgroup_position_in_grid]],
                  uint lane [[thread_index_in_simdgroup]]) {
    device float *row = buf + ulong(t) * a.ld;
    for (uint i = lane; i < a.width; i += SIMD) {
        row[i] *= factor;
    }
}

// gate = silu(gate) * up over a.tokens * a.width values. Grid: enough
// threads for every value, in threadgroups of any size.
kernel void swiglu(constant RowArgs &a [[buffer(0)]], device float *gate [[buffer(1)]],
                   device const float *up [[buffer(2)]],
                   uint i [[thread_position_in_grid]]) {
    if (i >= a.tokens * a.width) {
        return;
    }
    const float g = gate[i];
    gate[i] = g / (1.0f + exp(-g)) * up[i];
}

// gate = gelu(gate) * up over a.tokens * a.width values, GELU by its tanh
// approximation (GeGLU: Gemma's gelu_pytorch_tanh). Grid: as swiglu's.
kernel void geglu(constant RowArgs &a [[buffer(0)]], device float *gate [[buffer(1)]],
                  device const float *up [[buffer(2)]],
                  uint i [[thread_position_in_grid]]) {
    if (i >= a.tokens * a.width) {
        return;
    }
    const float g = gate[i];
    const float inner = 0.7978846f * (g + 0.044715f * g * g * g);
    gate[i] = 0.5f * g * (1.0f + precise::tanh(inner)) * up[i];
}
