// The KV cache and attention over it.
//
// The cache lives in pages of PAGE positions (see `kv_cache.rs`): page p
// holds, for each layer, the keys then the values of every KV head, each
// head's PAGE rows together. A sequence's pages are listed in the pages
// buffer from tokens[t].pages on; position i of it is row i % PAGE of page
// pages[tokens[t].pages + i / PAGE].
#include "common.h"

// Byte offset of the row of `pos` of KV head h (keys, or values if `v`) of
// layer a.layer, for the token whose page list starts at `list`.
inline ulong kv_row(constant KvArgs &a, device const uint *pages, uint list, uint pos, uint h,
                    uint v) {
    const ulong page = pages[list + pos / PAGE];
    const ulong head = (ulong(a.layer * 2 + v) * a.kv_heads + h) * PAGE + pos % PAGE;
    return page * a.page_bytes + head * a.row_bytes;
}

inline float kv_load(constant KvArgs &a, device const uchar *cache, ulong at, uint d) {
    return a.kv_type == 0 ? ((device const float *)(cache + at))[d]
                          : float(((device const half *)(cache + at))[d]);
}

// Writes the new keys k (tokens, kv_heads * head_dim) and values v into the
// cache at each token's position. Grid: (a.tokens, a.kv_heads) threadgroups
// of one SIMD group.
kernel void store_kv(constant KvArgs &a [[buffer(0)]], device const float *k [[buffer(1)]],
                     device const float *v [[buffer(2)]], device uchar *cache [[buffer(3)]],
                     device const TokenInfo *tokens [[buffer(4)]],
                     device const uint *pages [[buffer(5)]],
                     uint2 group [[threadgroup_position_in_grid]],
                     uint lane [[thread_index_in_simdgroup]]) {
    const uint t = group.x;
    const uint h = group.y;
    const TokenInfo info = tokens[t];
    const ulong src = ulong(t) * a.kv_heads * a.head_dim + h * a.head_dim;
    for (uint which = 0; which < 2; ++which) {
        device const float *x = (which == 0 ? k : v) + src;
        const ulong at = kv_row(a, pages, info.pages, info.pos, h, which);
        for (uint d = lane; d < a.head_dim; d += SIMD) {
            if (a.kv_type == 0) {
                ((device float *)(cache + at))[d] = x[d];
            } else {
                ((device half *)(cache + at))[d] = half(x[d]);
            }
        }
    }
}

// The most values of a head one lane keeps (head_dim <= 32 * ATT_DIMS).
#define ATT_DIMS 8

// out[t, head h] = softmax(q[t, h] . K / sqrt(head_dim)) V over the positions
// token t sees (0..=pos, or the last a.window of them), with query head h
// reading KV head h / (q_heads / kv_heads). Grid: (a.tokens, a.q_heads)
// threadgroups of one SIMD group.
//
// The positions go by in blocks of SIMD: each lane scores one position of
// the block, the group's running maximum and sum rescale what came before
// (an online softmax), and each lane adds the block's values into its
// share of the head's dimensions.
kernel void attention(constant KvArgs &a [[buffer(0)]], device const float *q [[buffer(1)]],
                      device const uchar *cache [[buffer(2)]], device float *out [[buffer(3)]],
                      device const TokenInfo *tokens [[buffer(4)]],
                      device const uint *pages [[buffer(5)]],
                      uint2 group [[threadgroup_position_in_grid]],
                      uint lane [[thread_index_in_simdgroup]]) {
    threadgroup float probs[SIMD];
    const uint t = group.x;
    const uint h = group.y;
    const uint kvh = h / (a.q_heads / a.kv_heads);
    const TokenInfo info = tokens[t];
    const uint end = info.pos + 1;
    const uint first = (a.window != 0 && end > a.window) ? end - a.window : 0;
    device const float *qh = q + ulong(t) * a.ld_q + h * a.head_dim;

    float m = -1e30f;
    float l = 0.0f;
    float o[ATT_DIMS];
    for (uint i = 0; i < ATT_DIMS; ++i) {
        o[i] = 0.0f;
    }
    for (uint b = first; b < end; b += SIMD) {
        const uint p = b + lane;
        float s = -1e30f;
        if (p < end) {
            const ulong at = kv_row(a, pages, info.pages, p, kvh, 0);
            float dot = 0.0f;
            for (uint d = 0; d < a.head_dim; ++d) {
                dot += qh[d] * kv_load(a, cache, at, d);
            }
            s = dot * a.scale;
        }
        const float m_new = max(m, simd_max(s));
        const float e = p < end ? exp(s - m_new) : 0.0f;
        const float correction = exp(m - m_new);
        l = l * correction + simd_sum(e);
        m = m_new;
        probs[lane] = e;
        threadgroup_barrier(mem_flags::mem_threadgroup);
        const uint n = min(uint(SIMD), end - b);
        for (uint i = 0; i < ATT_DIMS; ++i) {
            const uint d = lane + i * SIMD;
            if (d < a.head_dim) {
                float acc = o[i] * correction;
                for (uint j = 0; j < n; ++j) {
                    const ulong at = kv_row(a, pages, info.pages, b + j, kvh, 1);
                    acc += probs[j] * kv_load(a, cache, at, d);
                }
                o[i] = acc;
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    device float *dst = out + ulong(t) * a.ld_q + h * a.head_dim;
    for (uint i = 0; i < ATT_DIMS; ++i) {
        const uint d = lane + i * SIMD;
        if (d < a.head_dim) {
            dst[d] = o[i] / l;
        }
    }
}
