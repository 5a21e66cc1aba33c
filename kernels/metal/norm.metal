// RMS normalisation: of whole rows (before each sub-layer and the
// classifier) and of each head of a row (Q/K norms). A SIMD group per row
// or head: its lanes take the values in turn and meet in one simd_sum.
#include "common.h"

// 1 / rms(x) of n values, eps inside the root: the SIMD group's lanes take
// the values in turn; every lane gets the result.
static inline float inv_rms(device const float *x, uint n, float eps, uint lane) {
    float ss = 0.0f;
    for (uint i = lane; i < n; i += SIMD) {
        ss += x[i] * x[i];
    }
    return rsqrt(simd_sum(ss) / float(n) + eps);
}

// dst[t] = src[r] / rms(src[r]) * gains, with r = rows[t] if a.gather else
// t; rows of a.width values, a.ld apart in src and a.width apart in dst.
// Grid: a.tokens threadgroups of one SIMD group.
kernel void rmsnorm(constant RowArgs &a [[buffer(0)]], device const float *src [[buffer(1)]],
                    device const float *gains [[buffer(2)]], device float *dst [[buffer(3)]],
                    device const uint *rows [[buffer(4)]],
                    uint t [[threadgroup_position_in_grid]],
                    uint lane [[thread_index_in_simdgroup]]) {
    device const float *x = src + ulong(a.gather ? rows[t] : t) * a.ld;
    device float *y = dst + ulong(t) * a.width;
    const float scale = inv_rms(x, a.width, a.eps, lane);
    for (uint i = lane; i < a.width; i += SIMD) {
        y[i] = x[i] * scale * gains[i];
    }
}

// acc[t] += src[t] / rms(src[t]) * gains: a sub-layer's output, normalised,
// joins the residual stream (Gemma's post-norms). Rows of a.width values,
// a.ld apart in both. Grid: a.tokens threadgroups of one SIMD group.
kernel void add_rmsnorm(constant RowArgs &a [[buffer(0)]], device const float *src [[buffer(1)]],
                        device const float *gains [[buffer(2)]], device float *acc [[buffer(3)]],
                        uint t [[threadgroup_position_in_grid]],
                        uint lane [[thread_index_in_simdgroup]]) {
    device const float *x = src + ulong(t) * a.ld;
    device float *y = acc + ulong(t) * a.ld;
    const float scale = inv_rms(x, a.width, a.eps, lane);
    for (uint i = lane; i < a.width; i += SIMD) {
        y[i] += x[i] * scale * gains[i];
    }
}

// Every head of every row of buf, in place: head h of row t is
// buf[t * a.ld + h * a.head_dim ..], normalised with gains (head_dim long).
// Grid: (a.heads, a.tokens) threadgroups of one SIMD group.
kernel void norm_heads(constant RowArgs &a [[buffer(0)]], device float *buf [[buffer(1)]],
                       device const float *gains [[buffer(2)]],
                       uint2 group [[threadgroup_position_in_grid]],
                       uint lane [[thread_index_in_simdgroup]]) {
    device float *x = buf + ulong(group.y) * a.ld + group.x * a.head_dim;
    float ss = 0.0f;
    for (uint i = lane; i < a.head_dim; i += SIMD) {
        ss += x[i] * x[i];
    }
    const float scale = rsqrt(simd_sum(ss) / float(a.head_dim) + a.eps);
    for (uint i = lane; i < a.head_dim; i += SIMD) {
        x[i] = x[i] * scale * gains[i];
    }
}
