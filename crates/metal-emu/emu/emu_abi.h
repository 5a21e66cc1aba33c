// The interface between the kernels' side of the emulator (the shim header
// `metal_stdlib` and the generated launchers) and the executor
// (`executor.cpp`), and between the executor and Rust (`src/ffi.rs` mirrors
// the structs marked "Rust").
//
// No standard headers here: the kernels' translation unit includes none, so
// it compiles fast and its AST dump (the vector-cast lint) stays small.
#pragma once

namespace emu {

typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long long u64;

// Where a meeting point is in the kernel's source (the call site of the
// simd_* function or barrier, through default arguments).
struct Site {
    const char *file;
    u32 line;
    u32 col;
    const char *op;
};

struct Meet;

// Computes a meeting's results once every active lane of the SIMD group
// has arrived: `lanes[i]` is lane i's meeting (null if lane i is not
// active). Returns null, or an error message (static, or written into
// `err`, of `cap` bytes).
typedef const char *(*Combine)(Meet *const *lanes, char *err, u64 cap);

// One lane at a meeting point of its SIMD group: `in` and `out` point into
// the lane's own frame, which stays alive while it waits.
struct Meet {
    Site site;
    Combine combine;
    const void *in;
    void *out;
    u64 arg;
};

// A thread's built-in positions, as Metal's attributes name them.
enum Builtin : u32 {
    THREAD_POSITION_IN_GRID,
    THREAD_POSITION_IN_THREADGROUP,
    THREADGROUP_POSITION_IN_GRID,
    THREADS_PER_THREADGROUP,
    THREADGROUPS_PER_GRID,
    THREADS_PER_GRID,
    THREAD_INDEX_IN_THREADGROUP,
    THREAD_INDEX_IN_SIMDGROUP,
    SIMDGROUP_INDEX_IN_THREADGROUP,
    THREADS_PER_SIMDGROUP,
    SIMDGROUPS_PER_THREADGROUP,
    BUILTIN_COUNT,
};

// Each built-in as three values (the scalar ones in [0]).
struct Ids {
    u32 v[BUILTIN_COUNT][3];
};

// How a kernel parameter is bound (Rust).
enum BindKind : u32 {
    BIND_BUFFER = 0,      // [[buffer(index)]]
    BIND_THREADGROUP = 1, // [[threadgroup(index)]]
    BIND_BUILTIN = 2,     // index is a Builtin
};

struct Bind {
    u32 kind;
    u32 index;
};

// What a parameter needs of its argument (Rust): a reference needs `size`
// bytes, a pointer an offset that is a multiple of `align`.
struct ParamSize {
    u64 size;
    u64 align;
    u32 is_ref;
    u32 pad;
};

// One kernel of a library (Rust): the table `tinyllm_emu_kernels` ends with
// a null name.
struct KernelInfo {
    const char *name;
    void (*entry)();
    const Bind *binds;
    const ParamSize *sizes;
    u32 nparams;
    u32 line;
    const char *file;
    // The parameters' names.
    const char *const *names;
};

// One dispatch (Rust).
struct Launch {
    // Argument i (buffer(i)): its address, and the bytes from it on.
    void *const *args;
    const u64 *lens;
    u32 nargs;
    u32 groups[3];
    u32 threads[3];
    // Bytes of [[threadgroup(0)]] memory.
    u64 shared;
    // 0 forward, 1 reverse, 2 random (seeded by `seed`).
    u32 order;
    // Nonzero: fill threadgroup memory with 0xff bytes (NaN in every float
    // type) at the start of each threadgroup.
    u32 poison;
    u64 seed;
};

} // namespace emu

extern "C" {
// Waits until every active lane of the caller's SIMD group reached a
// meeting; the combine function has then written the lanes' results.
void tinyllm_emu_meet(emu::Meet *m);
// Waits until every thread of the threadgroup reached the barrier.
void tinyllm_emu_barrier(const emu::Site *site);
// The calling thread's built-ins.
const emu::Ids *tinyllm_emu_ids();
// The address of argument `index` (BIND_BUFFER) or of threadgroup memory
// `index` (BIND_THREADGROUP) of the current dispatch.
void *tinyllm_emu_arg(emu::u32 kind, emu::u32 index);
// The threadgroup's instance of a kernel-scope `threadgroup` variable,
// identified by `key`.
void *tinyllm_emu_tg_var(const void *key, emu::u64 size, emu::u64 align);
}
