// One kernel per group of features the emulator provides.
#include <metal_stdlib>
using namespace metal;

// Every built-in position of every thread, 16 values per thread.
kernel void positions(device uint *out [[buffer(0)]],
                      uint3 tpig [[thread_position_in_grid]],
                      ushort2 tpitg [[thread_position_in_threadgroup]],
                      uint3 tgpig [[threadgroup_position_in_grid]],
                      uint3 tptg [[threads_per_threadgroup]],
                      uint2 tgpg [[threadgroups_per_grid]],
                      uint3 tpg [[threads_per_grid]],
                      uint tiitg [[thread_index_in_threadgroup]],
                      ushort lane [[thread_index_in_simdgroup]],
                      uint sg [[simdgroup_index_in_threadgroup]],
                      uint width [[threads_per_simdgroup]],
                      ushort nsg [[simdgroups_per_threadgroup]]) {
    const uint linear = (tpig.z * tpg.y + tpig.y) * tpg.x + tpig.x;
    device uint *o = out + linear * 16;
    o[0] = tpig.x;
    o[1] = tpig.y;
    o[2] = tpig.z;
    o[3] = tpitg.x;
    o[4] = tpitg.y;
    o[5] = tgpig.x;
    o[6] = tgpig.y;
    o[7] = tptg.x * 100 + tptg.y * 10 + tptg.z;
    o[8] = tgpg.x * 10 + tgpg.y;
    o[9] = tiitg;
    o[10] = lane;
    o[11] = sg;
    o[12] = width;
    o[13] = nsg;
    o[14] = tgpig.z;
    o[15] = 7;
}

// The SIMD-group functions: out[f * 32 + lane] for function f.
kernel void simd_functions(device const float *in [[buffer(0)]],
                           device float *out [[buffer(1)]],
                           ushort lane [[thread_index_in_simdgroup]]) {
    const float x = in[lane];
    device float *o = out + lane;
    o[0 * 32] = simd_sum(x);
    o[1 * 32] = simd_max(x);
    o[2 * 32] = simd_min(x);
    o[3 * 32] = simd_prefix_exclusive_sum(x);
    o[4 * 32] = simd_prefix_inclusive_sum(x);
    o[5 * 32] = simd_shuffle(x, ushort(31 - lane));
    o[6 * 32] = simd_shuffle_down(x, 3);
    o[7 * 32] = simd_shuffle_up(x, 2);
    o[8 * 32] = simd_shuffle_xor(x, 5);
    o[9 * 32] = simd_broadcast(x, 7);
    o[10 * 32] = simd_broadcast_first(x);
    o[11 * 32] = simd_all(x > -1000.0f) ? 1.0f : 0.0f;
    o[12 * 32] = simd_any(lane == 9) ? 1.0f : 0.0f;
    o[13 * 32] = simd_sum(float2(x, 1.0f)).y;
    o[14 * 32] = float(simd_max(int(lane)));
    o[15 * 32] = float(simd_sum(half(1.0h)));
}

// Vector construction, conversion, swizzles, as_type and math.
kernel void vectors(device float *out [[buffer(0)]],
                    uint i [[thread_position_in_grid]]) {
    if (i != 0) {
        return;
    }
    const int4 iv = int4(1, 2, 3, -4);
    const float4 f = float4(iv);  // converts
    const float4 g = float4(f.xy, float2(5.0f, 6.0f));
    const half2 h = half2(1.5h, 2.25h);
    const float3 s = float3(2.0f);
    const uint u = as_type<uint>(1.0f);
    out[0] = f.w;
    out[1] = g.z + g.w;
    out[2] = float(h.x + h.y);
    out[3] = s.x + s.y + s.z;
    out[4] = float(u >> 23);
    out[5] = dot(f, float4(1.0f));
    out[6] = max(f, float4(0.0f)).w;
    out[7] = clamp(7.5f, 0.0f, 3.0f);
    out[8] = exp(0.0f) + fast::exp(0.0f) + precise::sqrt(4.0f);
    out[9] = numeric_limits<float>::max() > 1e38f ? 1.0f : 0.0f;
    out[10] = select(1.0f, 2.0f, true);
    out[11] = float(popcount(0xF0u));
    out[12] = float(as_type<half2>(as_type<uint>(h)).y);
    out[13] = float(int4(float4(2.7f, -2.7f, 0.0f, 1.0f)).y);
    out[14] = rsqrt(16.0f);
    out[15] = float(all(f.xyz > float3(0.0f)));
}

// Arguments bound by their [[buffer(n)]], not their position:
// out = a * x + y.
kernel void axpy(device const float *x [[buffer(2)]],
                 device float *out [[buffer(0)]],
                 constant float &a [[buffer(3)]],
                 device const float *y [[buffer(1)]],
                 uint i [[thread_position_in_grid]]) {
    out[i] = a * x[i] + y[i];
}

// Reverses each threadgroup's values through [[threadgroup(0)]] memory.
kernel void reverse_tg(device const float *in [[buffer(0)]],
                       device float *out [[buffer(1)]],
                       threadgroup float *scratch [[threadgroup(0)]],
                       uint i [[thread_position_in_grid]],
                       uint tid [[thread_index_in_threadgroup]],
                       uint n [[threads_per_threadgroup]]) {
    scratch[tid] = in[i];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[i] = scratch[n - 1 - tid];
}

// A template kernel with named instantiations: x *= 2 in T.
template <typename T>
kernel void twice(device T *x [[buffer(0)]], uint i [[thread_position_in_grid]]) {
    x[i] = x[i] * T(2);
}
template [[host_name("twice_f32")]] kernel void twice<float>(device float *x [[buffer(0)]],
                                                             uint i [[thread_position_in_grid]]);
template [[host_name("twice_f16")]] kernel void twice<half>(device half *x [[buffer(0)]],
                                                            uint i [[thread_position_in_grid]]);

// Kernel-scope threadgroup arrays, two in one declaration, in a kernel
// with a partial SIMD group (48 threads): out = in rotated by one.
kernel void rotate(device const float *in [[buffer(0)]],
                   device float *out [[buffer(1)]],
                   uint tid [[thread_index_in_threadgroup]],
                   uint n [[threads_per_threadgroup]]) {
    threadgroup float a[64], b[64];
    a[tid] = in[tid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    b[(tid + 1) % n] = a[tid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[tid] = b[tid] + simd_sum(0.0f);
}
