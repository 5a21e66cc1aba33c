// Kernels with the bugs the emulator must catch, each next to its fix.
#include <metal_stdlib>
using namespace metal;

// out[i] = in[i + 1] within each threadgroup (the last thread keeps its own
// value), through threadgroup memory. With `barrier` 0 the barrier between
// the writes and the reads is missing.
kernel void shift_left(device const float *in [[buffer(0)]],
                       device float *out [[buffer(1)]],
                       constant uint &barrier [[buffer(2)]],
                       uint i [[thread_position_in_grid]],
                       uint tid [[thread_index_in_threadgroup]],
                       uint n [[threads_per_threadgroup]]) {
    threadgroup float t[256];
    t[tid] = in[i];
    if (barrier != 0) {
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    out[i] = tid + 1 < n ? t[tid + 1] : t[tid];
}

// A SIMD-group sum under a lane-dependent branch: lanes 16..32 never meet.
kernel void divergent_sum(device float *out [[buffer(0)]],
                          uint lane [[thread_index_in_simdgroup]]) {
    float v = float(lane);
    if (lane < 16) {
        v = simd_sum(v);
    }
    out[lane] = v;
}

// A barrier the second SIMD group never reaches.
kernel void early_return(device float *out [[buffer(0)]],
                         uint tid [[thread_index_in_threadgroup]]) {
    threadgroup float t[32];
    if (tid >= 32) {
        return;
    }
    t[tid] = float(tid);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[tid] = t[31 - tid];
}

// Each lane loads the matrix from a different place.
kernel void matrix_lanes_differ(device const float *in [[buffer(0)]],
                                device float *out [[buffer(1)]],
                                uint lane [[thread_index_in_simdgroup]]) {
    simdgroup_float8x8 m;
    simdgroup_load(m, in + lane, 8);
    simdgroup_store(m, out, 8);
}

// The sum of each threadgroup's 64 values, halving in threadgroup memory
// down to `last` (1 is complete; 2 misses the final step).
kernel void tree_sum(device const float *in [[buffer(0)]],
                     device float *out [[buffer(1)]],
                     constant uint &last [[buffer(2)]],
                     uint i [[thread_position_in_grid]],
                     uint tid [[thread_index_in_threadgroup]],
                     uint g [[threadgroup_position_in_grid]]) {
    threadgroup float t[64];
    t[tid] = in[i];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint s = 32; s >= last; s /= 2) {
        if (tid < s) {
            t[tid] += t[tid + s];
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    if (tid == 0) {
        out[g] = t[0];
    }
}

// The sum of each SIMD group's 32 values with shuffles, down to offset
// `last` (1 is complete; 2 misses the final step).
kernel void shuffle_sum(device const float *in [[buffer(0)]],
                        device float *out [[buffer(1)]],
                        constant uint &last [[buffer(2)]],
                        uint i [[thread_position_in_grid]],
                        ushort lane [[thread_index_in_simdgroup]]) {
    float v = in[i];
    for (ushort off = 16; off >= last; off /= 2) {
        v += simd_shuffle_down(v, off);
    }
    if (lane == 0) {
        out[i / 32] = v;
    }
}

// Reads one element past what the threadgroup wrote (t[tid + 1] for the
// last thread): poisoned memory, so NaN.
kernel void unguarded_read(device const float *in [[buffer(0)]],
                           device float *out [[buffer(1)]],
                           uint i [[thread_position_in_grid]],
                           uint tid [[thread_index_in_threadgroup]]) {
    threadgroup float t[65];
    t[tid] = in[i];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[i] = t[tid] + t[tid + 1];
}

// Writes `stride` floats apart: past the end of a small buffer.
kernel void write_past_end(device float *out [[buffer(0)]],
                           constant uint &stride [[buffer(1)]],
                           uint i [[thread_position_in_grid]]) {
    out[i * stride] = 1.0f;
}

// A private array larger than a thread's stack (Apple GPUs would spill it
// to device memory; here the fiber's stack overflows).
kernel void deep_stack(device float *out [[buffer(0)]],
                       uint i [[thread_position_in_grid]]) {
    volatile float big[65536];
    for (uint j = 0; j < 65536; j += 1024) {
        big[j] = float(j);
    }
    out[i] = big[i * 1024];
}
