//! Compiles the kernels of `kernels/metal/` in the emulator, with the
//! vector-cast lint, and lists them:
//! `cargo run -p tinyllm-metal-emu --example compile_library`.
use tinyllm_core::gpu::{Gpu, source};
use tinyllm_metal_emu::Emulator;

fn main() {
    let gpu = Emulator::new();
    let start = std::time::Instant::now();
    match gpu.compile(&source::library()) {
        Ok(lib) => {
            println!(
                "{} compiled the library in {:?}",
                gpu.name(),
                start.elapsed()
            );
            println!("kernels: {}", lib.kernels().join(", "));
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
