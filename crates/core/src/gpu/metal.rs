//! Metal itself: the thin layer under [`Gpu`] that only a Mac runs.
//!
//! Everything here is a direct call into Metal; what to dispatch, with which
//! arguments and in what order is decided above [`Gpu`], where the emulator
//! runs it too. This file is type-checked and linted on Linux
//! (`../shared/tools/apple-check.sh`, `make lint`) and run only by the macOS
//! workflow (`.github/workflows/macos.yml`).
//!
//! - Buffers use shared storage: one memory that the CPU and the GPU both see
//!   (Apple Silicon's unified memory), so [`Gpu::contents`] is a plain pointer.
//! - Kernels are compiled with Metal's default options, fast math on, once
//!   per process and device: every model's device shares the library and
//!   its pipelines.
//! - A step (everything recorded between two [`Gpu::run`]s) is one command
//!   buffer with one serial compute encoder, made at its first dispatch.
//! - A problem found while recording (the command buffer could not be made,
//!   a threadgroup too large for a kernel) skips the rest of the step and is
//!   returned by the next [`Gpu::run`], since [`Gpu::dispatch`] returns
//!   nothing.

use super::{Arg, Gpu, Grid, SIMD_WIDTH};
use crate::error::{Error, Result};
use objc2::rc::{Retained, autoreleasepool};
use objc2::runtime::ProtocolObject;
use objc2_foundation::NSString;
use objc2_metal::{
    MTLBuffer, MTLCommandBuffer, MTLCommandBufferStatus, MTLCommandEncoder, MTLCommandQueue,
    MTLComputeCommandEncoder, MTLComputePipelineState, MTLCreateSystemDefaultDevice, MTLDevice,
    MTLDispatchType, MTLGPUFamily, MTLLibrary, MTLResourceOptions, MTLSize,
};
use std::collections::HashMap;
use std::ffi::c_void;
use std::hash::{Hash, Hasher};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, PoisonError};

// MTLCreateSystemDefaultDevice finds no device unless the program links
// CoreGraphics (objc2-metal's documentation).
#[link(name = "CoreGraphics", kind = "framework")]
unsafe extern "C" {}

// The engine moves a device to the thread that runs it.
const _: fn() = || {
    fn engine_device<T: crate::forward::EngineDevice>() {}
    engine_device::<super::GpuDevice<Metal>>();
};

/// The most bytes one [`Arg::Bytes`] may hold (Metal's limit for `setBytes`).
const MAX_BYTES_ARG: usize = 4096;

/// Whether this machine has a Metal device that runs the kernels.
pub fn available() -> bool {
    autoreleasepool(|_| device().is_ok())
}

/// The system's default Metal device, if it runs the kernels: an Apple GPU of
/// family 7 or later (M1, A14 and later), as the kernels use SIMD-group
/// reductions (`simd_sum`). Older GPUs lack them, and so, by reports, does
/// the paravirtual GPU of a macOS virtual machine.
fn device() -> Result<Retained<ProtocolObject<dyn MTLDevice>>> {
    let device = MTLCreateSystemDefaultDevice().ok_or_else(|| {
        Error::Gpu(
            "no Metal device: this Mac's GPU does not support Metal, or this process cannot \
             reach it (e.g. in a virtual machine)"
                .into(),
        )
    })?;
    if !device.supportsFamily(MTLGPUFamily::Apple7) {
        return Err(Error::Gpu(format!(
            "{}: the kernels need an Apple GPU of family 7 or later (M1 or later) for SIMD-group \
             reductions",
            device.name()
        )));
    }
    Ok(device)
}

/// The system's default Metal device and one command queue on it.
pub struct Metal {
    device: Retained<ProtocolObject<dyn MTLDevice>>,
    queue: Retained<ProtocolObject<dyn MTLCommandQueue>>,
    /// Bytes of threadgroup memory a threadgroup may use.
    max_shared: usize,
    /// The step being recorded, from its first dispatch to [`Gpu::run`].
    step: Option<Step>,
    /// The first problem found while recording the step.
    fault: Option<String>,
}

/// The command buffer of a step and its compute encoder.
struct Step {
    commands: Retained<ProtocolObject<dyn MTLCommandBuffer>>,
    encoder: Retained<ProtocolObject<dyn MTLComputeCommandEncoder>>,
}

// SAFETY: command buffers and encoders may be used from any thread, one
// thread at a time. A `Step` is reached only through `&mut Metal` (or owned
// by `Metal::run` and `Drop`), so one thread uses it at a time.
unsafe impl Send for Step {}

/// A Metal buffer in shared storage.
#[derive(Debug)]
pub struct Buffer(Retained<ProtocolObject<dyn MTLBuffer>>);

// SAFETY: an `MTLBuffer` may be retained, released and read (`contents`)
// from any thread; what is written through `contents` is governed by
// `Gpu::contents`'s contract, whichever thread writes.
unsafe impl Send for Buffer {}

/// Compiled kernels, and the pipelines made of them so far.
#[derive(Clone, Debug)]
pub struct Library(Arc<Compiled>);

#[derive(Debug)]
struct Compiled {
    library: Retained<ProtocolObject<dyn MTLLibrary>>,
    pipelines: Mutex<HashMap<String, Pipeline>>,
}

// SAFETY: Metal's libraries and compute pipeline states are immutable once
// made and documented as safe to use from any thread; the map is behind
// its mutex.
unsafe impl Send for Compiled {}
// SAFETY: as above.
unsafe impl Sync for Compiled {}

/// The libraries compiled in this process, by device and source.
static LIBRARIES: Mutex<Vec<((u64, u64), Library)>> = Mutex::new(Vec::new());

/// One kernel's compute pipeline state.
#[derive(Clone, Debug)]
pub struct Pipeline {
    state: Retained<ProtocolObject<dyn MTLComputePipelineState>>,
    name: Arc<str>,
    /// The most threads a threadgroup of this kernel may have (it can be
    /// under the device's 1024 when the kernel uses many registers).
    max_threads: usize,
    /// Bytes of threadgroup memory the kernel declares itself.
    static_shared: usize,
}

impl Metal {
    /// The system's default Metal device, if it runs the kernels (an Apple
    /// GPU of family 7 or later: M1, A14 and later).
    pub fn new() -> Result<Metal> {
        autoreleasepool(|_| {
            let device = device()?;
            let queue = device.newCommandQueue().ok_or_else(|| {
                Error::Gpu(format!(
                    "{}: Metal could not make a command queue",
                    device.name()
                ))
            })?;
            Ok(Metal {
                max_shared: device.maxThreadgroupMemoryLength(),
                device,
                queue,
                step: None,
                fault: None,
            })
        })
    }

    /// The encoder of the step being recorded, made at the step's first
    /// dispatch.
    fn encoder(&mut self) -> Result<&ProtocolObject<dyn MTLComputeCommandEncoder>, String> {
        if self.step.is_none() {
            let step = autoreleasepool(|_| {
                let commands = self
                    .queue
                    .commandBuffer()
                    .ok_or("Metal could not make a command buffer")?;
                let encoder = commands
                    .computeCommandEncoderWithDispatchType(MTLDispatchType::Serial)
                    .ok_or("Metal could not make a compute command encoder")?;
                Ok::<_, &str>(Step { commands, encoder })
            })?;
            self.step = Some(step);
        }
        match &self.step {
            Some(step) => Ok(&step.encoder),
            None => unreachable!("the step was made above"),
        }
    }

    /// The reason a dispatch of `pipeline` over `grid` cannot run, if any.
    fn check(&self, pipeline: &Pipeline, grid: &Grid) -> Option<String> {
        let threads: usize = grid.threads.iter().map(|&t| t as usize).product();
        let shared = grid.shared + pipeline.static_shared;
        if threads > pipeline.max_threads {
            Some(format!(
                "kernel {}: threadgroups of {threads} threads, but this GPU runs at most {} of it",
                pipeline.name, pipeline.max_threads
            ))
        } else if !grid.shared.is_multiple_of(16) {
            Some(format!(
                "kernel {}: {} bytes of threadgroup memory; Metal takes a multiple of 16",
                pipeline.name, grid.shared
            ))
        } else if shared > self.max_shared {
            Some(format!(
                "kernel {}: {shared} bytes of threadgroup memory, but this GPU has {}",
                pipeline.name, self.max_shared
            ))
        } else {
            None
        }
    }
}

impl std::fmt::Debug for Metal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metal")
            .field("device", &self.name())
            .field("recording", &self.step.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for Metal {
    fn drop(&mut self) {
        // Metal requires an encoder to be ended before it is released.
        if let Some(step) = self.step.take() {
            step.encoder.endEncoding();
        }
    }
}

fn size([width, height, depth]: [u32; 3]) -> MTLSize {
    MTLSize {
        width: width as usize,
        height: height as usize,
        depth: depth as usize,
    }
}

impl Gpu for Metal {
    type Buffer = Buffer;
    type Library = Library;
    type Pipeline = Pipeline;

    fn name(&self) -> String {
        autoreleasepool(|_| self.device.name().to_string())
    }

    fn buffer(&self, bytes: usize) -> Result<Buffer> {
        // New buffers are zeroed (Metal's documentation of newBufferWithLength).
        self.device
            .newBufferWithLength_options(bytes.max(1), MTLResourceOptions::StorageModeShared)
            .map(Buffer)
            .ok_or_else(|| {
                Error::Gpu(format!(
                    "Metal could not allocate a buffer of {bytes} bytes (at most {} in one \
                     buffer here)",
                    self.device.maxBufferLength()
                ))
            })
    }

    unsafe fn wrap(&self, ptr: *const u8, len: usize) -> Result<Buffer> {
        let start = NonNull::new(ptr.cast_mut().cast::<c_void>())
            .ok_or_else(|| Error::Gpu("cannot wrap a null pointer in a Metal buffer".into()))?;
        // SAFETY: by `Gpu::wrap`'s contract the `len` bytes at `ptr` stay
        // valid and unchanged while the buffer lives; with no deallocator,
        // Metal never frees them.
        let buffer = unsafe {
            self.device
                .newBufferWithBytesNoCopy_length_options_deallocator(
                    start,
                    len,
                    MTLResourceOptions::StorageModeShared,
                    None,
                )
        };
        buffer.map(Buffer).ok_or_else(|| {
            Error::Gpu(format!(
                "Metal could not wrap {len} bytes at {ptr:p} without a copy (the address and the \
                 length must be multiples of the page size)"
            ))
        })
    }

    fn contents(&self, buffer: &Buffer) -> *mut u8 {
        buffer.0.contents().as_ptr().cast()
    }

    fn compile(&self, source: &str) -> Result<Library> {
        let mut hasher = std::hash::DefaultHasher::new();
        source.hash(&mut hasher);
        let key = (self.device.registryID(), hasher.finish());
        let mut cache = LIBRARIES.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, library)) = cache.iter().find(|(k, _)| *k == key) {
            return Ok(library.clone());
        }
        let library = autoreleasepool(|_| {
            // No options: Metal's defaults, fast math on.
            self.device
                .newLibraryWithSource_options_error(&NSString::from_str(source), None)
                .map_err(|e| {
                    Error::Gpu(format!(
                        "the Metal compiler rejected the kernels: {}",
                        e.localizedDescription()
                    ))
                })
        })?;
        let library = Library(Arc::new(Compiled {
            library,
            pipelines: Mutex::new(HashMap::new()),
        }));
        cache.push((key, library.clone()));
        Ok(library)
    }

    fn pipeline(&self, library: &Library, name: &str) -> Result<Pipeline> {
        let mut made = library
            .0
            .pipelines
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = made.get(name) {
            return Ok(p.clone());
        }
        let pipeline = autoreleasepool(|_| {
            let function = library
                .0
                .library
                .newFunctionWithName(&NSString::from_str(name))
                .ok_or_else(|| Error::Gpu(format!("no kernel named {name:?} in the library")))?;
            let state = self
                .device
                .newComputePipelineStateWithFunction_error(&function)
                .map_err(|e| Error::Gpu(format!("kernel {name}: {}", e.localizedDescription())))?;
            let width = state.threadExecutionWidth();
            if width != SIMD_WIDTH as usize {
                return Err(Error::Gpu(format!(
                    "{}: kernel {name} runs SIMD groups of {width} threads; the kernels need \
                     {SIMD_WIDTH} (an Apple GPU)",
                    self.device.name()
                )));
            }
            Ok(Pipeline {
                max_threads: state.maxTotalThreadsPerThreadgroup(),
                static_shared: state.staticThreadgroupMemoryLength(),
                state,
                name: name.into(),
            })
        })?;
        made.insert(name.into(), pipeline.clone());
        Ok(pipeline)
    }

    fn dispatch(&mut self, pipeline: &Pipeline, args: &[Arg<'_, Buffer>], grid: Grid) {
        if self.fault.is_some() {
            return;
        }
        if let Some(fault) = self.check(pipeline, &grid) {
            self.fault = Some(fault);
            return;
        }
        let encoder = match self.encoder() {
            Ok(encoder) => encoder,
            Err(fault) => {
                self.fault = Some(fault);
                return;
            }
        };
        encoder.setComputePipelineState(&pipeline.state);
        for (i, arg) in args.iter().enumerate() {
            match *arg {
                // SAFETY: the command buffer retains the buffer until its
                // work has run; the ranges a kernel reads and writes from
                // `offset` on are the dispatching code's, which the
                // emulator's tests run with the same arguments.
                Arg::Buffer(buffer, offset) => unsafe {
                    encoder.setBuffer_offset_atIndex(Some(&buffer.0), offset, i)
                },
                Arg::Bytes(bytes) => {
                    assert!(
                        (1..=MAX_BYTES_ARG).contains(&bytes.len()),
                        "kernel {}: argument {i} has {} bytes; Metal's setBytes takes 1 to {}",
                        pipeline.name,
                        bytes.len(),
                        MAX_BYTES_ARG
                    );
                    // SAFETY: Metal copies the `bytes.len()` bytes during
                    // the call; they are a live slice.
                    unsafe {
                        encoder.setBytes_length_atIndex(NonNull::from(bytes).cast(), bytes.len(), i)
                    }
                }
            }
        }
        if grid.shared > 0 {
            // SAFETY: `check` kept the length within the device's threadgroup
            // memory; index 0 is the kernels' `[[threadgroup(0)]]`.
            unsafe { encoder.setThreadgroupMemoryLength_atIndex(grid.shared, 0) };
        }
        encoder.dispatchThreadgroups_threadsPerThreadgroup(size(grid.groups), size(grid.threads));
    }

    fn run(&mut self) -> Result<()> {
        let fault = self.fault.take();
        let Some(step) = self.step.take() else {
            return fault.map_or(Ok(()), |f| Err(Error::Gpu(f)));
        };
        step.encoder.endEncoding();
        if let Some(fault) = fault {
            // The step is dropped unsubmitted: its results would be wrong.
            return Err(Error::Gpu(fault));
        }
        autoreleasepool(|_| {
            step.commands.commit();
            step.commands.waitUntilCompleted();
            let status = step.commands.status();
            if status == MTLCommandBufferStatus::Completed {
                return Ok(());
            }
            let why = match step.commands.error() {
                Some(e) => e.localizedDescription().to_string(),
                None => format!("status {status:?}"),
            };
            Err(Error::Gpu(format!("the GPU's work failed: {why}")))
        })
    }
}
