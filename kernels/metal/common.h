// What every kernel file shares: the weight blocks as the files store them,
// the argument structs the host fills, and the dequantization of a block.
//
// The Rust side mirrors each struct in `crates/core/src/gpu/layout.rs`, as
// `#[repr(C)]` with the same sizes asserted; change both together.
#pragma once

#include <metal_stdlib>
using namespace metal;

// Values per quantized block, and per k-quant super-block.
#define QK 32
#define QK_K 256

// The width of a SIMD group, which the kernels assume (every Apple GPU).
#define SIMD 32

// ---------------------------------------------------------------------------
// Weight blocks (byte-compatible with ggml's and with `quant.rs`)
// ---------------------------------------------------------------------------

// 8-bit: value j is d * qs[j].
struct block_q8_0 {
    half d;
    char qs[QK];
};
static_assert(sizeof(block_q8_0) == 34, "block_q8_0");

// 4-bit: value j is d * (nibble - 8); byte i holds value i (low nibble) and
// value i + 16 (high nibble).
struct block_q4_0 {
    half d;
    uchar qs[QK / 2];
};
static_assert(sizeof(block_q4_0) == 18, "block_q4_0");

// 4-bit with an offset: value j is d * nibble + m.
struct block_q4_1 {
    half d;
    half m;
    uchar qs[QK / 2];
};
static_assert(sizeof(block_q4_1) == 20, "block_q4_1");

// The q4_0 blocks of four consecutive rows over the same 32 columns: the
// four scales, then each row's 16 bytes of nibbles.
struct block_q4_0x4 {
    half d[4];
    uchar qs[4][QK / 2];
};
static_assert(sizeof(block_q4_0x4) == 72, "block_q4_0x4");

// The q8_0 blocks of four rows: the four scales, then values 0..16 of each
// row, then values 16..32 of each row.
struct block_q8_0x4 {
    half d[4];
    char qs[2][4][QK / 2];
};
static_assert(sizeof(block_q8_0x4) == 136, "block_q8_0x4");

// ggml's Q4_K: 256 values in eight sub-blocks of 32 with 6-bit scales and
// mins packed in `scales`; value j of sub-block i is d * sc[i] * q - dmin * m[i].
struct block_q4_k {
    half d;
    half dmin;
    uchar scales[12];
    uchar qs[QK_K / 2];
};
static_assert(sizeof(block_q4_k) == 144, "block_q4_k");

// ggml's Q6_K: value v is d * scales[v / 16] * (q - 32), q's low four bits
// in ql and high two in qh.
struct block_q6_k {
    uchar ql[QK_K / 2];
    uchar qh[QK_K / 4];
    char scales[QK_K / 16];
    half d;
};
static_assert(sizeof(block_q6_k) == 210, "block_q6_k");

// ---------------------------------------------------------------------------
// Arguments (one struct per kernel family, passed with setBytes)
// ---------------------------------------------------------------------------

// The weight types (MatvecArgs::type).
#define W_F32 0
#define W_F16 1
#define W_BF16 2
#define W_Q8_0 3
#define W_Q4_0 4
#define W_Q4_1 5
#define W_Q4_0X4 6
#define W_Q8_0X4 7
#define W_Q4_K 8
#define W_Q6_K 9

// out[t * ld_out + r] (+)= W[r] . in[t * ld_in ..] for r < rows, t < tokens.
struct MatvecArgs {
    // One of the W_ types.
    uint type;
    uint rows;
    uint cols;
    uint tokens;
    uint ld_in;
    uint ld_out;
    // 1: add the product to out (a sub-layer joining the residual stream).
    uint accumulate;
    uint pad;
};
static_assert(sizeof(MatvecArgs) == 32, "MatvecArgs");

// Row-wise operations over `tokens` rows of `width` values, `ld` apart.
struct RowArgs {
    uint tokens;
    uint width;
    uint ld;
    // The RMS norm's epsilon (rmsnorm, norm_heads).
    float eps;
    // Heads per row and values per head (norm_heads, rope).
    uint heads;
    uint head_dim;
    // rope: 0 rotates pairs (2i, 2i + 1), 1 rotates (i, i + head_dim / 2).
    uint style;
    // rmsnorm: 1 reads row rows[t] of the source for row t of the output
    // (the rows that want logits), 0 row t.
    uint gather;
    // rope: the leading values of each head that rotate (the rest pass).
    uint rotary;
};
static_assert(sizeof(RowArgs) == 36, "RowArgs");

// The KV cache: a page holds PAGE positions of every layer,
// (n_layers, 2, kv_heads, PAGE, head_dim) rows of `row_bytes`.
struct KvArgs {
    uint tokens;
    uint layer;
    uint kv_heads;
    uint head_dim;
    uint q_heads;
    // Attend to at most this many positions back (0: all).
    uint window;
    // Bytes of one head's row (head_dim values of the cache's type).
    uint row_bytes;
    // 0: f32, 1: f16.
    uint kv_type;
    // Bytes of one page.
    ulong page_bytes;
    float scale;
    uint ld_q;
    // attention: positions per tile, query heads per threadgroup (of one
    // KV head's), and the ranges of positions split across threadgroups
    // (1: none) with their length.
    uint tile;
    uint group_heads;
    uint splits;
    uint split_len;
    // Scores s become softcap * tanh(s / softcap) (0: as they are).
    float softcap;
};
static_assert(sizeof(KvArgs) == 72, "KvArgs");

// What the host knows of each token of a pass.
struct TokenInfo {
    // The token's position in its sequence.
    uint pos;
    // Where its sequence's page list starts in the pages buffer.
    uint pages;
};
static_assert(sizeof(TokenInfo) == 8, "TokenInfo");

// Positions per KV cache page.
#define PAGE 64
