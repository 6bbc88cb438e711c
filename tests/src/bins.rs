//! Where the binaries under test live, and [`bin`] to find one of them by name.

use std::path::PathBuf;

/// Directory holding the workspace's binaries: `$GNBD_BIN_DIR` if set, else
/// `$CARGO_TARGET_DIR/debug` when cargo builds elsewhere, else `<workspace>/target/debug`.
pub fn bin_dir() -> PathBuf {
    let set = |v: &str| std::env::var_os(v).filter(|d| !d.is_empty()).map(PathBuf::from);
    if let Some(dir) = set("GNBD_BIN_DIR") {
        return dir;
    }
    if let Some(target) = set("CARGO_TARGET_DIR") {
        return target.join("debug");
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join("debug")
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
