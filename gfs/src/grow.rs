//! `gfs_grow` and `gfs_jadd`: how the tools reach the mount process, and the tools' logic.
//!
//! The tools talk to `mount.gfs` in band, through the mounted filesystem itself: a
//! restricted FUSE ioctl on the mount point's root directory. The command [`GFS_IOC_CTL`]
//! encodes a fixed size ([`CTL_SIZE`] bytes, in and out), so the kernel copies the request to
//! the mount process and the reply back without any help. The mount process runs the request
//! against its engine ([`crate::Fs::grow`], [`crate::Fs::add_journals`]) under the
//! filesystem's lock, as any other operation, and answers with a status and a message.
//!
//! The request and the reply are plain bytes (decoded here, sans-IO; any local user able to
//! open the mount point can send them, so [`CtlRequest::decode`] is fuzzed). Layout,
//! little-endian:
//!
//! | off | size | request | reply |
//! |---|---|---|---|
//! | 0 | 4 | magic `GFSQ` | magic `GFSR` |
//! | 4 | 2 | version 1 | status: 0, or an errno |
//! | 6 | 2 | op: 1 grow, 2 jadd | 0 |
//! | 8 | 4 | flags: 1 = test only | message length |
//! | 12 | 4 | jadd: journals to add | message (UTF-8) from byte 16 |
//! | 16 | 4 | grow: blocks per resource group (0: the filesystem's) | |
//! | 20 | 4 | jadd: blocks per journal (0: as journal 0) | |
//!
//! Every other request byte is zero.

use crate::fs::{Fs, GrowError};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Bytes of a request and of a reply (the size encoded in the ioctl command).
pub const CTL_SIZE: usize = 8192;
/// `_IOWR('g', 1, [u8; CTL_SIZE])`: the control ioctl of a gfs mount's root directory.
pub const GFS_IOC_CTL: u32 = (3 << 30) | ((CTL_SIZE as u32) << 16) | ((b'g' as u32) << 8) | 1;

const REQ_MAGIC: &[u8; 4] = b"GFSQ";
const REP_MAGIC: &[u8; 4] = b"GFSR";
const VERSION: u16 = 1;
const OP_GROW: u16 = 1;
const OP_JADD: u16 = 2;
const OP_GLOCKS: u16 = 3;
const FLAG_TEST: u32 = 1;
const MSG_OFF: usize = 16;

/// What a tool asks the mount process to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtlRequest {
    /// `gfs_grow`: use the space past the filesystem's end.
    Grow { rg_blocks: Option<u32>, test: bool },
    /// `gfs_jadd`: add `count` journals.
    Jadd { count: u32, journal_blocks: Option<u32>, test: bool },
    /// `gfs_tool glocks`: this node's glocks as the mount process holds them.
    Glocks,
}

/// The mount process's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlReply {
    /// 0, or the errno of the failure.
    pub status: i32,
    /// What was done, or why not.
    pub message: String,
}

/// Why bytes are not a control request or reply.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CtlError {
    #[error("control message is {0} bytes, expected {CTL_SIZE}")]
    Size(usize),
    #[error("control message has a bad magic number")]
    Magic,
    #[error("control request version {0} is not understood (this mount speaks {VERSION})")]
    Version(u16),
    #[error("unknown control operation {0}")]
    Op(u16),
    #[error("invalid control message: {0}")]
    Invalid(&'static str),
}

fn get_u16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn get_u32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

impl CtlRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; CTL_SIZE];
        b[0..4].copy_from_slice(REQ_MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        let (op, test, count, rg, jb) = match *self {
            CtlRequest::Grow { rg_blocks, test } => (OP_GROW, test, 0, rg_blocks.unwrap_or(0), 0),
            CtlRequest::Jadd { count, journal_blocks, test } => (OP_JADD, test, count, 0, journal_blocks.unwrap_or(0)),
            CtlRequest::Glocks => (OP_GLOCKS, false, 0, 0, 0),
        };
        b[6..8].copy_from_slice(&op.to_le_bytes());
        b[8..12].copy_from_slice(&(if test { FLAG_TEST } else { 0 }).to_le_bytes());
        b[12..16].copy_from_slice(&count.to_le_bytes());
        b[16..20].copy_from_slice(&rg.to_le_bytes());
        b[20..24].copy_from_slice(&jb.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, CtlError> {
        if b.len() != CTL_SIZE {
            return Err(CtlError::Size(b.len()));
        }
        if &b[0..4] != REQ_MAGIC {
            return Err(CtlError::Magic);
        }
        let version = get_u16(b, 4);
        if version != VERSION {
            return Err(CtlError::Version(version));
        }
        let flags = get_u32(b, 8);
        if flags & !FLAG_TEST != 0 {
            return Err(CtlError::Invalid("unknown flags"));
        }
        if b[24..].iter().any(|&x| x != 0) {
            return Err(CtlError::Invalid("reserved bytes not zero"));
        }
        let test = flags & FLAG_TEST != 0;
        let (count, rg, jb) = (get_u32(b, 12), get_u32(b, 16), get_u32(b, 20));
        let opt = |v: u32| (v != 0).then_some(v);
        match get_u16(b, 6) {
            OP_GROW if count == 0 && jb == 0 => Ok(CtlRequest::Grow { rg_blocks: opt(rg), test }),
            OP_JADD if rg == 0 => Ok(CtlRequest::Jadd { count, journal_blocks: opt(jb), test }),
            OP_GLOCKS if !test && count == 0 && rg == 0 && jb == 0 => Ok(CtlRequest::Glocks),
            OP_GROW | OP_JADD | OP_GLOCKS => Err(CtlError::Invalid("field not used by the operation is set")),
            op => Err(CtlError::Op(op)),
        }
    }
}

impl CtlReply {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; CTL_SIZE];
        b[0..4].copy_from_slice(REP_MAGIC);
        b[4..8].copy_from_slice(&self.status.to_le_bytes());
        // A message too long is cut at a character boundary.
        let mut n = self.message.len().min(CTL_SIZE - MSG_OFF);
        while !self.message.is_char_boundary(n) {
            n -= 1;
        }
        b[8..12].copy_from_slice(&(n as u32).to_le_bytes());
        b[MSG_OFF..MSG_OFF + n].copy_from_slice(&self.message.as_bytes()[..n]);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, CtlError> {
        if b.len() != CTL_SIZE {
            return Err(CtlError::Size(b.len()));
        }
        if &b[0..4] != REP_MAGIC {
            return Err(CtlError::Magic);
        }
        let status = i32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
        let n = get_u32(b, 8) as usize;
        if n > CTL_SIZE - MSG_OFF {
            return Err(CtlError::Invalid("message length"));
        }
        let message = String::from_utf8(b[MSG_OFF..MSG_OFF + n].to_vec())
            .map_err(|_| CtlError::Invalid("message is not UTF-8"))?;
        Ok(CtlReply { status, message })
    }
}

/// The errno a failed grow or jadd answers with.
fn errno_of(e: &GrowError) -> i32 {
    match e {
        GrowError::NotLarger { .. } | GrowError::TooLittle { .. } | GrowError::NoRoom { .. } => libc::ENOSPC,
        GrowError::RgSize { .. }
        | GrowError::NoJournals
        | GrowError::TooManyJournals { .. }
        | GrowError::JournalSize { .. } => libc::EINVAL,
        GrowError::Fs(f) => f.errno(),
    }
}

/// The mount process's side: runs the request in `input` (from a caller with user id
/// `uid`) against the mounted engine and returns the reply bytes.
pub fn serve(fs: &mut Fs, uid: u32, input: &[u8]) -> Vec<u8> {
    let reply = match CtlRequest::decode(input) {
        Err(e) => CtlReply { status: libc::EINVAL, message: e.to_string() },
        Ok(_) if uid != 0 => {
            CtlReply { status: libc::EPERM, message: "only root may grow a filesystem or add journals".into() }
        }
        Ok(req) => {
            let r = match req {
                CtlRequest::Grow { rg_blocks, test } => fs.grow(rg_blocks, test).map(|r| r.to_string()),
                CtlRequest::Jadd { count, journal_blocks, test } => {
                    fs.add_journals(count, journal_blocks.map(u64::from), test).map(|r| r.to_string())
                }
                // Answered by the front end, which has the glocks (see fuse.rs).
                CtlRequest::Glocks => Ok("lock_nolock: no glocks\n".to_string()),
            };
            match r {
                Ok(message) => CtlReply { status: 0, message },
                Err(e) => {
                    tracing::warn!(request = ?req, error = %e, "control request refused");
                    CtlReply { status: errno_of(&e), message: e.to_string() }
                }
            }
        }
    };
    reply.encode()
}

/// Why a tool could not get its request done.
#[derive(Debug, Error)]
pub enum ToolError {
    #[error("{path}: {source}")]
    Path { path: PathBuf, source: std::io::Error },
    #[error("{0}: not the mount point of a mounted gfs filesystem (see /proc/self/mounts)")]
    NotGfs(PathBuf),
    #[error(
        "{0}: the mount does not answer gfs control requests (not a gfs mount, or a mount.gfs too old for \
         online changes)"
    )]
    NoControl(PathBuf),
    #[error("{path}: control ioctl failed: {source}")]
    Ioctl { path: PathBuf, source: std::io::Error },
    #[error("{path}: bad reply from the mount process: {source}")]
    Reply { path: PathBuf, source: CtlError },
    /// The mount process refused or failed (its message says why).
    #[error("{message}")]
    Refused { status: i32, message: String },
}

/// `main` of gfs_grow and gfs_jadd: sends `req`, prints the answer, exits by the toolkit's
/// convention (`NAME: MOUNTPOINT: why` and 1 on failure).
pub fn run_cli(name: &str, mountpoint: &Path, req: &CtlRequest) -> std::process::ExitCode {
    let r = request(mountpoint, req).map(|msg| println!("{msg}"));
    daemon::finish(name, anyhow::Context::with_context(r, || mountpoint.display().to_string()))
}

/// The tools' side: sends `req` to the gfs mount at `mountpoint` and returns the message of
/// a successful reply.
pub fn request(mountpoint: &Path, req: &CtlRequest) -> Result<String, ToolError> {
    let path = std::fs::canonicalize(mountpoint)
        .map_err(|source| ToolError::Path { path: mountpoint.to_path_buf(), source })?;
    match crate::tool::mount_entry(&path).map(|(_, t)| t) {
        // mount.gfs mounts through mount(2) itself, where the type is plain `fuse`; another
        // FUSE filesystem does not know the ioctl (and a reply without our magic is refused).
        Some(t) if t == "fuse.gfs" || t == "fuse" => {}
        _ => return Err(ToolError::NotGfs(mountpoint.to_path_buf())),
    }
    let dir = std::fs::File::open(&path).map_err(|source| ToolError::Path { path: path.clone(), source })?;
    let mut buf = req.encode();
    if let Err(source) = crate::sys::ioctl_rw(&dir, GFS_IOC_CTL, &mut buf) {
        return Err(match source.raw_os_error() {
            Some(libc::ENOTTY) | Some(libc::ENOSYS) | Some(libc::EINVAL) => ToolError::NoControl(path),
            _ => ToolError::Ioctl { path, source },
        });
    }
    let reply = CtlReply::decode(&buf).map_err(|source| ToolError::Reply { path: path.clone(), source })?;
    if reply.status != 0 {
        return Err(ToolError::Refused { status: reply.status, message: reply.message });
    }
    Ok(reply.message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_request() -> impl Strategy<Value = CtlRequest> {
        prop_oneof![
            (proptest::option::of(1u32..), any::<bool>())
                .prop_map(|(rg_blocks, test)| CtlRequest::Grow { rg_blocks, test }),
            (any::<u32>(), proptest::option::of(1u32..), any::<bool>())
                .prop_map(|(count, journal_blocks, test)| CtlRequest::Jadd { count, journal_blocks, test }),
            Just(CtlRequest::Glocks),
        ]
    }

    proptest! {
        #[test]
        fn request_round_trips(r in any_request()) {
            prop_assert_eq!(CtlRequest::decode(&r.encode()), Ok(r));
        }

        #[test]
        fn reply_round_trips(status in any::<i32>(), message in "\\PC{0,300}") {
            let r = CtlReply { status, message };
            prop_assert_eq!(CtlReply::decode(&r.encode()), Ok(r));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), at in 0usize..CTL_SIZE) {
            let mut b = vec![0u8; CTL_SIZE];
            let n = bytes.len().min(CTL_SIZE - at);
            b[at..at + n].copy_from_slice(&bytes[..n]);
            let _ = CtlRequest::decode(&b);
            let _ = CtlReply::decode(&b);
            let _ = CtlRequest::decode(&bytes);
        }

        #[test]
        fn a_flipped_byte_of_a_request_is_refused_or_still_a_request(r in any_request(), at in 0usize..CTL_SIZE, x in 1u8..) {
            let mut b = r.encode();
            b[at] ^= x;
            if let Ok(q) = CtlRequest::decode(&b) {
                // Only the operation and its fields may change.
                prop_assert!((6..24).contains(&at), "byte {} changed and {:?} decoded", at, q);
            }
        }
    }

    #[test]
    fn long_messages_are_cut_at_a_character() {
        let r = CtlReply { status: 0, message: "é".repeat(CTL_SIZE) };
        let back = CtlReply::decode(&r.encode()).unwrap();
        assert!(back.message.len() <= CTL_SIZE - MSG_OFF && back.message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn the_command_encodes_its_size() {
        assert_eq!(GFS_IOC_CTL >> 30, 3);
        assert_eq!((GFS_IOC_CTL >> 16) & 0x3fff, CTL_SIZE as u32);
        assert_eq!(GFS_IOC_CTL & 0xffff, 0x6701);
    }

    #[test]
    fn a_directory_that_is_not_a_mount_is_refused() {
        let e = request(Path::new("/proc/self"), &CtlRequest::Grow { rg_blocks: None, test: true }).unwrap_err();
        assert!(matches!(e, ToolError::NotGfs(_)), "{e}");
        let e = request(Path::new("/nonexistent/x"), &CtlRequest::Grow { rg_blocks: None, test: true }).unwrap_err();
        assert!(matches!(e, ToolError::Path { .. }), "{e}");
    }
}
