//! A Metal GPU emulator for tests: runs the Metal Shading Language kernels of
//! `kernels/metal/` on any Linux or macOS machine, through the same
//! [`Gpu`] interface as Metal itself.
//!
//! # How
//!
//! [`Gpu::compile`] rewrites the source without moving any line (so clang's
//! messages point into the `.metal` files), adds a launcher per kernel, and
//! compiles it as C++20 with clang++ 17 or later (`$TINYLLM_CLANG`, else
//! `clang++-19`, else `clang++`) against a shim of `<metal_stdlib>`, into a
//! shared object that is loaded with `dlopen`. Libraries are cached under
//! `$TMPDIR/tinyllm-metal-emu/` by a hash of everything that went into them.
//! The crate builds without clang; compiling a library needs it.
//!
//! [`Gpu::run`] runs each recorded dispatch on the calling thread. Every GPU
//! thread is a fiber; threadgroups run one at a time. The 32 lanes of a SIMD
//! group meet at every `simd_*` call and simdgroup matrix operation, and the
//! threads of a threadgroup at every `threadgroup_barrier`. The executor
//! reports, with the kernel, the threadgroup and the source line:
//! - lanes of a SIMD group that reach different SIMD-group functions, or
//!   one while others returned (a `simd_sum` under a lane-dependent branch);
//! - a barrier that not every thread reaches;
//! - a simdgroup matrix operation whose operands differ between lanes;
//! - more than 32 KiB of threadgroup memory;
//! - an access past the end of a buffer: each buffer of [`Gpu::buffer`] is
//!   followed by a page nothing may touch, and a fault there (or anywhere)
//!   during a dispatch is reported, with the thread, instead of killing the
//!   process; so is a thread that overflows its 128 KiB stack;
//! - a missing argument, a `constant T&` argument shorter than `T`, an
//!   offset that is not a multiple of the element's alignment.
//!
//! Threads run to their next meeting point one after another, in the order
//! of [`Options::order`], and threadgroup memory is filled with NaN at the
//! start of each threadgroup ([`Options::poison`]). A missing barrier makes
//! a thread read memory that another has not written yet, in one order or
//! another: run the tests in every order of [`Order::ALL`].
//!
//! # Where it differs from a GPU
//!
//! Compare results with named tolerances, never bit for bit:
//! - Metal compiles with fast math (`exp` is `fast::exp`, denormals flush);
//!   here every function is the exact one, `fast::` and `precise::` alike.
//!   Products are contracted into FMAs where clang chooses.
//! - `half` rounds after every operation (clang's `_Float16`), which is
//!   close to but not always what an Apple GPU does; `half` math functions
//!   are computed in float.
//! - `simd_sum` and the other reductions add the lanes in lane order, and
//!   simdgroup matrix products accumulate in float, in order.
//! - `min`, `max` and `clamp` on floats are `fmin`/`fmax`: a NaN loses.
//!
//! What the emulator cannot tell:
//! - whether Apple's compiler accepts the source (a macOS job that runs
//!   `xcrun metal -c` does);
//! - address-space mistakes (all of them are plain memory here);
//! - races between threadgroups (they run one after another);
//! - out-of-bounds accesses that stay within the host page a buffer ends in
//!   (4 KiB here: a 64-byte buffer hides overruns of up to 4032 bytes),
//!   before a buffer's start, or in memory from [`Gpu::wrap`];
//! - atomics, textures, function constants, bool vectors, `packed_float3`,
//!   `simdgroup_matrix::thread_elements`, `quad_*` functions and several
//!   `[[threadgroup(n)]]` parameters (only n = 0), none of which it supports.
//!
//! # Traps the emulator catches before running
//!
//! `(float4)int4_value` converts in Metal but reinterprets the bits in clang
//! (3 becomes 4.2e-45). [`lint`] finds such casts in clang's AST and
//! [`Gpu::compile`] runs it, so a kernel with one does not compile here.
//! `x * 0.5` (a double) does not compile either (`-Werror=double-promotion`):
//! write `0.5f`.
//!
//! # For kernel writers
//!
//! - Every kernel parameter needs its attribute: `[[buffer(n)]]` (n up to
//!   30), `[[threadgroup(0)]]` (sized by `Grid::shared`), or a built-in
//!   position (`uint`, `ushort`, or 2- and 3-vectors of them).
//! - A SIMD-group function must be reached by every lane of the SIMD group,
//!   in the same call: a lane that returned early counts as divergence here,
//!   though Metal would run the function over the lanes left.
//! - Write `0.5f`, not `0.5`; convert vectors with `float4(x)`, never
//!   `(float4)x`. Comparisons of vectors give int vectors here (bool vectors
//!   are unsupported): use them through `all`, `any` and `select`.
//! - Simdgroup matrices are 8x8; `simdgroup_load` with transpose reads
//!   element (r, c) from source row `origin.y + c`, column `origin.x + r`
//!   (the emulator's reading of Apple's documentation: to be safe, offset
//!   the pointer and pass origin 0).
//! - Limits as on Apple GPUs: 1024 threads and 32 KiB of threadgroup memory
//!   per threadgroup; and 128 KiB of stack per thread.
//! - Run every test in each of [`Order::ALL`].
//! - To step through a kernel: `TINYLLM_EMU_CFLAGS="-O0 -g"`, then gdb; the
//!   C++ that was compiled is `$TMPDIR/tinyllm-metal-emu/<hash>.cpp`.
//!
//! # Example
//!
//! ```no_run
//! use tinyllm_core::gpu::{Arg, Gpu, Grid};
//! use tinyllm_metal_emu::Emulator;
//!
//! let mut gpu = Emulator::new();
//! let lib = gpu.compile(
//!     "#include <metal_stdlib>\nusing namespace metal;\n\
//!      kernel void twice(device float *x [[buffer(0)]], uint i [[thread_position_in_grid]]) {\n\
//!          x[i] *= 2.0f;\n\
//!      }\n",
//! )?;
//! let twice = gpu.pipeline(&lib, "twice")?;
//! let buf = gpu.buffer(64 * 4)?;
//! gpu.dispatch(&twice, &[Arg::Buffer(&buf, 0)], Grid::linear(2, 32));
//! gpu.run()?;
//! # Ok::<(), tinyllm_core::Error>(())
//! ```

mod compile;
mod ffi;
mod rewrite;

use std::sync::Arc;

use tinyllm_core::error::{Error, Result};
use tinyllm_core::gpu::{Arg, Gpu, Grid};

use crate::ffi::{BIND_BUFFER, BIND_THREADGROUP, Launch, Loaded};

/// The order in which the emulator runs threadgroups, the SIMD groups of a
/// threadgroup and the lanes of a SIMD group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// First to last.
    Forward,
    /// Last to first.
    Reverse,
    /// Shuffled anew for each threadgroup, from this seed.
    Random(u64),
}

impl Order {
    /// Every kind of order, for tests that run a kernel in each.
    pub const ALL: [Order; 3] = [Order::Forward, Order::Reverse, Order::Random(0x5eed)];
}

/// How the emulator runs dispatches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// The order of threadgroups, SIMD groups and lanes.
    pub order: Order,
    /// Fill threadgroup memory with NaN (0xff bytes) at the start of each
    /// threadgroup, so that reading what no thread wrote shows.
    pub poison: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            order: Order::Forward,
            poison: true,
        }
    }
}

/// The Metal emulator: a [`Gpu`] that compiles Metal Shading Language with
/// clang and runs every GPU thread as a fiber on the calling thread.
#[derive(Debug, Default)]
pub struct Emulator {
    options: Options,
    queue: Vec<Recorded>,
}

/// Host memory the emulated GPU reads and writes.
#[derive(Debug)]
pub struct Buffer {
    mem: Arc<Memory>,
}

#[derive(Debug)]
struct Memory {
    ptr: *mut u8,
    len: usize,
    /// The mapping (start, length), if this buffer owns its memory.
    owned: Option<(*mut libc::c_void, usize)>,
}

// SAFETY: a Memory is a plain span of bytes; who writes it when is the
// Gpu trait's contract (contents only while no work runs).
unsafe impl Send for Memory {}
// SAFETY: as above.
unsafe impl Sync for Memory {}

impl Drop for Memory {
    fn drop(&mut self) {
        if let Some((map, len)) = self.owned {
            // SAFETY: mapped in Memory::map, and no longer used.
            unsafe { libc::munmap(map, len) };
        }
    }
}

impl Memory {
    /// `bytes` zeroed bytes at a PAGE-aligned address, followed (after
    /// rounding up to the host's page) by a page no access is allowed to:
    /// a kernel that reads or writes past the end faults there, and the
    /// executor reports it.
    fn map(bytes: usize) -> Option<Memory> {
        // SAFETY: sysconf has no preconditions.
        let host = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
        let data = bytes.max(1).checked_next_multiple_of(host)?;
        let total = data.checked_add(host)?.checked_add(PAGE)?;
        // SAFETY: a new anonymous private mapping.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return None;
        }
        let start = (map as usize).next_multiple_of(PAGE);
        let ptr = start as *mut u8;
        // SAFETY: [start + data, + host) is within the mapping (start is at
        // most PAGE - 1 bytes past its beginning).
        unsafe { libc::mprotect(ptr.add(data).cast(), host, libc::PROT_NONE) };
        Some(Memory {
            ptr,
            len: bytes,
            owned: Some((map, total)),
        })
    }
}

/// A compiled Metal library.
#[derive(Clone, Debug)]
pub struct Library {
    loaded: Arc<Loaded>,
}

impl Library {
    /// The names of the library's kernels.
    pub fn kernels(&self) -> Vec<&str> {
        self.loaded
            .kernels
            .iter()
            .map(|k| k.name.as_str())
            .collect()
    }
}

/// One kernel of a [`Library`].
#[derive(Clone, Debug)]
pub struct Pipeline {
    loaded: Arc<Loaded>,
    index: usize,
}

impl Pipeline {
    /// The kernel's name.
    pub fn name(&self) -> &str {
        &self.loaded.kernels[self.index].name
    }
}

#[derive(Debug)]
enum Recorded {
    Dispatch {
        pipeline: Pipeline,
        args: Vec<RecordedArg>,
        grid: Grid,
    },
}

#[derive(Debug)]
enum RecordedArg {
    Buffer(Arc<Memory>, usize),
    /// A copy of the bytes, 16-byte aligned.
    Bytes(Box<[u128]>, usize),
}

// The engine moves a GPU device, and its buffers and pipelines, between
// threads (EngineDevice: Send).
const _: () = {
    const fn send<T: Send>() {}
    send::<Emulator>();
    send::<Buffer>();
    send::<Pipeline>();
    send::<Library>();
};

/// The alignment of buffers: Apple's page size.
const PAGE: usize = 16384;

/// The most bytes Metal's setBytes takes.
const BYTES_LIMIT: usize = 4096;

impl Emulator {
    /// An emulator that runs forward, with threadgroup memory poisoned.
    pub fn new() -> Self {
        Self::default()
    }

    /// An emulator with `options`.
    pub fn with_options(options: Options) -> Self {
        Emulator {
            options,
            queue: Vec::new(),
        }
    }

    /// How this emulator runs dispatches.
    pub fn options(&self) -> Options {
        self.options
    }

    /// Changes how later runs go.
    pub fn set_options(&mut self, options: Options) {
        self.options = options;
    }

    fn launch(&self, pipeline: &Pipeline, args: &[RecordedArg], grid: &Grid) -> Result<(), String> {
        let kernel = &pipeline.loaded.kernels[pipeline.index];
        let name = &kernel.name;
        let threads: u64 = grid.threads.iter().map(|&t| t as u64).product();
        if threads == 0 || threads > 1024 {
            return Err(format!(
                "kernel {name}: threadgroups of {:?} threads; Metal takes 1 to 1024",
                grid.threads
            ));
        }
        if !grid.shared.is_multiple_of(16) {
            return Err(format!(
                "kernel {name}: {} bytes of threadgroup memory, not a multiple of 16 as Metal \
                 requires",
                grid.shared
            ));
        }
        let mut ptrs: Vec<*mut libc::c_void> = Vec::with_capacity(args.len());
        let mut lens: Vec<u64> = Vec::with_capacity(args.len());
        for (i, a) in args.iter().enumerate() {
            let (ptr, len) = match a {
                RecordedArg::Buffer(mem, offset) => {
                    if *offset > mem.len {
                        return Err(format!(
                            "kernel {name}: argument {i}'s offset {offset} is past its buffer's \
                             {} bytes",
                            mem.len
                        ));
                    }
                    // SAFETY: within the buffer (checked above).
                    (unsafe { mem.ptr.add(*offset) }, mem.len - offset)
                }
                RecordedArg::Bytes(b, len) => {
                    if *len > BYTES_LIMIT {
                        return Err(format!(
                            "kernel {name}: argument {i} is {len} bytes of setBytes; Metal takes \
                             at most {BYTES_LIMIT}"
                        ));
                    }
                    (b.as_ptr() as *mut u8, *len)
                }
            };
            ptrs.push(ptr.cast());
            lens.push(len as u64);
        }
        for p in &kernel.params {
            let what = format!(
                "kernel {name} ({}:{}): parameter `{}`",
                kernel.file, kernel.line, p.name
            );
            match p.bind.kind {
                BIND_BUFFER => {
                    let i = p.bind.index as usize;
                    if i >= args.len() {
                        return Err(format!(
                            "{what} is [[buffer({i})]], but the dispatch has {} arguments",
                            args.len()
                        ));
                    }
                    if p.size.is_ref != 0 && lens[i] < p.size.size {
                        return Err(format!(
                            "{what} [[buffer({i})]] is a reference to {} bytes, but its argument \
                             has {}",
                            p.size.size, lens[i]
                        ));
                    }
                    if !(ptrs[i] as usize).is_multiple_of(p.size.align.max(1) as usize) {
                        return Err(format!(
                            "{what} [[buffer({i})]]: the argument's offset is not a multiple of \
                             {}, the alignment of its type",
                            p.size.align
                        ));
                    }
                }
                BIND_THREADGROUP => {
                    if p.bind.index != 0 {
                        return Err(format!(
                            "{what} is [[threadgroup({})]]; the emulator has [[threadgroup(0)]] \
                             only",
                            p.bind.index
                        ));
                    }
                    if grid.shared == 0 {
                        return Err(format!(
                            "{what} is [[threadgroup(0)]], but the grid has no threadgroup \
                             memory (Grid::shared is 0)"
                        ));
                    }
                }
                _ => {}
            }
        }
        let (order, seed) = match self.options.order {
            Order::Forward => (0, 0),
            Order::Reverse => (1, 0),
            Order::Random(seed) => (2, seed),
        };
        let launch = Launch {
            args: ptrs.as_ptr(),
            lens: lens.as_ptr(),
            nargs: ptrs.len() as u32,
            groups: grid.groups,
            threads: grid.threads,
            shared: grid.shared as u64,
            order,
            poison: self.options.poison as u32,
            seed,
        };
        pipeline.loaded.dispatch(pipeline.index, &launch)
    }
}

/// Checks a Metal source for casts between vector types that clang compiles
/// as bit casts but Metal as conversions (`(float4)int4_value`). Errors
/// name each file and line. Needs clang, like [`Gpu::compile`], which runs
/// this check too.
pub fn lint(source: &str) -> std::result::Result<(), String> {
    compile::lint(source)
}

/// The version of the clang that compiles kernels, or why there is none
/// ("the Metal emulator needs clang++ 17 or later ...").
pub fn clang_version() -> std::result::Result<String, String> {
    compile::clang().map(|c| c.version.clone())
}

impl Gpu for Emulator {
    type Buffer = Buffer;
    type Library = Library;
    type Pipeline = Pipeline;

    fn name(&self) -> String {
        match compile::clang() {
            Ok(c) => format!("tinyllm Metal emulator (clang {})", c.version),
            Err(_) => "tinyllm Metal emulator (no clang)".to_string(),
        }
    }

    fn buffer(&self, bytes: usize) -> Result<Buffer> {
        let mem = Memory::map(bytes)
            .ok_or_else(|| Error::Gpu(format!("out of memory for a buffer of {bytes} bytes")))?;
        Ok(Buffer { mem: Arc::new(mem) })
    }

    unsafe fn wrap(&self, ptr: *const u8, len: usize) -> Result<Buffer> {
        Ok(Buffer {
            mem: Arc::new(Memory {
                ptr: ptr as *mut u8,
                len,
                owned: None,
            }),
        })
    }

    fn contents(&self, buffer: &Buffer) -> *mut u8 {
        buffer.mem.ptr
    }

    fn compile(&self, source: &str) -> Result<Library> {
        let path = compile::library(source).map_err(Error::Gpu)?;
        let loaded = Loaded::open(&path).map_err(Error::Gpu)?;
        Ok(Library {
            loaded: Arc::new(loaded),
        })
    }

    fn pipeline(&self, library: &Library, name: &str) -> Result<Pipeline> {
        let kernels = &library.loaded.kernels;
        match kernels.iter().position(|k| k.name == name) {
            Some(index) => Ok(Pipeline {
                loaded: library.loaded.clone(),
                index,
            }),
            None => Err(Error::Gpu(format!(
                "no kernel `{name}` in the library (it has {})",
                kernels
                    .iter()
                    .map(|k| k.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    fn dispatch(&mut self, pipeline: &Pipeline, args: &[Arg<'_, Buffer>], grid: Grid) {
        let args = args
            .iter()
            .map(|a| match a {
                Arg::Buffer(b, offset) => RecordedArg::Buffer(b.mem.clone(), *offset),
                Arg::Bytes(bytes) => {
                    let mut copy = vec![0u128; bytes.len().div_ceil(16).max(1)].into_boxed_slice();
                    // SAFETY: copy has at least bytes.len() bytes.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            bytes.as_ptr(),
                            copy.as_mut_ptr().cast::<u8>(),
                            bytes.len(),
                        );
                    }
                    RecordedArg::Bytes(copy, bytes.len())
                }
            })
            .collect();
        self.queue.push(Recorded::Dispatch {
            pipeline: pipeline.clone(),
            args,
            grid,
        });
    }

    fn run(&mut self) -> Result<()> {
        let queue = std::mem::take(&mut self.queue);
        for Recorded::Dispatch {
            pipeline,
            args,
            grid,
        } in &queue
        {
            self.launch(pipeline, args, grid).map_err(Error::Gpu)?;
        }
        Ok(())
    }
}
