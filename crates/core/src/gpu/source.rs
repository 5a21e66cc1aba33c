//! The Metal Shading Language sources of the kernels, embedded in the crate
//! and compiled at run time.
//!
//! Each `.metal` file of `kernels/metal/` is valid on its own (it includes
//! `common.h`, as `xcrun metal -I kernels/metal` compiles it). Metal's
//! run-time compiler takes one string and resolves no local includes, so
//! [`library`] joins the header and the files into one translation unit,
//! with `#line` directives that keep the compiler's messages pointing into
//! the right file and line.

/// The shared header: block layouts and argument structs, mirrored by
/// `gpu::layout` on the Rust side.
pub const HEADER: (&str, &str) = (
    "common.h",
    include_str!("../../../../kernels/metal/common.h"),
);

/// The kernel files, one per family of operations.
pub const FILES: &[(&str, &str)] = &[
    (
        "matvec.metal",
        include_str!("../../../../kernels/metal/matvec.metal"),
    ),
    (
        "norm.metal",
        include_str!("../../../../kernels/metal/norm.metal"),
    ),
    (
        "rope.metal",
        include_str!("../../../../kernels/metal/rope.metal"),
    ),
    (
        "elementwise.metal",
        include_str!("../../../../kernels/metal/elementwise.metal"),
    ),
    (
        "attention.metal",
        include_str!("../../../../kernels/metal/attention.metal"),
    ),
];

/// The one translation unit of every kernel: the header once, then each
/// file with its `#include "common.h"` blanked (lines kept).
pub fn library() -> String {
    let mut out = String::new();
    for (name, text) in std::iter::once(&HEADER).chain(FILES) {
        out.push_str(&format!("#line 1 \"{name}\"\n"));
        for line in text.lines() {
            if line.trim() != "#include \"common.h\"" {
                out.push_str(line);
            }
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_includes_the_header_and_the_library_keeps_lines() {
        let lib = library();
        for (name, text) in FILES {
            assert!(text.contains("#include \"common.h\""), "{name}");
            let at = lib.find(&format!("#line 1 \"{name}\"\n")).unwrap();
            let body = &lib[at..].split_once('\n').unwrap().1;
            assert_eq!(
                body.lines().take(text.lines().count()).count(),
                text.lines().count()
            );
        }
        assert_eq!(lib.matches("#pragma once").count(), 1);
    }
}
