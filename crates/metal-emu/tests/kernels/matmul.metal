// C (m x n, f32) = A (m x k) * B (k x n), row-major, with 8x8 simdgroup
// matrices: one SIMD group per 8x8 tile of C. `_bt` variants read B given
// transposed (n x k).
#include <metal_stdlib>
using namespace metal;

struct MatmulArgs {
    uint m;
    uint n;
    uint k;
};

template <typename T>
kernel void matmul8x8(constant MatmulArgs &a [[buffer(0)]],
                      device const T *A [[buffer(1)]],
                      device const T *B [[buffer(2)]],
                      device float *C [[buffer(3)]],
                      uint2 tile [[threadgroup_position_in_grid]]) {
    simdgroup_float8x8 acc = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    for (uint k = 0; k < a.k; k += 8) {
        simdgroup_matrix<T, 8, 8> ma;
        simdgroup_matrix<T, 8, 8> mb;
        simdgroup_load(ma, A, a.k, ulong2(k, tile.y * 8));
        simdgroup_load(mb, B, a.n, ulong2(tile.x * 8, k));
        simdgroup_multiply_accumulate(acc, ma, mb, acc);
    }
    simdgroup_store(acc, C, a.n, ulong2(tile.x * 8, tile.y * 8));
}

template [[host_name("matmul8x8_f32")]] kernel void matmul8x8<float>(
    constant MatmulArgs &a [[buffer(0)]], device const float *A [[buffer(1)]],
    device const float *B [[buffer(2)]], device float *C [[buffer(3)]],
    uint2 tile [[threadgroup_position_in_grid]]);
template [[host_name("matmul8x8_f16")]] kernel void matmul8x8<half>(
    constant MatmulArgs &a [[buffer(0)]], device const half *A [[buffer(1)]],
    device const half *B [[buffer(2)]], device float *C [[buffer(3)]],
    uint2 tile [[threadgroup_position_in_grid]]);

// B transposed: Bt is n x k, loaded with transpose_matrix.
kernel void matmul8x8_bt(constant MatmulArgs &a [[buffer(0)]],
                         device const float *A [[buffer(1)]],
                         device const float *Bt [[buffer(2)]],
                         device float *C [[buffer(3)]],
                         uint2 tile [[threadgroup_position_in_grid]]) {
    simdgroup_float8x8 acc = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    simdgroup_float8x8 ma;
    simdgroup_float8x8 mb;
    for (uint k = 0; k < a.k; k += 8) {
        simdgroup_load(ma, A, a.k, ulong2(k, tile.y * 8));
        simdgroup_load(mb, Bt, a.k, ulong2(k, tile.x * 8), true);
        simdgroup_multiply_accumulate(acc, ma, mb, acc);
    }
    simdgroup_store(acc, C, a.n, ulong2(tile.x * 8, tile.y * 8));
}
