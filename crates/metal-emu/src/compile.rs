//! Compiling a rewritten Metal source with clang into a shared object,
//! cached on disk, and the vector-cast lint over clang's AST dump.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::rewrite::{self, LAUNCHER_FILE};

/// The shim and the executor, embedded in the crate and written next to the
/// cache when first needed.
const RUNTIME: &[(&str, &str)] = &[
    ("metal_stdlib", include_str!("../emu/metal_stdlib")),
    ("emu_abi.h", include_str!("../emu/emu_abi.h")),
    ("executor.cpp", include_str!("../emu/executor.cpp")),
];

/// Other names kernels include the standard library by.
const ALIASES: &[&str] = &[
    "metal_common",
    "metal_compute",
    "metal_geometric",
    "metal_integer",
    "metal_math",
    "metal_relational",
    "metal_simdgroup",
    "metal_simdgroup_matrix",
];

/// Bumped when the rewrite or the lint changes what a cached library means.
const VERSION: &str = "tinyllm-metal-emu 1";

/// clang's flags for both translation units. Not -ffast-math: it would
/// let the compiler assume no NaN, which defeats the NaN poison.
const FLAGS: &[&str] = &[
    "-std=c++20",
    "-O2",
    "-fPIC",
    "-fvisibility=hidden",
    "-fno-exceptions",
    "-fno-rtti",
    "-fno-math-errno",
    // Large frames probe each page, so that a fiber overflowing its stack
    // meets its guard page instead of the next fiber's stack.
    "-fstack-clash-protection",
    "-fexcess-precision=16",
    "-ffp-contract=fast",
    "-Werror=double-promotion",
    "-Wno-unknown-attributes",
    "-Wno-pragma-once-outside-header",
    "-fno-color-diagnostics",
    "-ferror-limit=8",
];

/// Flags for this machine's CPU: F16C turns half conversions into single
/// instructions instead of library calls (4x faster on half-heavy kernels;
/// both round to nearest even).
/// Then `$TINYLLM_EMU_CFLAGS`, split at spaces: `-O0 -g` to step through a
/// kernel in gdb, `-DTINYLLM_EMU_UCONTEXT` to test the executor's portable
/// context switch.
fn cpu_flags() -> &'static [String] {
    static FLAGS: OnceLock<Vec<String>> = OnceLock::new();
    FLAGS.get_or_init(|| {
        let mut flags = Vec::new();
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("f16c") {
            flags.push("-mf16c".to_string());
        }
        if let Ok(extra) = std::env::var("TINYLLM_EMU_CFLAGS") {
            flags.extend(extra.split_whitespace().map(str::to_string));
        }
        flags
    })
}

/// The longest compiler message an error quotes, in bytes.
const MESSAGE_LIMIT: usize = 4096;

/// The clang the emulator uses.
#[derive(Debug)]
pub(crate) struct Clang {
    pub path: PathBuf,
    /// "19.1.7".
    pub version: String,
}

/// Finds clang++ 17 or later: `$TINYLLM_CLANG`, else `clang++-19` and its
/// neighbours, else `clang++`.
pub(crate) fn clang() -> Result<&'static Clang, String> {
    static CLANG: OnceLock<Result<Clang, String>> = OnceLock::new();
    CLANG
        .get_or_init(|| {
            let candidates: Vec<String> = match std::env::var("TINYLLM_CLANG") {
                Ok(c) if !c.is_empty() => vec![c],
                _ => [
                    "clang++-19",
                    "clang++-20",
                    "clang++-21",
                    "clang++-18",
                    "clang++-17",
                    "clang++",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            };
            let mut found = Vec::new();
            for c in &candidates {
                let Ok(out) = Command::new(c).arg("--version").output() else {
                    continue;
                };
                let text = String::from_utf8_lossy(&out.stdout);
                let first = text.lines().next().unwrap_or_default();
                let version = first
                    .contains("clang")
                    .then(|| first.split("version ").nth(1))
                    .flatten()
                    .and_then(|v| v.split_whitespace().next());
                let Some(version) = version else {
                    found.push(format!("{c} (not clang: {first})"));
                    continue;
                };
                let major: u32 = version
                    .split('.')
                    .next()
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(0);
                if major >= 17 {
                    return Ok(Clang {
                        path: PathBuf::from(c),
                        version: version.to_string(),
                    });
                }
                found.push(format!("{c} {version}"));
            }
            Err(format!(
                "the Metal emulator needs clang++ 17 or later (apt-get install clang-19), or \
                 TINYLLM_CLANG naming one; found {}",
                if found.is_empty() {
                    "none".to_string()
                } else {
                    found.join(", ")
                }
            ))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A 128-bit FNV-1a hash of the parts, as hex (the cache's keys).
fn hash(parts: &[&[u8]]) -> String {
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x6c62_272e_07bb_0142;
    for part in parts {
        for &byte in part.iter().chain(&(part.len() as u64).to_le_bytes()) {
            a = (a ^ byte as u64).wrapping_mul(0x100_0000_01b3);
            b = (b ^ byte as u64)
                .wrapping_mul(0x100_0000_01b3)
                .rotate_left(5);
        }
    }
    format!("{a:016x}{b:016x}")
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that
/// a reader never sees half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = temporary(path);
    std::fs::write(&tmp, bytes).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("renaming to {}: {e}", path.display()))
}

/// A unique temporary name next to `path`.
fn temporary(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}-{n}", std::process::id()));
    path.with_file_name(name)
}

/// Bounds a compiler message.
fn bounded(text: &str) -> String {
    let text = text.trim_end();
    if text.len() <= MESSAGE_LIMIT {
        return text.to_string();
    }
    let mut end = MESSAGE_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n[... {} more bytes]", &text[..end], text.len() - end)
}

/// Runs clang; its stderr on failure.
fn run(cmd: &mut Command) -> Result<std::process::Output, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running clang: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(bounded(&String::from_utf8_lossy(&out.stderr)))
    }
}

/// Cached libraries unused for this long are deleted.
const CACHE_DAYS: u64 = 7;

/// The cache directory; the first call of a process prunes it.
fn cache_dir() -> Result<PathBuf, String> {
    static PRUNED: OnceLock<()> = OnceLock::new();
    let dir = std::env::temp_dir().join("tinyllm-metal-emu");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    PRUNED.get_or_init(|| prune(&dir));
    Ok(dir)
}

/// Deletes what no process used for CACHE_DAYS (a use touches the file):
/// libraries, their sources, and runtimes. A process that has one loaded
/// keeps its mapping.
fn prune(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let old = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > CACHE_DAYS * 86400)
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("rt-") {
            if old(&path.join("executor.o")) {
                let _ = std::fs::remove_dir_all(&path);
            }
        } else if old(&path) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Marks a cached file as used now.
fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().append(true).open(path) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// The directory holding the shim headers and the compiled executor for
/// this clang; made once.
fn runtime(clang: &Clang) -> Result<(PathBuf, String), String> {
    static RUNTIME_DIR: OnceLock<Result<(PathBuf, String), String>> = OnceLock::new();
    RUNTIME_DIR
        .get_or_init(|| {
            let mut parts: Vec<&[u8]> = vec![VERSION.as_bytes(), clang.version.as_bytes()];
            parts.extend(FLAGS.iter().map(|f| f.as_bytes()));
            parts.extend(cpu_flags().iter().map(|f| f.as_bytes()));
            parts.extend(RUNTIME.iter().map(|f| f.1.as_bytes()));
            let key = hash(&parts);
            let dir = cache_dir()?.join(format!("rt-{key}"));
            let object = dir.join("executor.o");
            if object.exists() {
                touch(&object);
                return Ok((dir, key));
            }
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            for (name, text) in RUNTIME {
                write_atomic(&dir.join(name), text.as_bytes())?;
            }
            for alias in ALIASES {
                write_atomic(
                    &dir.join(alias),
                    b"#pragma once\n#include \"metal_stdlib\"\n",
                )?;
            }
            let tmp = temporary(&object);
            run(Command::new(&clang.path)
                .args(FLAGS)
                .args(cpu_flags())
                .arg("-c")
                .arg(dir.join("executor.cpp"))
                .arg("-o")
                .arg(&tmp))
            .map_err(|e| format!("compiling the emulator's executor: {e}"))?;
            std::fs::rename(&tmp, &object)
                .map_err(|e| format!("renaming {}: {e}", tmp.display()))?;
            Ok((dir, key))
        })
        .clone()
}

/// The translation unit of a Metal source: the shim, the rewritten source
/// (its lines kept), and the launchers.
fn translation_unit(source: &str) -> Result<(String, Vec<rewrite::Kernel>), String> {
    let r = rewrite::rewrite(source)?;
    let mut tu = String::with_capacity(r.text.len() + 4096);
    tu.push_str("#include <metal_stdlib>\n");
    tu.push_str(&format!("#line 1 \"{}\"\n", rewrite::DEFAULT_FILE));
    tu.push_str(&r.text);
    if !r.text.ends_with('\n') {
        tu.push('\n');
    }
    tu.push_str(&rewrite::launchers(&r.kernels));
    Ok((tu, r.kernels))
}

/// Compiles `source` into a shared object (or finds it in the cache) and
/// returns its path. Threads compiling the same source wait for the first.
pub(crate) fn library(source: &str) -> Result<PathBuf, String> {
    type Cells = HashMap<String, Arc<OnceLock<Result<PathBuf, String>>>>;
    static BUILDS: Mutex<Option<Cells>> = Mutex::new(None);
    let clang = clang()?;
    let (rt, rt_key) = runtime(clang)?;
    let (tu, _) = translation_unit(source)?;
    let key = hash(&[tu.as_bytes(), rt_key.as_bytes()]);
    let lock = || BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    let cell = lock()
        .get_or_insert_with(HashMap::new)
        .entry(key.clone())
        .or_default()
        .clone();
    let result = cell.get_or_init(|| build(clang, &rt, &tu, &key)).clone();
    // Done: later calls find the file (or try again after an error).
    lock().get_or_insert_with(HashMap::new).remove(&key);
    result
}

fn build(clang: &Clang, rt: &Path, tu: &str, key: &str) -> Result<PathBuf, String> {
    let dir = cache_dir()?;
    let so = dir.join(format!("{key}.so"));
    if so.exists() {
        touch(&so);
        touch(&dir.join(format!("{key}.cpp")));
        return Ok(so);
    }
    let cpp = dir.join(format!("{key}.cpp"));
    write_atomic(&cpp, tu.as_bytes())?;

    // Compile and lint at once: the lint's front end runs beside the compile.
    let tmp = temporary(&so);
    let compile = Command::new(&clang.path)
        .args(FLAGS)
        .args(cpu_flags())
        .arg("-I")
        .arg(rt)
        .arg("-shared")
        .arg(&cpp)
        .arg(rt.join("executor.o"))
        .arg("-o")
        .arg(&tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", clang.path.display()))?;
    let lint = lint_file(clang, rt, &cpp);
    let out = compile
        .wait_with_output()
        .map_err(|e| format!("running clang: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(bounded(&String::from_utf8_lossy(&out.stderr)));
    }
    if let Err(e) = lint {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &so).map_err(|e| format!("renaming {}: {e}", tmp.display()))?;
    Ok(so)
}

/// The vector-cast lint of a Metal source (see [`crate::lint`]).
pub(crate) fn lint(source: &str) -> Result<(), String> {
    let clang = clang()?;
    let (rt, _) = runtime(clang)?;
    let (tu, _) = translation_unit(source)?;
    let dir = cache_dir()?;
    // clang knows a source by its extension: keep `.cpp` last.
    let cpp = dir.join(format!(
        "{}.cpp",
        temporary(&dir.join("lint"))
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
    ));
    std::fs::write(&cpp, tu.as_bytes()).map_err(|e| format!("writing {}: {e}", cpp.display()))?;
    let result = lint_file(clang, &rt, &cpp);
    let _ = std::fs::remove_file(&cpp);
    result
}

fn lint_file(clang: &Clang, rt: &Path, cpp: &Path) -> Result<(), String> {
    let out = run(Command::new(&clang.path)
        .args(FLAGS)
        .args(cpu_flags())
        .arg("-I")
        .arg(rt)
        .args(["-fsyntax-only", "-Xclang", "-ast-dump"])
        .arg(cpp))?;
    let dump = String::from_utf8_lossy(&out.stdout);
    let traps = vector_cast_traps(&dump, &rt.to_string_lossy());
    if traps.is_empty() {
        Ok(())
    } else {
        Err(traps.join("\n"))
    }
}

/// The C-style and functional casts between vector types that clang
/// compiles as bit casts, where Metal converts the values: one message per
/// source line. `(float4)int4_value` gives 4.2e-45 for 3 here, 3.0 on a Mac.
pub(crate) fn vector_cast_traps(dump: &str, runtime_dir: &str) -> Vec<String> {
    let lines: Vec<&str> = dump.lines().collect();
    let mut file = String::new();
    let mut line = 0u32;
    let mut found: Vec<String> = Vec::new();
    for (at, text) in lines.iter().enumerate() {
        let mut first: Option<(String, u32)> = None;
        for word in text.split([' ', '<', '>', ',']) {
            let word = word.strip_prefix("Spelling=").unwrap_or(word);
            if let Some(rest) = word.strip_prefix("line:") {
                if let Some(n) = rest.split(':').next().and_then(|n| n.parse().ok()) {
                    line = n;
                }
            } else if !word.starts_with("col:") {
                let mut parts = word.rsplitn(3, ':');
                let (c, l, f) = (parts.next(), parts.next(), parts.next());
                match (c.map(str::parse::<u32>), l.map(str::parse::<u32>), f) {
                    (Some(Ok(_)), Some(Ok(l)), Some(f)) if !f.is_empty() && !f.contains('\'') => {
                        file = f.to_string();
                        line = l;
                    }
                    _ => continue,
                }
            }
            if first.is_none() {
                first = Some((file.clone(), line));
            }
        }
        if !(text.contains("CStyleCastExpr") || text.contains("CXXFunctionalCastExpr"))
            || !text.ends_with("<BitCast>")
        {
            continue;
        }
        // The cast's type, and its operand's (the child on the next line).
        let Some(to) = node_type(text) else { continue };
        let from = lines.get(at + 1).and_then(|l| node_type(l));
        let Some(to_elem) = vector_element(&to) else {
            continue;
        };
        // int4 <-> uint4 keeps the bits in Metal too.
        let from_elem = from.as_deref().and_then(vector_element);
        if let (Some(a), Some(b)) = (integer_bits(to_elem), from_elem.and_then(integer_bits))
            && a == b
        {
            continue;
        }
        let Some((f, l)) = first else { continue };
        if f.starts_with(runtime_dir) || f == LAUNCHER_FILE || f.ends_with("metal_stdlib") {
            continue;
        }
        let name = to.split('\'').nth(1).unwrap_or(&to);
        let msg = format!(
            "{f}:{l}: a cast to {name} between vector types reinterprets the bits in C++ but \
             converts the values in Metal: write {name}(x) to convert, or as_type<{name}>(x) \
             to reinterpret"
        );
        if !found.contains(&msg) {
            found.push(msg);
        }
    }
    found
}

/// The quoted type of an AST dump node, `'float4':'float __attribute__(...)'`.
fn node_type(text: &str) -> Option<String> {
    let q = text.find('\'')?;
    let rest = &text[q..];
    // Up to the last quote of the type (before ` <CastKind>` or ` lvalue`).
    let mut end = 0;
    let mut quotes = 0;
    for (i, c) in rest.char_indices() {
        if c == '\'' {
            quotes += 1;
            end = i + 1;
        } else if quotes % 2 == 0 && c != ':' {
            break;
        }
    }
    Some(rest[..end].to_string())
}

/// The element type of a vector type's desugared spelling
/// (`float __attribute__((ext_vector_type(4)))`), if not a pointer or a
/// reference.
fn vector_element(ty: &str) -> Option<&str> {
    let desugared = ty.rsplit('\'').nth(1)?;
    if desugared.trim_end().ends_with(['*', '&']) {
        return None;
    }
    let (elem, _) = desugared.split_once(" __attribute__((ext_vector_type(")?;
    Some(elem.trim())
}

/// The width of an integer element type, None for floats.
fn integer_bits(elem: &str) -> Option<u32> {
    Some(
        match elem
            .trim_start_matches("unsigned ")
            .trim_start_matches("signed ")
        {
            "char" => 8,
            "short" => 16,
            "int" => 32,
            "long" | "long long" => 64,
            _ => return None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_differ() {
        assert_ne!(hash(&[b"ab", b"c"]), hash(&[b"a", b"bc"]));
        assert_eq!(hash(&[b"x"]).len(), 32);
    }

    #[test]
    fn the_cast_trap_is_found_with_its_line() {
        let dump = "|-FunctionDecl 0x1 <k.metal:3:1, col:40> col:8 bad 'float4 (int4)'\n\
                    |   `-ReturnStmt 0x2 <line:5:22, col:37>\n\
                    |     `-CStyleCastExpr 0x3 <col:29, col:37> 'float4':'float __attribute__((ext_vector_type(4)))' <BitCast>\n\
                    |     `-CStyleCastExpr 0x4 <line:6:2, col:37> 'float4 *' <BitCast>\n\
                    |     `-CStyleCastExpr 0x5 <line:7:2, col:37> 'uint4':'unsigned int __attribute__((ext_vector_type(4)))' <BitCast>\n\
                    |       `-ImplicitCastExpr 0x6 <col:22, col:26> 'int4':'int __attribute__((ext_vector_type(4)))' <LValueToRValue> part_of_explicit_cast\n\
                    |     `-CStyleCastExpr 0x7 <line:8:2, col:37> 'half4':'_Float16 __attribute__((ext_vector_type(4)))' <BitCast>\n\
                    |       `-ImplicitCastExpr 0x8 <col:22, col:26> 'short4':'short __attribute__((ext_vector_type(4)))' <LValueToRValue> part_of_explicit_cast\n";
        let traps = vector_cast_traps(dump, "/rt");
        assert_eq!(traps.len(), 2, "{traps:?}");
        assert!(
            traps[0].starts_with("k.metal:5: a cast to float4"),
            "{}",
            traps[0]
        );
        // int4 -> uint4 keeps its bits in Metal; short4 -> half4 does not.
        assert!(
            traps[1].starts_with("k.metal:8: a cast to half4"),
            "{}",
            traps[1]
        );
    }
}
