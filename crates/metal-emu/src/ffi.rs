//! A compiled library: the shared object, its kernel table and its
//! dispatch function (the structs mirror `emu/emu_abi.h`).

use std::ffi::{CStr, CString, c_char, c_void};
use std::path::Path;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bind {
    pub kind: u32,
    pub index: u32,
}

pub(crate) const BIND_BUFFER: u32 = 0;
pub(crate) const BIND_THREADGROUP: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct ParamSize {
    pub size: u64,
    pub align: u64,
    pub is_ref: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Debug)]
pub(crate) struct KernelInfo {
    pub name: *const c_char,
    pub entry: *const c_void,
    pub binds: *const Bind,
    pub sizes: *const ParamSize,
    pub nparams: u32,
    pub line: u32,
    pub file: *const c_char,
    pub names: *const *const c_char,
}

#[repr(C)]
#[derive(Debug)]
pub(crate) struct Launch {
    pub args: *const *mut c_void,
    pub lens: *const u64,
    pub nargs: u32,
    pub groups: [u32; 3],
    pub threads: [u32; 3],
    pub shared: u64,
    pub order: u32,
    pub poison: u32,
    pub seed: u64,
}

type DispatchFn = unsafe extern "C" fn(*const KernelInfo, *const Launch, *mut c_char, u64) -> i32;

/// One parameter of a kernel, as the library describes it.
#[derive(Clone, Debug)]
pub(crate) struct ParamInfo {
    pub name: String,
    pub bind: Bind,
    pub size: ParamSize,
}

/// One kernel of a library.
#[derive(Debug)]
pub(crate) struct KernelMeta {
    pub name: String,
    pub file: String,
    pub line: u32,
    pub params: Vec<ParamInfo>,
    info: *const KernelInfo,
}

/// A loaded library. It stays loaded for the life of the process: its
/// executor keeps per-thread fiber stacks, and libraries are few.
#[derive(Debug)]
pub(crate) struct Loaded {
    dispatch: DispatchFn,
    pub kernels: Vec<KernelMeta>,
}

// SAFETY: the pointers are into the loaded library's constant data and
// code, which never change nor go away (the library is never unloaded), and
// the dispatch function keeps its state per call and per OS thread.
unsafe impl Send for Loaded {}
// SAFETY: as above; nothing in a Loaded is mutated after loading.
unsafe impl Sync for Loaded {}

fn string(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the library's strings are NUL-terminated literals.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

impl Loaded {
    /// Loads the shared object at `path`.
    pub fn open(path: &Path) -> Result<Loaded, String> {
        let cpath = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("a NUL in {}", path.display()))?;
        // SAFETY: dlopen of a library this crate compiled; its only
        // initialisers are the C++ runtime's and constant tables.
        let handle = unsafe { libc::dlopen(cpath.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            // SAFETY: dlerror returns a NUL-terminated message or null.
            let msg = string(unsafe { libc::dlerror() });
            return Err(format!("loading {}: {msg}", path.display()));
        }
        let symbol = |name: &CStr| {
            // SAFETY: handle is a library dlopen returned.
            let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
            if p.is_null() {
                Err(format!("{}: no symbol {name:?}", path.display()))
            } else {
                Ok(p)
            }
        };
        let table = symbol(c"tinyllm_emu_kernels")? as *const KernelInfo;
        let dispatch = symbol(c"tinyllm_emu_dispatch")?;
        // SAFETY: the symbol is the executor's tinyllm_emu_dispatch, of this
        // type (emu/executor.cpp).
        let dispatch: DispatchFn =
            unsafe { std::mem::transmute::<*mut c_void, DispatchFn>(dispatch) };
        let mut kernels = Vec::new();
        for i in 0.. {
            // SAFETY: the table ends with an entry whose name is null.
            let info = unsafe { &*table.add(i) };
            if info.name.is_null() {
                break;
            }
            let n = info.nparams as usize;
            let params = (0..n)
                .map(|p| {
                    // SAFETY: binds, sizes and names have nparams entries
                    // (and a terminator).
                    unsafe {
                        ParamInfo {
                            name: string(*info.names.add(p)),
                            bind: *info.binds.add(p),
                            size: *info.sizes.add(p),
                        }
                    }
                })
                .collect();
            kernels.push(KernelMeta {
                name: string(info.name),
                file: string(info.file),
                line: info.line,
                params,
                info,
            });
        }
        Ok(Loaded { dispatch, kernels })
    }

    /// Runs kernel `k` over `launch`; the executor's message on a fault.
    pub fn dispatch(&self, k: usize, launch: &Launch) -> Result<(), String> {
        let mut err = vec![0u8; 4096];
        // SAFETY: the kernel's info is from this library's table, and the
        // launch's arguments were checked against its parameters.
        let rc = unsafe {
            (self.dispatch)(
                self.kernels[k].info,
                launch,
                err.as_mut_ptr().cast(),
                err.len() as u64,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
            Err(String::from_utf8_lossy(&err[..end]).into_owned())
        }
    }
}
