//! gfs: the cluster filesystem.
//!
//! - [`format`]: the on-disk format, one definition of every structure with `encode` and
//!   `decode` (checksums verified on every decode). `gfs/docs/format.md` documents it byte by
//!   byte; `gfs_fsck` builds on this module.
//! - [`device`]: where the filesystem lives: a file or block device, or a gnbd export used
//!   directly through `gnbd_client` (`gnbd://SERVER[:PORT]/NAME`); [`CutoffDevice`] drops
//!   writes after the Nth for crash tests.
//! - [`mkfs()`] / [`read_superblock`] / [`df`]: `mkfs.gfs` and `gfs_tool`.
//! - [`grow`]: `gfs_grow` and `gfs_jadd`, which ask a running mount (an ioctl on its mount
//!   point) to grow the filesystem ([`Fs::grow`]) or add journals ([`Fs::add_journals`]).
//!
//! ```no_run
//! use gfs::{mkfs, open_device, LockProto, MkfsOptions};
//! let dev = open_device("/tmp/disk.img").unwrap();
//! let opts = MkfsOptions {
//!     lockproto: LockProto::Nolock,
//!     locktable: "mycluster:data".into(),
//!     journals: 2,
//!     journal_blocks: None,
//!     rg_blocks: None,
//!     overwrite: false,
//! };
//! let sb = mkfs(&*dev, &opts).unwrap();
//! assert_eq!(sb.journal_count, 2);
//! ```
// Only `sys` may use unsafe code (the control ioctl of gfs_grow and gfs_jadd).
#![deny(unsafe_code)]

pub mod device;
pub mod format;
pub mod fs;
pub mod fuse;
pub mod glock;
pub mod grow;
mod mkfs;
pub mod mount;
#[allow(unsafe_code)]
mod sys;
pub mod tool;

pub use device::{open_device, CutoffDevice, Device, DeviceError, FileDevice, GnbdDevice};
pub use format::{LockProto, Superblock};
pub use fs::{Attr, CheckReport, Fs, FsError, FsStat, SetAttr};
pub use mkfs::{df, mkfs, read_block, read_superblock, uuid_string, DfInfo, MkfsError, MkfsOptions};

/// The current time as an on-disk timestamp.
pub fn now() -> format::Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format::Timestamp { sec: d.as_secs() as i64, nsec: d.subsec_nanos() }
}
