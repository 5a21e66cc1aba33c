// A q4_0 matrix-vector product in the style of the real kernels: one
// threadgroup per row, its threads taking the row's blocks in turn, a
// simd_sum per SIMD group and a second one over the groups' partial sums
// in threadgroup memory.
#include <metal_stdlib>
using namespace metal;

#define QK 32

// 4-bit: value j is d * (nibble - 8); byte i holds value i (low nibble) and
// value i + 16 (high nibble).
struct block_q4_0 {
    half d;
    uchar qs[QK / 2];
};
static_assert(sizeof(block_q4_0) == 18, "block_q4_0");

struct MatvecArgs {
    uint rows;
    uint cols;
};

kernel void q4_0_matvec(constant MatvecArgs &a [[buffer(0)]],
                        device const block_q4_0 *w [[buffer(1)]],
                        device const float4 *x [[buffer(2)]],
                        device float *y [[buffer(3)]],
                        uint row [[threadgroup_position_in_grid]],
                        ushort tid [[thread_index_in_threadgroup]],
                        ushort sg [[simdgroup_index_in_threadgroup]],
                        ushort lane [[thread_index_in_simdgroup]],
                        ushort nsg [[simdgroups_per_threadgroup]],
                        ushort nthreads [[threads_per_threadgroup]]) {
    threadgroup float partial[32];
    const uint nb = a.cols / QK;
    device const block_q4_0 *wr = w + ulong(row) * nb;
    float acc = 0.0f;
    for (uint b = tid; b < nb; b += nthreads) {
        device const block_q4_0 &blk = wr[b];
        device const ushort *q = (device const ushort *)blk.qs;
        float4 s = 0.0f;
        for (uint j = 0; j < QK / 8; ++j) {
            // Bytes 4j..4j + 4: values 4j.. (low nibbles) and 16 + 4j.. (high).
            uchar4 bytes = as_type<uchar4>(uint(q[2 * j]) | (uint(q[2 * j + 1]) << 16));
            half4 lo = half4(bytes & uchar4(15)) - 8.0h;
            half4 hi = half4(bytes >> 4) - 8.0h;
            s += float4(lo) * x[b * 8 + j] + float4(hi.xyzw) * x[b * 8 + 4 + j];
        }
        const float2 t = s.xy + s.zw;
        acc += float(blk.d) * (t.x + t.y);
    }
    const float sum = simd_sum(acc);
    if (lane == 0) {
        partial[sg] = sum;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (sg == 0) {
        const float v = simd_sum(lane < nsg ? partial[lane] : 0.0f);
        if (lane == 0) {
            y[row] = v;
        }
    }
}
