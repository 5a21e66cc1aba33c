// Rotary position embedding, in place, with the angles' cosines and sines
// computed by the host for each token (its position times each pair's
// frequency, rescaled as the model says): the same numbers the CPU uses.
#include "common.h"

// Pair j of every head of row t turns by the angle whose cosine and sine are
// cs[t * half + j], sn[t * half + j], with half = a.rotary / 2; a pair is
// (2j, 2j + 1) (a.style 0) or (j, j + half) (a.style 1), within the first
// a.rotary values of the head (the rest stay). Grid: a.tokens threadgroups of
// one SIMD group, its lanes taking the (head, pair)s in turn.
kernel void rope(constant RowArgs &a [[buffer(0)]], device float *buf [[buffer(1)]],
                 device const float *cs [[buffer(2)]], device const float *sn [[buffer(3)]],
                 uint t [[threadgroup_position_in_grid]],
                 uint lane [[thread_index_in_simdgroup]]) {
    const uint half_dim = a.rotary / 2;
    device float *row = buf + ulong(t) * a.ld;
    for (uint i = lane; i < a.heads * half_dim; i += SIMD) {
        const uint h = i / half_dim;
        const uint j = i % half_dim;
        const float c = cs[t * half_dim + j];
        const float s = sn[t * half_dim + j];
        device float *head = row + h * a.head_dim;
        const uint p0 = a.style == 0 ? 2 * j : j;
        const uint p1 = a.style == 0 ? 2 * j + 1 : j + half_dim;
        const float x0 = head[p0];
        const float x1 = head[p1];
        head[p0] = x0 * c - x1 * s;
        head[p1] = x0 * s + x1 * c;
    }
}
