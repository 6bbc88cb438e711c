//! Where the binaries under test live, and [`bin`] to find one of them by name.

use std::path::PathBuf;

/// Directory holding `gnbd_serv` and `gnbd_export`: `$GNBD_BIN_DIR` if set, else
/// `<workspace>/target/debug`.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("GNBD_BIN_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join("debug"),
    }
}

/// Path of the workspace binary `name` in [`bin_dir`]; panics with a hint when it has not
/// been built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "binary {} not found; build the binaries first with `cargo build --workspace --bins` \
         (or point GNBD_BIN_DIR at the directory holding them)",
        path.display()
    );
    path
}

/// Path of the `gnbd_serv` binary; panics with a hint when it has not been built.
pub fn serv_bin() -> PathBuf {
    bin("gnbd_serv")
}

/// Path of the `fence_gnbd` agent; panics with a hint when it has not been built.
pub fn fence_gnbd_bin() -> PathBuf {
    bin("fence_gnbd")
}

/// Path of the `gnbd_export` binary; panics with a hint when it has not been built.
pub fn export_bin() -> PathBuf {
    bin("gnbd_export")
}
