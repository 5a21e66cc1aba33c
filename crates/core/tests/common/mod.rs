//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::PathBuf;

/// The shared test data: `$TINYLLM_SHARED_MODELS`, else `../shared/models`
/// beside the checkout.
pub fn models_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("TINYLLM_SHARED_MODELS") {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models")
}

pub fn model_path(name: &str) -> PathBuf {
    models_dir().join(name)
}

/// A fresh directory for one test's files.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tinyllm-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
