//! The GPU backend: the forward pass's operations as compute kernels written
//! in Metal Shading Language (`kernels/metal/`), run through a small
//! interface to a GPU, [`Gpu`].
//!
//! Two things implement [`Gpu`]:
//! - Metal itself, on macOS (`gpu::metal`): the one part of the backend that
//!   only a Mac runs;
//! - the emulator (the `tinyllm-metal-emu` crate), which compiles the same
//!   `.metal` sources as C++ and runs every GPU thread as a fiber, with the
//!   lanes of a SIMD group and the threads of a threadgroup meeting where
//!   Metal makes them meet. Tests run the whole backend through it on any
//!   machine.
//!
//! Everything above that interface (the kernel sources, buffer planning, the
//! sequence of dispatches of a forward pass and their arguments) is shared,
//! so what the emulator runs is what a Mac runs.

pub mod attention;
pub mod device;
pub mod layout;
#[cfg(target_os = "macos")]
pub mod metal;
pub mod source;

pub use device::GpuDevice;

use crate::error::Result;

/// A GPU: buffers in memory both processors see, kernels compiled from
/// source at run time, and dispatches recorded into one batch of work that
/// [`Gpu::run`] submits and waits for.
///
/// Arguments bind by index: `args[i]` is the kernel's `[[buffer(i)]]`.
/// Dispatches run in the order they were recorded, each seeing the writes of
/// those before it (Metal's serial compute encoder).
pub trait Gpu {
    /// Memory the GPU reads and writes and the CPU sees at
    /// [`Gpu::contents`] (Metal's shared storage mode).
    type Buffer;
    /// Compiled kernels.
    type Library;
    /// One kernel, ready to dispatch.
    type Pipeline: Clone;

    /// What the device is, for `Model.info` (e.g. "Apple M2 Pro", or the
    /// emulator's name).
    fn name(&self) -> String;

    /// A new buffer of `bytes` bytes (at least one), zeroed.
    fn buffer(&self, bytes: usize) -> Result<Self::Buffer>;

    /// A buffer over `len` bytes at `ptr`, without copying them: the way
    /// mapped weights reach the GPU.
    ///
    /// # Safety
    ///
    /// `ptr` is page-aligned and `len` a multiple of the page size; the
    /// memory stays valid and unchanged for as long as the buffer lives.
    unsafe fn wrap(&self, ptr: *const u8, len: usize) -> Result<Self::Buffer>;

    /// The address of the buffer's first byte in the CPU's address space.
    /// Its contents may be read or written only while no work is running.
    fn contents(&self, buffer: &Self::Buffer) -> *mut u8;

    /// Compiles Metal Shading Language `source` (one translation unit; see
    /// [`source::library`]). Errors quote the compiler's message.
    fn compile(&self, source: &str) -> Result<Self::Library>;

    /// The kernel function `name` of `library`.
    fn pipeline(&self, library: &Self::Library, name: &str) -> Result<Self::Pipeline>;

    /// Records one dispatch of `pipeline` over `grid` with `args`.
    fn dispatch(&mut self, pipeline: &Self::Pipeline, args: &[Arg<'_, Self::Buffer>], grid: Grid);

    /// Submits everything recorded since the last call and waits until it
    /// has run. Errors say what failed (the emulator names the kernel and
    /// the source line of a fault).
    fn run(&mut self) -> Result<()>;
}

/// One argument of a dispatch.
#[derive(Debug)]
pub enum Arg<'a, B> {
    /// A buffer from a byte offset on (a multiple of the element's
    /// alignment): `device T* p [[buffer(i)]]`.
    Buffer(&'a B, usize),
    /// A few bytes copied at recording time (Metal's `setBytes`, at most
    /// 4 KiB): `constant Args& a [[buffer(i)]]`.
    Bytes(&'a [u8]),
}

/// The shape of a dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    /// Threadgroups in the grid, `(x, y, z)`.
    pub groups: [u32; 3],
    /// Threads in each threadgroup, `(x, y, z)`; at most 1024 in all.
    pub threads: [u32; 3],
    /// Bytes of threadgroup memory bound to `[[threadgroup(0)]]` (a multiple
    /// of 16), or 0.
    pub shared: usize,
}

impl Grid {
    /// `groups` threadgroups of `threads` threads along x.
    pub fn linear(groups: u32, threads: u32) -> Self {
        Grid {
            groups: [groups, 1, 1],
            threads: [threads, 1, 1],
            shared: 0,
        }
    }
}

/// The width of a SIMD group on Apple GPUs, which the kernels assume.
pub const SIMD_WIDTH: u32 = 32;
