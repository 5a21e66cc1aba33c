// Matrix products with the weights as the files store them: every weight
// type reads a row in chunks of 32 values, dequantized to floats, and
// multiplies them with f32 activations.
//
// Every weight type has one kernel, `matvec`, which switches on the type.
// A SIMD group computes MV_ROWS consecutive rows for up to MV_TOKENS tokens,
// so each weight is read once per MV_TOKENS tokens; its lanes take the
// row's chunks in turn and meet in one simd_sum per output. Grid:
// (ceil(rows / (MV_ROWS * MV_GROUPS)), ceil(tokens / MV_TOKENS)) threadgroups
// of MV_GROUPS SIMD groups.
#include "common.h"

#define MV_ROWS 4
#define MV_TOKENS 8
#define MV_GROUPS 2

// ---------------------------------------------------------------------------
// Each weight type: chunk c (values 32c..32c + 32) of row r of a matrix with
// `cols` columns, into v. Values past `cols` (the float types only allow a
// ragged end) are zero.
// ---------------------------------------------------------------------------

struct W_f32 {
    static void chunk(device const uchar *w, uint r, uint c, uint cols, thread float *v) {
        device const float *p = (device const float *)w + ulong(r) * cols + c * QK;
        uint n = min(uint(QK), cols - c * QK);
        for (uint j = 0; j < QK; ++j) {
            v[j] = j < n ? p[j] : 0.0f;
        }
    }
};

struct W_f16 {
    static void chunk(device const uchar *w, uint r, uint c, uint cols, thread float *v) {
        device const half *p = (device const half *)w + ulong(r) * cols + c * QK;
        uint n = min(uint(QK), cols - c * QK);
        for (uint j = 0; j < QK; ++j) {
            v[j] = j < n ? float(p[j]) : 0.0f;
        }
    }
};

// bfloat16 read as its bits: the upper half of an f32.
struct W_bf16 {
    static void chunk(device const uchar *w, uint r, uint c, uint cols, thread float *v) {
        device const ushort *p = (device const ushort *)w + ulong(r) * cols + c * QK;
        uint n = min(uint(QK), cols - c * QK);
        for (uint j = 0; j < QK; ++j) {
            v[j] = j < n ? as_type<float>(uint(p[j]) << 16) : 0.0f;
        }
    }
};

struct W_q8_0 {
    static void chunk(device const uchar *w, uint r, uint c, uint cols, thread float *v) {
        device const block_q8_0 &b = ((device const block_q8_0 *)w)[ulong(r) * (cols / QK) + c];
        float d = float(b.d);
        for (uint j = 0; j < QK; ++j) {
            v[j] = d * float(b.qs[j]);
        }
    }
};

struct W_q4_0 {
    static void chunk(device const uchar *w, uint r, uint c, uint cols, thread float *v) {
        device const block_q4_0 &b = ((device const block_q4_0 *)w)[ulong(r) * (cols / QK) + c];
        float d = float(b.d);
        for (uint j = 0; j < QK / 2; ++j) {
            uint q = b.qs[j];
            v[j] = d * (float(q & 15u) - 8.0f);
            v[j + QK / 2] = d * (float(q >> 4) - 8.0f);
        }
    }
};

struct W_q4_1 {
    static void chunk(device const uchar *w, uint r, uint c, uint cols, thread float *v) {
        device const block_q4_1 &b = ((device const block_q4_1 *)w)[ulong(r) * (cols / QK) + c];
        float d = float(b.d);
        float m = float(b.m);
        for (uint j = 0; j < QK / 2; ++j) {
            uint q = b.qs[j];
            v[j] = d * float(q & 15u) + m;
            v[j + QK / 2] = d * float(q >> 4) + m;
        }
    }
};

// Four rows' blocks together: row r is row r % 4 of group row r / 4.
struct W_q4_0x4 {
    static void chunk(device const uchar *w, uint r, uint c, uint cols, thread float *v) {
        device const block_q4_0x4 &b =
            ((device const block_q4_0x4 *)w)[ulong(r / 4) * (cols / QK) + c];
        uint s = r % 4;
        float d = float(b.d[s]);
        for (uint j = 0; j < QK / 2; ++j) {
            uint q = b.qs[s][j];
            v[j] = d * (float(q & 15u) - 8.0f);
            v[j + QK / 2] = d * (float(q >> 4) - 8.0f);
        }
    }
};

struct W_q8_0x4 {
    static void chunk(device const uchar *w, uint r, uint c, uint cols, thread float *v) {
        device const block_q8_0x4 &b =
            ((device const block_q8_0x4 *)w)[ulong(r / 4) * (cols / QK) + c];
        uint s = r % 4;
        float d = float(b.d[s]);
        for (uint j = 0; j < QK / 2; ++j) {
            v[j] = d * float(b.qs[0][s][j]);
            v[j + QK / 2] = d * float(b.qs[1][s][j]);
        }
    }
};

// Sub-block i's 6-bit scale and min, as ggml packs them into 12 bytes.
inline float2 q4_k_scale_min(device const uchar *q, uint i) {
    if (i < 4) {
        return float2(float(q[i] & 63u), float(q[i + 4] & 63u));
    }
    uint sc = (q[i + 4] & 15u) | ((q[i - 4] >> 6) << 4);
    uint m = (q[i + 4] >> 4) | ((q[i] >> 6) << 4);
    return float2(float(sc), float(m));
}

// Chunk c is sub-block c % 8 of super-block c / 8; sub-blocks 2p and 2p + 1
// are the low and high nibbles of bytes 32p..32p + 32.
struct W_q4_k {
    static void chunk(device const uchar *w, uint r, uint c, uint cols, thread float *v) {
        device const block_q4_k &b =
            ((device const block_q4_k *)w)[ulong(r) * (cols / QK_K) + c / 8];
        uint i = c % 8;
        float2 sm = q4_k_scale_min(b.scales, i);
        float d = float(b.d) * sm.x;
        float m = float(b.dmin) * sm.y;
        device const uchar *q = b.qs + 32 * (i / 2);
        uint shift = 4 * (i % 2);
        for (uint j = 0; j < QK; ++j) {
            v[j] = d * float((q[j] >> shift) & 15u) - m;
        }
    }
};

// Chunk c holds values 32k..32k + 32 (k = c % 4) of half h = (c % 8) / 4
// of super-block c / 8.
struct W_q6_k {
    static void chunk(device const uchar *w, uint r, uint c, uint cols, thread float *v) {
        device const block_q6_k &b =
            ((device const block_q6_k *)w)[ulong(r) * (cols / QK_K) + c / 8];
        uint h = (c % 8) / 4;
        uint k = c % 4;
        float d = float(b.d);
        device const uchar *ql = b.ql + 64 * h + 32 * (k % 2);
        device const uchar *qh = b.qh + 32 * h;
        uint shift = 4 * (k / 2);
        for (uint l = 0; l < QK; ++l) {
            int q = int(((ql[l] >> shift) & 15u) | (((qh[l] >> (2 * k)) & 3u) << 4)) - 32;
            v[l] = d * float(b.scales[8 * h + 2 * k + l / 16]) * float(q);
        }
    }
};

// ---------------------------------------------------------------------------
// The product
// ---------------------------------------------------------------------------

template <typename W>
inline void matvec_rows(constant MatvecArgs &a, device const uchar *w, device const float *x,
                   device float *out, uint2 group, uint sg, uint lane) {
    const uint r0 = (group.x * MV_GROUPS + sg) * MV_ROWS;
    const uint t0 = group.y * MV_TOKENS;
    if (r0 >= a.rows) {
        return;
    }
    const uint nr = min(uint(MV_ROWS), a.rows - r0);
    const uint nt = min(uint(MV_TOKENS), a.tokens - t0);
    const uint chunks = (a.cols + QK - 1) / QK;
    float acc[MV_TOKENS][MV_ROWS];
    for (uint t = 0; t < MV_TOKENS; ++t) {
        for (uint r = 0; r < MV_ROWS; ++r) {
            acc[t][r] = 0.0f;
        }
    }
    float v[QK];
    for (uint c = lane; c < chunks; c += SIMD) {
        const uint n = min(uint(QK), a.cols - c * QK);
        for (uint r = 0; r < nr; ++r) {
            W::chunk(w, r0 + r, c, a.cols, v);
            for (uint t = 0; t < nt; ++t) {
                device const float *xt = x + ulong(t0 + t) * a.ld_in + c * QK;
                float s = 0.0f;
                for (uint j = 0; j < n; ++j) {
                    s += v[j] * xt[j];
                }
                acc[t][r] += s;
            }
        }
    }
    for (uint t = 0; t < nt; ++t) {
        for (uint r = 0; r < nr; ++r) {
            float s = simd_sum(acc[t][r]);
            if (lane == 0) {
                device float *o = out + ulong(t0 + t) * a.ld_out + r0 + r;
                *o = a.accumulate ? *o + s : s;
            }
        }
    }
}

// The weight type is an argument (MatvecArgs::type, uniform over the
// dispatch): one kernel serves them all.
#define FOR_TYPE(type, call)                                                                  \
    switch (type) {                                                                           \
    case W_F32: call(W_f32); break;                                                           \
    case W_F16: call(W_f16); break;                                                           \
    case W_BF16: call(W_bf16); break;                                                         \
    case W_Q8_0: call(W_q8_0); break;                                                         \
    case W_Q4_0: call(W_q4_0); break;                                                         \
    case W_Q4_1: call(W_q4_1); break;                                                         \
    case W_Q4_0X4: call(W_q4_0x4); break;                                                     \
    case W_Q8_0X4: call(W_q8_0x4); break;                                                     \
    case W_Q4_K: call(W_q4_k); break;                                                         \
    case W_Q6_K: call(W_q6_k); break;                                                         \
    }

// Weights at buffer 1, activations (tokens, ld_in) at 2, outputs (tokens,
// ld_out) at 3.
kernel void matvec(constant MatvecArgs &a [[buffer(0)]], device const uchar *w [[buffer(1)]],
                   device const float *x [[buffer(2)]], device float *out [[buffer(3)]],
                   uint2 group [[threadgroup_position_in_grid]],
                   uint sg [[simdgroup_index_in_threadgroup]],
                   uint lane [[thread_index_in_simdgroup]]) {
#define CALL(W) matvec_rows<W>(a, w, x, out, group, sg, lane)
    FOR_TYPE(a.type, CALL)
#undef CALL
}

// ---------------------------------------------------------------------------
// Embedding lookup: row tokens[t] of the table into out (tokens, cols), a
// SIMD group per token, its lanes taking the row's chunks in turn.
// ---------------------------------------------------------------------------

template <typename W>
inline void embed_row(constant MatvecArgs &a, device const uchar *w, device const uint *tokens,
                  device float *out, uint t, uint lane) {
    const uint chunks = (a.cols + QK - 1) / QK;
    float v[QK];
    for (uint c = lane; c < chunks; c += SIMD) {
        W::chunk(w, tokens[t], c, a.cols, v);
        const uint n = min(uint(QK), a.cols - c * QK);
        for (uint j = 0; j < n; ++j) {
            out[ulong(t) * a.ld_out + c * QK + j] = v[j];
        }
    }
}

// Rows tokens[t] of the table (buffer 1) into out (buffer 3).
kernel void embed(constant MatvecArgs &a [[buffer(0)]], device const uchar *w [[buffer(1)]],
                  device const uint *tokens [[buffer(2)]], device float *out [[buffer(3)]],
                  uint t [[threadgroup_position_in_grid]],
                  uint lane [[thread_index_in_simdgroup]]) {
#define CALL(W) embed_row<W>(a, w, tokens, out, t, lane)
    FOR_TYPE(a.type, CALL)
#undef CALL
}

// ---------------------------------------------------------------------------
// Prompt products: many tokens through one matrix with simdgroup matrices
// ---------------------------------------------------------------------------

// A threadgroup computes a tile of MM_ROWS rows by MM_TOKENS tokens. For
// each chunk of 32 columns it dequantizes the tile's rows into threadgroup
// memory (one thread a row) and copies the tokens' activations beside them;
// each of its four SIMD groups then multiplies 8 of the rows by all the
// tokens, as 8x8 matrices. Grid: (ceil(rows / MM_ROWS), ceil(tokens /
// MM_TOKENS)) threadgroups of 128 threads.
#define MM_ROWS 32
#define MM_TOKENS 32

template <typename W>
inline void matmul_tile(constant MatvecArgs &a, device const uchar *w, device const float *x,
                        device float *out, threadgroup float *wt, threadgroup float *xt,
                        uint2 group, uint tid, uint sg) {
    const uint r0 = group.x * MM_ROWS;
    const uint t0 = group.y * MM_TOKENS;
    const uint chunks = (a.cols + QK - 1) / QK;
    simdgroup_float8x8 acc[MM_TOKENS / 8];
    for (uint j = 0; j < MM_TOKENS / 8; ++j) {
        acc[j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    }
    for (uint c = 0; c < chunks; ++c) {
        const uint n = min(uint(QK), a.cols - c * QK);
        if (tid < MM_ROWS) {
            float v[QK];
            if (r0 + tid < a.rows) {
                W::chunk(w, r0 + tid, c, a.cols, v);
            } else {
                for (uint j = 0; j < QK; ++j) {
                    v[j] = 0.0f;
                }
            }
            for (uint j = 0; j < QK; ++j) {
                wt[tid * QK + j] = v[j];
            }
        }
        // 128 threads copy MM_TOKENS rows of 32 activations, 8 values each.
        for (uint i = tid; i < MM_TOKENS * QK; i += 128) {
            const uint t = i / QK;
            const uint j = i % QK;
            xt[i] = (t0 + t < a.tokens && j < n) ? x[ulong(t0 + t) * a.ld_in + c * QK + j] : 0.0f;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (uint k = 0; k < QK; k += 8) {
            simdgroup_float8x8 wm;
            simdgroup_load(wm, wt + sg * 8 * QK + k, QK);
            for (uint j = 0; j < MM_TOKENS / 8; ++j) {
                // The tokens' activations, transposed: (k, token).
                simdgroup_float8x8 xm;
                simdgroup_load(xm, xt + j * 8 * QK + k, QK, ulong2(0, 0), true);
                simdgroup_multiply_accumulate(acc[j], wm, xm, acc[j]);
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    // Through threadgroup memory (rows, tokens), then out with its edges.
    for (uint j = 0; j < MM_TOKENS / 8; ++j) {
        simdgroup_store(acc[j], wt + sg * 8 * MM_TOKENS + j * 8, MM_TOKENS);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint i = tid; i < MM_ROWS * MM_TOKENS; i += 128) {
        const uint r = i % MM_ROWS;
        const uint t = i / MM_ROWS;
        if (r0 + r < a.rows && t0 + t < a.tokens) {
            device float *o = out + ulong(t0 + t) * a.ld_out + r0 + r;
            const float s = wt[r * MM_TOKENS + t];
            *o = a.accumulate ? *o + s : s;
        }
    }
}

// As `matvec`, for more tokens than it takes at once.
kernel void matmul(constant MatvecArgs &a [[buffer(0)]], device const uchar *w [[buffer(1)]],
                   device const float *x [[buffer(2)]], device float *out [[buffer(3)]],
                   uint2 group [[threadgroup_position_in_grid]],
                   uint tid [[thread_index_in_threadgroup]],
                   uint sg [[simdgroup_index_in_threadgroup]]) {
    threadgroup float wt[MM_ROWS * QK];
    threadgroup float xt[MM_TOKENS * QK];
#define CALL(W) matmul_tile<W>(a, w, x, out, wt, xt, group, tid, sg)
    FOR_TYPE(a.type, CALL)
#undef CALL
}
