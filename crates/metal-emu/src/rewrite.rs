//! The line-preserving rewrite of a Metal source into C++ that the shim
//! header makes valid, and the launchers of its kernels.
//!
//! Macros do most of the translation (address spaces, vector constructors;
//! see `emu/metal_stdlib`). The rewrite handles what no macro can, and keeps
//! every line where it was, so that clang's messages point into the `.metal`
//! files:
//! - the `[[...]]` attributes of kernel declarations are blanked (their
//!   meaning moves into the launcher: `[[buffer(n)]]` binds argument n);
//! - `template [[host_name("x")]] kernel void f<T>(...);` becomes a plain
//!   explicit instantiation, launched as `x`;
//! - a `threadgroup T x[N];` declaration in a function becomes a reference
//!   to the threadgroup's one instance of it;
//! - `1.0h` literals become `1.0f16`.

use std::fmt::Write;

/// The file name given to a source that has no `#line` directive.
pub(crate) const DEFAULT_FILE: &str = "source.metal";

/// The file name of the generated launchers, in clang's messages.
pub(crate) const LAUNCHER_FILE: &str = "tinyllm_emu_launchers";

/// The rewritten source and its kernels.
#[derive(Debug)]
pub(crate) struct Rewritten {
    /// The source, rewritten with its lines in place.
    pub text: String,
    pub kernels: Vec<Kernel>,
}

/// One kernel that a dispatch can name.
#[derive(Debug)]
pub(crate) struct Kernel {
    /// The name a pipeline asks for (the function's, or its `host_name`).
    pub name: String,
    /// The C++ expression of the function: `::ns::f` or `::f<float>`.
    pub callee: String,
    pub params: Vec<Param>,
    pub file: String,
    pub line: u32,
}

#[derive(Debug)]
pub(crate) struct Param {
    pub name: String,
    pub bind: Bind,
}

/// How a kernel parameter gets its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bind {
    /// `[[buffer(n)]]`: argument n.
    Buffer(u32),
    /// `[[threadgroup(n)]]`: threadgroup memory n.
    Threadgroup(u32),
    /// A built-in position, as `emu::Builtin` names it.
    Builtin(&'static str),
}

/// The kernel parameter attributes for built-in positions, and their names
/// in `emu_abi.h`.
const BUILTINS: &[(&str, &str)] = &[
    ("thread_position_in_grid", "THREAD_POSITION_IN_GRID"),
    (
        "thread_position_in_threadgroup",
        "THREAD_POSITION_IN_THREADGROUP",
    ),
    (
        "threadgroup_position_in_grid",
        "THREADGROUP_POSITION_IN_GRID",
    ),
    ("threads_per_threadgroup", "THREADS_PER_THREADGROUP"),
    ("threadgroups_per_grid", "THREADGROUPS_PER_GRID"),
    ("threads_per_grid", "THREADS_PER_GRID"),
    ("thread_index_in_threadgroup", "THREAD_INDEX_IN_THREADGROUP"),
    ("thread_index_in_simdgroup", "THREAD_INDEX_IN_SIMDGROUP"),
    (
        "simdgroup_index_in_threadgroup",
        "SIMDGROUP_INDEX_IN_THREADGROUP",
    ),
    ("threads_per_simdgroup", "THREADS_PER_SIMDGROUP"),
    ("simdgroups_per_threadgroup", "SIMDGROUPS_PER_THREADGROUP"),
    ("thread_execution_width", "THREADS_PER_SIMDGROUP"),
];

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ident,
    Number,
    Literal,
    Punct,
}

#[derive(Clone, Copy, Debug)]
struct Tok {
    kind: Kind,
    start: usize,
    end: usize,
}

/// The tokens of `src`, without comments and preprocessor directives.
fn lex(src: &str) -> Vec<Tok> {
    let b = src.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    // Only whitespace since the last newline (a `#` there starts a directive).
    let mut line_start = true;
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line_start = true;
            i += 1;
            continue;
        }
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'#' && line_start {
            // To the end of the line, with backslash continuations.
            while i < b.len() && b[i] != b'\n' {
                if b[i] == b'\\' && i + 1 < b.len() && b[i + 1] == b'\n' {
                    i += 2;
                } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    i = skip_block_comment(b, i);
                } else {
                    i += 1;
                }
            }
            continue;
        }
        line_start = false;
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i = skip_block_comment(b, i);
            continue;
        }
        let start = i;
        let kind = if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            Kind::Ident
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            while i < b.len() {
                let d = b[i];
                let sign =
                    (d == b'+' || d == b'-') && matches!(b[i - 1], b'e' | b'E' | b'p' | b'P');
                if !(sign || d.is_ascii_alphanumeric() || d == b'.' || d == b'_' || d == b'\'') {
                    break;
                }
                i += 1;
            }
            Kind::Number
        } else if c == b'"' || c == b'\'' {
            i += 1;
            while i < b.len() && b[i] != c && b[i] != b'\n' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i = (i + 1).min(b.len());
            Kind::Literal
        } else {
            // One character (all of its UTF-8 bytes).
            i += src[i..].chars().next().map_or(1, char::len_utf8);
            Kind::Punct
        };
        toks.push(Tok {
            kind,
            start,
            end: i,
        });
    }
    toks
}

fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    i += 2;
    while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
        i += 1;
    }
    (i + 2).min(b.len())
}

/// The file and line of byte `pos`, following `#line` directives.
pub(crate) fn locate(src: &str, pos: usize) -> (String, u32) {
    let mut file = DEFAULT_FILE.to_string();
    let mut line = 1u32;
    let mut at = 0;
    for text in src.split_inclusive('\n') {
        if at + text.len() > pos {
            break;
        }
        at += text.len();
        if let Some((n, f)) = line_directive(text) {
            line = n;
            if let Some(f) = f {
                file = f;
            }
        } else {
            line += 1;
        }
    }
    (file, line)
}

/// `#line N "file"` (or `# N "file"`): the number of the next line, and the
/// file if named.
fn line_directive(text: &str) -> Option<(u32, Option<String>)> {
    let rest = text.trim_start().strip_prefix('#')?.trim_start();
    let rest = rest.strip_prefix("line").unwrap_or(rest).trim_start();
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n = rest[..digits].parse().ok()?;
    let tail = rest[digits..].trim();
    let file = tail
        .strip_prefix('"')
        .and_then(|t| t.split_once('"'))
        .map(|(f, _)| f.to_string());
    Some((n, file))
}

// ---------------------------------------------------------------------------
// The rewrite
// ---------------------------------------------------------------------------

struct Rewriter<'a> {
    src: &'a str,
    toks: Vec<Tok>,
    /// (start, end, replacement), not overlapping.
    edits: Vec<(usize, usize, String)>,
    kernels: Vec<Kernel>,
}

impl<'a> Rewriter<'a> {
    fn text(&self, i: usize) -> &'a str {
        self.toks.get(i).map_or("", |t| &self.src[t.start..t.end])
    }

    fn is(&self, i: usize, s: &str) -> bool {
        self.text(i) == s
    }

    fn error(&self, i: usize, msg: &str) -> String {
        let pos = self.toks.get(i).map_or(self.src.len(), |t| t.start);
        let (file, line) = locate(self.src, pos);
        format!("{file}:{line}: {msg}")
    }

    /// The token after the one that closes the bracket opened at `i`.
    fn close(&self, i: usize) -> Option<usize> {
        let (open, shut) = match self.text(i) {
            "(" => ("(", ")"),
            "[" => ("[", "]"),
            "{" => ("{", "}"),
            "<" => ("<", ">"),
            _ => return None,
        };
        let mut depth = 0i32;
        let mut j = i;
        while j < self.toks.len() {
            let t = self.text(j);
            if t == open {
                depth += 1;
            } else if t == shut {
                depth -= 1;
                if depth == 0 {
                    return Some(j + 1);
                }
            } else if open == "<" && matches!(t, "(" | "[" | "{") {
                j = self.close(j)? - 1;
            }
            j += 1;
        }
        None
    }

    /// An attribute group `[[ ... ]]` starting at `i`: the index after it.
    fn attribute_at(&self, i: usize) -> Option<usize> {
        if self.is(i, "[") && self.is(i + 1, "[") {
            let end = self.close(i)?;
            // `[[x]]`: the outer bracket closes right after the inner one.
            if self.is(end - 2, "]") {
                return Some(end);
            }
        }
        None
    }

    /// Blanks tokens [from, to) (spaces, newlines kept).
    fn blank(&mut self, from: usize, to: usize) {
        let (start, end) = (self.toks[from].start, self.toks[to - 1].end);
        let text: String = self.src[start..end]
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        self.edits.push((start, end, text));
    }

    /// Replaces tokens [from, to) with `text` (on the first line; the
    /// span's newlines follow it).
    fn replace(&mut self, from: usize, to: usize, text: String) {
        let (start, end) = (self.toks[from].start, self.toks[to - 1].end);
        let newlines = self.src[start..end].matches('\n').count();
        self.edits.push((start, end, text + &"\n".repeat(newlines)));
    }

    fn run(&mut self) -> Result<(), String> {
        let mut namespaces: Vec<(String, i32)> = Vec::new();
        let mut depth = 0i32;
        let mut i = 0;
        while i < self.toks.len() {
            let t = self.text(i);
            match t {
                "{" => depth += 1,
                "}" => {
                    depth -= 1;
                    while namespaces.last().is_some_and(|n| n.1 > depth) {
                        namespaces.pop();
                    }
                }
                "namespace" => {
                    // namespace a::b { ... }
                    let mut j = i + 1;
                    let mut names = Vec::new();
                    while self.toks.get(j).is_some_and(|t| t.kind == Kind::Ident) || self.is(j, ":")
                    {
                        if self.toks[j].kind == Kind::Ident {
                            names.push(self.text(j).to_string());
                        }
                        j += 1;
                    }
                    if self.is(j, "{") {
                        let name = names.join("::");
                        namespaces.push((name, depth + 1));
                        depth += 1;
                        i = j + 1;
                        continue;
                    }
                }
                "kernel" => {
                    i = self.kernel(i, i + 1, &namespaces)?;
                    continue;
                }
                "[" if self.is(i + 1, "[") && self.is(i + 2, "kernel") && self.is(i + 3, "]") => {
                    i = self.kernel(i, i + 5, &namespaces)?;
                    continue;
                }
                "threadgroup" if depth > 0 => {
                    let prev = if i == 0 { "" } else { self.text(i - 1) };
                    let statement =
                        matches!(prev, "{" | "}" | ";" | ":") && !(i >= 2 && self.is(i - 2, ":"));
                    if statement && let Some(next) = self.threadgroup_decl(i)? {
                        i = next;
                        continue;
                    }
                }
                _ => {
                    if self.toks[i].kind == Kind::Number {
                        self.half_literal(i);
                    }
                }
            }
            i += 1;
        }
        Ok(())
    }

    /// `1.0h` -> `1.0f16`.
    fn half_literal(&mut self, i: usize) {
        let t = self.text(i);
        let lower = t.to_ascii_lowercase();
        if lower.starts_with("0x") || !lower.ends_with('h') {
            return;
        }
        let num = &t[..t.len() - 1];
        if !num
            .bytes()
            .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'))
        {
            return;
        }
        let text = if num.contains(['.', 'e', 'E']) {
            format!("{num}f16")
        } else {
            format!("{num}.0f16")
        };
        self.replace(i, i + 1, text);
    }

    /// The declaration of a kernel whose `kernel` keyword (or `[[kernel]]`)
    /// is at `at`, its return type at `ret`. Returns the token to go on from.
    fn kernel(
        &mut self,
        at: usize,
        mut ret: usize,
        namespaces: &[(String, i32)],
    ) -> Result<usize, String> {
        // Attributes before the keyword, and `template` or `template <...>`.
        let mut start = at;
        let mut host_name = None;
        while start >= 2 && self.is(start - 1, "]") && self.is(start - 2, "]") {
            let mut j = start - 2;
            let mut depth = 0;
            // Back to the matching `[[`.
            loop {
                match self.text(j) {
                    "]" => depth += 1,
                    "[" => depth -= 1,
                    _ => {}
                }
                if depth == 0 || j == 0 {
                    break;
                }
                j -= 1;
            }
            if !(self.is(j, "[") && j > 0 && self.is(j - 1, "[")) {
                break;
            }
            let group = j - 1;
            if let Some(h) = self.host_name(group) {
                host_name = Some(h);
            }
            start = group;
        }
        let explicit = start > 0 && self.is(start - 1, "template");
        let generic = !explicit && start > 0 && self.is(start - 1, ">");
        if explicit {
            start -= 1;
        }
        while let Some(next) = self.attribute_at(ret) {
            ret = next;
        }
        if !self.is(ret, "void") {
            return Err(self.error(ret, "a kernel function returns void"));
        }
        let name_at = ret + 1;
        if self.toks.get(name_at).is_none_or(|t| t.kind != Kind::Ident) {
            return Err(self.error(name_at, "expected the kernel's name"));
        }
        let function = self.text(name_at).to_string();
        let mut open = name_at + 1;
        let mut template_args = String::new();
        if self.is(open, "<") {
            let end = self
                .close(open)
                .ok_or_else(|| self.error(open, "unbalanced template arguments"))?;
            let (s, e) = (self.toks[open].start, self.toks[end - 1].end);
            template_args = self.src[s..e]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            open = end;
        }
        if !self.is(open, "(") {
            return Err(self.error(open, "expected the kernel's parameters"));
        }
        let close = self
            .close(open)
            .ok_or_else(|| self.error(open, "unbalanced parentheses"))?;
        let mut after = close;
        while let Some(next) = self.attribute_at(after) {
            after = next;
        }
        let body = self.is(after, "{");
        if !body && !self.is(after, ";") {
            return Err(self.error(after, "expected `{` or `;` after the kernel's parameters"));
        }

        // The parameters and their attributes.
        let mut params = Vec::new();
        let mut j = open + 1;
        while j < close - 1 {
            let mut end = j;
            while end < close - 1 && !self.is(end, ",") {
                end = match self.text(end) {
                    "(" | "[" | "<" | "{" => self.close(end).unwrap_or(close - 1),
                    _ => end + 1,
                };
            }
            params.push(self.param(&function, j, end)?);
            j = end + 1;
        }

        // Blank every attribute of the declaration.
        let mut k = start;
        while k < after {
            if let Some(next) = self.attribute_at(k) {
                self.blank(k, next);
                k = next;
            } else {
                k += 1;
            }
        }

        let (file, line) = locate(self.src, self.toks[name_at].start);
        let launchable = if explicit {
            if host_name.is_none() {
                return Err(self.error(
                    name_at,
                    "an instantiated kernel needs [[host_name(\"...\")]] to be dispatched",
                ));
            }
            true
        } else {
            !generic && body
        };
        if launchable {
            let name = host_name.unwrap_or_else(|| function.clone());
            if self.kernels.iter().any(|k| k.name == name) {
                return Err(self.error(name_at, &format!("a second kernel named `{name}`")));
            }
            let mut callee = String::new();
            for (ns, _) in namespaces.iter().filter(|n| !n.0.is_empty()) {
                write!(callee, "::{ns}").unwrap();
            }
            write!(callee, "::{function}{template_args}").unwrap();
            self.kernels.push(Kernel {
                name,
                callee,
                params,
                file,
                line,
            });
        }
        // The main loop goes on at the body's `{` (or the `;`).
        Ok(after)
    }

    /// `[[host_name("x")]]` at `group`: x.
    fn host_name(&self, group: usize) -> Option<String> {
        if self.is(group + 2, "host_name") && self.is(group + 3, "(") {
            let lit = self.text(group + 4);
            return lit
                .strip_prefix('"')
                .and_then(|l| l.strip_suffix('"'))
                .map(str::to_string);
        }
        None
    }

    /// The kernel parameter in tokens [from, to).
    fn param(&self, kernel: &str, from: usize, to: usize) -> Result<Param, String> {
        let Some(attr) = (from..to).find(|&k| self.attribute_at(k).is_some()) else {
            return Err(self.error(
                from,
                &format!(
                    "kernel `{kernel}`: a parameter without an attribute ([[buffer(n)]], \
                     [[threadgroup(n)]] or a built-in position such as \
                     [[thread_position_in_grid]])"
                ),
            ));
        };
        let name = (from..attr)
            .rev()
            .find(|&k| self.toks[k].kind == Kind::Ident)
            .map_or("", |k| self.text(k))
            .to_string();
        // The first attribute names the binding.
        let what = self.text(attr + 2);
        let index = || -> Result<u32, String> {
            if self.is(attr + 3, "(")
                && self.is(attr + 5, ")")
                && let Ok(n) = self.text(attr + 4).trim_end_matches(['u', 'U']).parse()
            {
                return Ok(n);
            }
            Err(self.error(
                attr,
                &format!("kernel `{kernel}`: parameter `{name}`: expected [[{what}(n)]]"),
            ))
        };
        let bind = match what {
            "buffer" => Bind::Buffer(index()?),
            "threadgroup" => Bind::Threadgroup(index()?),
            _ => match BUILTINS.iter().find(|b| b.0 == what) {
                Some(b) => Bind::Builtin(b.1),
                None => {
                    return Err(self.error(
                        attr,
                        &format!(
                            "kernel `{kernel}`: parameter `{name}`: the emulator does not know \
                             the attribute [[{what}]]"
                        ),
                    ));
                }
            },
        };
        if let Bind::Buffer(n) = bind
            && n > 30
        {
            return Err(self.error(
                attr,
                &format!("kernel `{kernel}`: [[buffer({n})]]: Metal has buffers 0 to 30"),
            ));
        }
        Ok(Param { name, bind })
    }

    /// A `threadgroup` declaration statement at `at` in a function: rewritten
    /// if it declares variables (not pointers or references). Returns the
    /// token after it, if rewritten.
    fn threadgroup_decl(&mut self, at: usize) -> Result<Option<usize>, String> {
        let mut end = at + 1;
        while end < self.toks.len() && !self.is(end, ";") {
            match self.text(end) {
                "*" | "&" => return Ok(None),
                "(" | "{" => return Ok(None),
                "=" => {
                    return Err(self.error(end, "a threadgroup variable cannot be initialised"));
                }
                "[" => end = self.close(end).unwrap_or(end + 1),
                _ => end += 1,
            }
        }
        // Declarators, split at commas outside brackets.
        let mut decls = Vec::new();
        let mut from = at + 1;
        let mut k = at + 1;
        while k <= end {
            if k == end || self.is(k, ",") {
                decls.push((from, k));
                from = k + 1;
                k += 1;
            } else if self.is(k, "[") || self.is(k, "<") {
                k = self.close(k).unwrap_or(k + 1);
            } else {
                k += 1;
            }
        }
        let mut ty = String::new();
        let mut text = String::new();
        for (n, &(a, b)) in decls.iter().enumerate() {
            // The name: the last identifier before the first `[`.
            let dims = (a..b).find(|&k| self.is(k, "[")).unwrap_or(b);
            let Some(name) = (a..dims).rev().find(|&k| self.toks[k].kind == Kind::Ident) else {
                return Err(self.error(a, "expected a threadgroup variable's name"));
            };
            if n == 0 {
                if name == a {
                    return Err(self.error(a, "expected a threadgroup variable's type"));
                }
                ty = self.span(a, name);
            }
            let dims = if dims < b {
                self.span(dims, b)
            } else {
                String::new()
            };
            write!(
                text,
                "auto &{} = *::emu::tg_var<{ty}{dims}>([] {{ static char k; return (const void *)&k; }}()); ",
                self.text(name)
            )
            .unwrap();
        }
        self.replace(at, end + 1, text.trim_end().to_string());
        Ok(Some(end + 1))
    }

    /// The source of tokens [from, to), on one line.
    fn span(&self, from: usize, to: usize) -> String {
        let (s, e) = (self.toks[from].start, self.toks[to - 1].end);
        self.src[s..e]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Rewrites a Metal source; errors name the file and line.
pub(crate) fn rewrite(src: &str) -> Result<Rewritten, String> {
    let mut r = Rewriter {
        src,
        toks: lex(src),
        edits: Vec::new(),
        kernels: Vec::new(),
    };
    r.run()?;
    r.edits.sort_by_key(|e| e.0);
    let mut text = String::with_capacity(src.len() + 1024);
    let mut at = 0;
    for (start, end, with) in &r.edits {
        if *start < at {
            continue;
        }
        text.push_str(&src[at..*start]);
        text.push_str(with);
        at = *end;
    }
    text.push_str(&src[at..]);
    Ok(Rewritten {
        text,
        kernels: r.kernels,
    })
}

/// The C++ that launches each kernel: its parameters' bindings, an entry
/// point, and the table `tinyllm_emu_kernels` that Rust reads.
pub(crate) fn launchers(kernels: &[Kernel]) -> String {
    let mut s = format!("\n#line 1 \"{LAUNCHER_FILE}\"\nnamespace tinyllm_emu_gen {{\n");
    for (i, k) in kernels.iter().enumerate() {
        let binds: Vec<String> = k
            .params
            .iter()
            .map(|p| match p.bind {
                Bind::Buffer(n) => format!("{{::emu::BIND_BUFFER, {n}}}"),
                Bind::Threadgroup(n) => format!("{{::emu::BIND_THREADGROUP, {n}}}"),
                Bind::Builtin(b) => format!("{{::emu::BIND_BUILTIN, ::emu::{b}}}"),
            })
            .collect();
        let names: Vec<String> = k.params.iter().map(|p| format!("\"{}\"", p.name)).collect();
        writeln!(
            s,
            "static const ::emu::Bind b{i}[] = {{{}{}{{0, 0}}}};",
            binds.join(", "),
            if binds.is_empty() { "" } else { ", " }
        )
        .unwrap();
        writeln!(
            s,
            "static const char *const n{i}[] = {{{}{}nullptr}};",
            names.join(", "),
            if names.is_empty() { "" } else { ", " }
        )
        .unwrap();
        writeln!(
            s,
            "static_assert(::emu::arity(&{c}) == {n}, \"kernel {name}: the emulator read {n} \
             parameters\");",
            c = k.callee,
            n = k.params.len(),
            name = k.name
        )
        .unwrap();
        writeln!(
            s,
            "static void e{i}() {{ ::emu::invoke(&{}, b{i}); }}",
            k.callee
        )
        .unwrap();
    }
    s.push_str("}\n");
    s.push_str(
        "extern \"C\" __attribute__((visibility(\"default\"))) const ::emu::KernelInfo \
         tinyllm_emu_kernels[] = {\n",
    );
    for (i, k) in kernels.iter().enumerate() {
        writeln!(
            s,
            "    {{\"{name}\", &tinyllm_emu_gen::e{i}, tinyllm_emu_gen::b{i}, \
             ::emu::sizes_of(&{c}), {n}, {line}, \"{file}\", tinyllm_emu_gen::n{i}}},",
            name = k.name,
            c = k.callee,
            n = k.params.len(),
            line = k.line,
            file = k.file.replace('\\', "\\\\").replace('"', "\\\""),
        )
        .unwrap();
    }
    s.push_str("    {nullptr, nullptr, nullptr, nullptr, 0, 0, nullptr, nullptr},\n};\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_kept_and_kernels_found() {
        let src = "#line 1 \"a.metal\"\n#include <metal_stdlib>\nusing namespace metal;\n\
                   kernel void f(device float *x [[buffer(2)]],\n    uint i [[thread_position_in_grid]]) {\n\
                   \x20   threadgroup float t[32], u[2];\n    x[i] = 1.0h;\n}\n\
                   template <typename T> kernel void g(device T *x [[buffer(0)]], threadgroup T *s [[threadgroup(0)]]) {}\n\
                   template [[host_name(\"g_f\")]] kernel void g<float>(device float *x [[buffer(0)]], threadgroup float *s [[threadgroup(0)]]);\n";
        let r = rewrite(src).unwrap();
        assert_eq!(r.text.lines().count(), src.lines().count());
        assert!(!r.text.contains("[["), "{}", r.text);
        assert!(
            r.text.contains("auto &t = *::emu::tg_var<float[32]>"),
            "{}",
            r.text
        );
        assert!(
            r.text.contains("auto &u = *::emu::tg_var<float[2]>"),
            "{}",
            r.text
        );
        assert!(r.text.contains("1.0f16"));
        assert_eq!(r.kernels.len(), 2);
        let f = &r.kernels[0];
        assert_eq!(
            (f.name.as_str(), f.file.as_str(), f.line),
            ("f", "a.metal", 3)
        );
        assert_eq!(f.params[0].bind, Bind::Buffer(2));
        assert_eq!(f.params[1].bind, Bind::Builtin("THREAD_POSITION_IN_GRID"));
        let g = &r.kernels[1];
        assert_eq!((g.name.as_str(), g.callee.as_str()), ("g_f", "::g<float>"));
        assert_eq!(g.params[1].bind, Bind::Threadgroup(0));
    }

    #[test]
    fn pointers_to_threadgroup_memory_stay() {
        let src = "void f() {\n threadgroup float *p = 0;\n}\n";
        assert_eq!(rewrite(src).unwrap().text, src);
    }

    #[test]
    fn errors_name_the_line() {
        let src = "#line 10 \"x.metal\"\nkernel void f(device float *x) {}\n";
        let e = rewrite(src).unwrap_err();
        assert!(e.starts_with("x.metal:10:"), "{e}");
    }
}
