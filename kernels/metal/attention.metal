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

// The most values of a head one lane keeps (head_dim <= 32 * ATT_DIMS),
// and the query rows one SIMD group keeps.
#define ATT_DIMS 8
#define ATT_ROWS 4

// Floats of a partial result: the running maximum, the sum, the values.
#define PARTIAL(hd) ((hd) + 2)

// out[t, head h] = softmax(q[t, h] . K / sqrt(head_dim)) V over the positions
// token t sees (0..=pos, or the last a.window of them), with query head h
// reading KV head h / (q_heads / kv_heads).
//
// Grid (see gpu/attention.rs): x the blocks, each up to a few consecutive
// tokens of one sequence (blocks[x] = first token, count); y a KV head and
// a share of a.group_heads of its query heads; z a range of a.split_len
// positions when a.splits > 1. A threadgroup's rows are its (token, head)
// pairs, ATT_ROWS to a SIMD group; its threadgroup memory holds their
// queries, then one tile of a.tile positions' keys or values at a time
// (rows padded by a float), which every row reads.
//
// For each tile, each lane scores one position for each row, the running
// maximum and sum of the row rescale what came before (an online softmax),
// and each lane adds the tile's values into its share of the row's
// dimensions. With one range the rows are written to out; with several,
// each range writes its maximum, sum and unnormalised values to partial
// and attention_merge combines them.
kernel void attention(constant KvArgs &a [[buffer(0)]], device const float *q [[buffer(1)]],
                      device const uchar *cache [[buffer(2)]], device float *out [[buffer(3)]],
                      device const TokenInfo *tokens [[buffer(4)]],
                      device const uint *pages [[buffer(5)]],
                      device const uint2 *blocks [[buffer(6)]],
                      device float *partial [[buffer(7)]],
                      threadgroup float *shared [[threadgroup(0)]],
                      uint3 group [[threadgroup_position_in_grid]],
                      uint sg [[simdgroup_index_in_threadgroup]],
                      uint sgs [[simdgroups_per_threadgroup]],
                      uint lane [[thread_index_in_simdgroup]]) {
    const uint hd = a.head_dim;
    const uint stride = hd + 1;
    const uint tid = sg * SIMD + lane;
    const uint threads = sgs * SIMD;
    const uint per_kv = a.q_heads / a.kv_heads;
    const uint chunks = (per_kv + a.group_heads - 1) / a.group_heads;
    const uint kvh = group.y / chunks;
    const uint h0 = kvh * per_kv + (group.y % chunks) * a.group_heads;
    const uint nh = min(a.group_heads, (kvh + 1) * per_kv - h0);
    const uint2 blk = blocks[group.x];
    const uint rows = blk.y * nh;
    threadgroup float *qs = shared;
    threadgroup float *tile = shared + rows * hd;

    // The block's positions: from the first token's window start to the
    // last token; this threadgroup's range of them.
    const TokenInfo first = tokens[blk.x];
    const uint end = tokens[blk.x + blk.y - 1].pos + 1;
    const uint from = (a.window != 0 && first.pos + 1 > a.window) ? first.pos + 1 - a.window : 0;
    const uint lo = from + group.z * a.split_len;
    const uint hi = min(end, lo + a.split_len);

    for (uint i = tid; i < rows * hd; i += threads) {
        const uint r = i / hd;
        qs[i] = q[ulong(blk.x + r / nh) * a.ld_q + (h0 + r % nh) * hd + i % hd];
    }
    float m[ATT_ROWS];
    float l[ATT_ROWS];
    float o[ATT_ROWS][ATT_DIMS];
    uint pos[ATT_ROWS];
    for (uint k = 0; k < ATT_ROWS; ++k) {
        const uint r = sg + k * sgs;
        m[k] = -1e30f;
        l[k] = 0.0f;
        pos[k] = r < rows ? tokens[blk.x + r / nh].pos : 0;
        for (uint i = 0; i < ATT_DIMS; ++i) {
            o[k][i] = 0.0f;
        }
    }

    for (uint b = lo; b < hi; b += a.tile) {
        const uint n = min(a.tile, hi - b);
        // Everyone is done with the last tile (and the queries are in).
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (uint i = tid; i < n * hd; i += threads) {
            const uint j = i / hd;
            const ulong at = kv_row(a, pages, first.pages, b + j, kvh, 0);
            tile[j * stride + i % hd] = kv_load(a, cache, at, i % hd);
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        float e[ATT_ROWS];
        float correction[ATT_ROWS];
        for (uint k = 0; k < ATT_ROWS; ++k) {
            const uint r = sg + k * sgs;
            if (r >= rows) {
                break;
            }
            const uint p = b + lane;
            const bool seen = lane < n && p <= pos[k] && (a.window == 0 || p + a.window > pos[k]);
            float s = -1e30f;
            if (seen) {
                threadgroup const float *qr = qs + r * hd;
                threadgroup const float *kr = tile + lane * stride;
                float dot = 0.0f;
                for (uint d = 0; d < hd; ++d) {
                    dot += qr[d] * kr[d];
                }
                s = dot * a.scale;
                if (a.softcap > 0.0f) {
                    s = a.softcap * precise::tanh(s / a.softcap);
                }
            }
            const float m_new = max(m[k], simd_max(s));
            e[k] = seen ? exp(s - m_new) : 0.0f;
            correction[k] = exp(m[k] - m_new);
            l[k] = l[k] * correction[k] + simd_sum(e[k]);
            m[k] = m_new;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (uint i = tid; i < n * hd; i += threads) {
            const uint j = i / hd;
            const ulong at = kv_row(a, pages, first.pages, b + j, kvh, 1);
            tile[j * stride + i % hd] = kv_load(a, cache, at, i % hd);
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (uint k = 0; k < ATT_ROWS; ++k) {
            if (sg + k * sgs >= rows) {
                break;
            }
            for (uint i = 0; i < ATT_DIMS; ++i) {
                o[k][i] *= correction[k];
            }
            for (uint j = 0; j < n; ++j) {
                const float pj = simd_shuffle(e[k], ushort(j));
                threadgroup const float *vr = tile + j * stride;
                for (uint i = 0; i < ATT_DIMS; ++i) {
                    const uint d = lane + i * SIMD;
                    if (d < hd) {
                        o[k][i] += pj * vr[d];
                    }
                }
            }
        }
    }

    for (uint k = 0; k < ATT_ROWS; ++k) {
        const uint r = sg + k * sgs;
        if (r >= rows) {
            break;
        }
        const ulong t = blk.x + r / nh;
        const uint h = h0 + r % nh;
        if (a.splits == 1) {
            device float *dst = out + t * a.ld_q + h * hd;
            for (uint i = 0; i < ATT_DIMS; ++i) {
                const uint d = lane + i * SIMD;
                if (d < hd) {
                    dst[d] = o[k][i] / l[k];
                }
            }
        } else {
            device float *dst =
                partial + ((t * a.q_heads + h) * a.splits + group.z) * PARTIAL(hd);
            if (lane == 0) {
                dst[0] = m[k];
                dst[1] = l[k];
            }
            for (uint i = 0; i < ATT_DIMS; ++i) {
                const uint d = lane + i * SIMD;
                if (d < hd) {
                    dst[2 + d] = o[k][i];
                }
            }
        }
    }
}

// Combines the a.splits partial results of each (token, query head) of
// attention into out. Grid: (a.tokens, a.q_heads) threadgroups of one SIMD
// group.
kernel void attention_merge(constant KvArgs &a [[buffer(0)]],
                            device const float *partial [[buffer(1)]],
                            device float *out [[buffer(2)]],
                            uint2 group [[threadgroup_position_in_grid]],
                            uint lane [[thread_index_in_simdgroup]]) {
    const uint hd = a.head_dim;
    const ulong t = group.x;
    const uint h = group.y;
    device const float *p = partial + (t * a.q_heads + h) * a.splits * PARTIAL(hd);
    float m = -1e30f;
    for (uint s = 0; s < a.splits; ++s) {
        m = max(m, p[s * PARTIAL(hd)]);
    }
    float l = 0.0f;
    for (uint s = 0; s < a.splits; ++s) {
        l += p[s * PARTIAL(hd) + 1] * exp(p[s * PARTIAL(hd)] - m);
    }
    device float *dst = out + t * a.ld_q + h * hd;
    for (uint d = lane; d < hd; d += SIMD) {
        float acc = 0.0f;
        for (uint s = 0; s < a.splits; ++s) {
            device const float *ps = p + s * PARTIAL(hd);
            acc += ps[2 + d] * exp(ps[0] - m);
        }
        dst[d] = acc / l;
    }
}
