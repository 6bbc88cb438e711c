//! Request validation and block-status computation: the parts of serving a request that do
//! not need the ring, kept apart so they are easy to test.

use std::fs::File;

use nbd_proto::consts::*;
use nbd_proto::{Command, Extent, ReplyMode, Request};

use crate::export::MAX_PAYLOAD;
use crate::sys;

/// A request the server answers with an error, without touching the backing store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Wire error value.
    pub error: u32,
    pub why: &'static str,
}

fn refuse(error: u32, why: &'static str) -> Result<(), Refused> {
    Err(Refused { error, why })
}

/// What the session and the export allow.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub size: u64,
    pub readonly: bool,
    pub mode: ReplyMode,
    pub base_allocation: bool,
}

/// Checks a request against the spec's rules and the export. `Ok` means: go ahead.
pub fn validate(req: &Request, lim: &Limits) -> Result<(), Refused> {
    let allowed = match req.command {
        Command::Read => NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_DF,
        Command::Write | Command::Trim => NBD_CMD_FLAG_FUA,
        Command::WriteZeroes => NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO,
        Command::BlockStatus => NBD_CMD_FLAG_REQ_ONE,
        Command::Flush | Command::Cache | Command::Disc => NBD_CMD_FLAG_FUA,
        Command::Resize | Command::Other(_) => return refuse(NBD_EINVAL, "unknown command"),
    };
    if req.flags & !allowed != 0 {
        return refuse(NBD_EINVAL, "command flags not valid for this command");
    }
    if req.flags & NBD_CMD_FLAG_DF != 0 && lim.mode == ReplyMode::Simple {
        return refuse(NBD_EINVAL, "NBD_CMD_FLAG_DF needs structured replies");
    }
    let end = req.offset.checked_add(req.length);
    let writes = matches!(req.command, Command::Write | Command::Trim | Command::WriteZeroes);
    if writes && lim.readonly {
        return refuse(NBD_EPERM, "the export is read-only");
    }
    match req.command {
        Command::Flush => {
            if req.offset != 0 || req.length != 0 {
                return refuse(NBD_EINVAL, "NBD_CMD_FLUSH must have offset and length 0");
            }
        }
        Command::BlockStatus => {
            if !lim.base_allocation {
                return refuse(NBD_EINVAL, "no metadata context was negotiated");
            }
            if req.length == 0 || req.offset >= lim.size {
                return refuse(NBD_EINVAL, "block status request outside the export");
            }
        }
        _ => {
            if req.length == 0 {
                return refuse(NBD_EINVAL, "zero-length request");
            }
            if matches!(req.command, Command::Read | Command::Write) && req.length > u64::from(MAX_PAYLOAD) {
                return refuse(NBD_EINVAL, "request larger than the maximum block size (64 MiB)");
            }
            match end {
                Some(end) if end <= lim.size => {}
                _ if writes => return refuse(NBD_ENOSPC, "request extends past the end of the export"),
                _ => return refuse(NBD_EINVAL, "request extends past the end of the export"),
            }
        }
    }
    Ok(())
}

/// Most extents returned in one block-status reply (the client asks again for the rest).
pub const MAX_EXTENTS: usize = 2048;

/// `base:allocation` extents for `[offset, offset+len)` (clipped to the export), found with
/// SEEK_DATA/SEEK_HOLE. Stores that cannot tell (block devices) are reported as all data.
pub fn block_status(file: &File, size: u64, offset: u64, len: u64, one: bool, mode: ReplyMode) -> Vec<Extent> {
    let end = offset.saturating_add(len).min(size);
    // Compact sessions need every extent length to fit 32 bits.
    let cap = if mode == ReplyMode::Extended { u64::MAX } else { u64::from(u32::MAX) & !4095 };
    let max = if one { 1 } else { MAX_EXTENTS };
    let mut out: Vec<Extent> = Vec::new();
    let push = |out: &mut Vec<Extent>, length: u64, flags: u64| {
        let length = length.min(cap);
        match out.last_mut() {
            Some(last) if last.flags == flags && last.length.saturating_add(length) <= cap => last.length += length,
            _ => out.push(Extent { length, flags }),
        }
        length
    };
    let hole = u64::from(NBD_STATE_HOLE | NBD_STATE_ZERO);
    let mut pos = offset;
    while pos < end && out.len() < max {
        let next_data = match sys::seek(file, pos, false) {
            Ok(d) => d.unwrap_or(end),
            Err(_) => {
                push(&mut out, end - pos, 0);
                break;
            }
        };
        if next_data > pos {
            pos += push(&mut out, next_data.min(end) - pos, hole);
            continue;
        }
        let next_hole = match sys::seek(file, pos, true) {
            Ok(h) => h.unwrap_or(end),
            Err(_) => end,
        };
        let next_hole = next_hole.max(pos + 1);
        pos += push(&mut out, next_hole.min(end) - pos, 0);
    }
    if one {
        out.truncate(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    fn req(command: Command, flags: u16, offset: u64, length: u64) -> Request {
        Request { flags, command, cookie: 1, offset, length }
    }

    #[test]
    fn validation_follows_the_spec() {
        let lim = Limits { size: 1 << 20, readonly: false, mode: ReplyMode::Structured, base_allocation: true };
        let ro = Limits { readonly: true, ..lim };
        let err = |r: &Request, l: &Limits| validate(r, l).unwrap_err().error;
        assert!(validate(&req(Command::Read, 0, 0, 4096), &lim).is_ok());
        assert_eq!(err(&req(Command::Read, 0, (1 << 20) - 1, 2), &lim), NBD_EINVAL);
        assert_eq!(err(&req(Command::Write, 0, (1 << 20) - 1, 2), &lim), NBD_ENOSPC);
        assert_eq!(err(&req(Command::Write, 0, 0, 2), &ro), NBD_EPERM);
        assert_eq!(err(&req(Command::Trim, 0, 0, 2), &ro), NBD_EPERM);
        assert_eq!(err(&req(Command::Read, 0, u64::MAX, 2), &lim), NBD_EINVAL);
        assert_eq!(err(&req(Command::Read, 0, 0, 0), &lim), NBD_EINVAL);
        assert_eq!(err(&req(Command::Read, 0, 0, u64::from(u32::MAX)), &lim), NBD_EINVAL);
        assert_eq!(err(&req(Command::Other(99), 0, 0, 1), &lim), NBD_EINVAL);
        assert_eq!(err(&req(Command::Read, NBD_CMD_FLAG_NO_HOLE, 0, 1), &lim), NBD_EINVAL);
        assert_eq!(err(&req(Command::Flush, 0, 5, 0), &lim), NBD_EINVAL);
        assert!(validate(&req(Command::WriteZeroes, NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO, 0, 9), &lim).is_ok());
        assert!(validate(&req(Command::BlockStatus, NBD_CMD_FLAG_REQ_ONE, 10, u64::MAX), &lim).is_ok());
        let simple = Limits { mode: ReplyMode::Simple, base_allocation: false, ..lim };
        assert_eq!(err(&req(Command::BlockStatus, 0, 0, 1), &simple), NBD_EINVAL);
        assert_eq!(err(&req(Command::Read, NBD_CMD_FLAG_DF, 0, 1), &simple), NBD_EINVAL);
    }

    #[test]
    fn block_status_sees_holes_and_data() {
        let path = std::env::temp_dir().join(format!("gnbd-bs-test-{}", std::process::id()));
        let mut f = File::options().create(true).truncate(true).read(true).write(true).open(&path).unwrap();
        f.set_len(4 << 20).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&vec![1u8; 1 << 20]).unwrap();
        f.sync_all().unwrap();
        let hole = u64::from(NBD_STATE_HOLE | NBD_STATE_ZERO);
        let ext = block_status(&f, 4 << 20, 0, 4 << 20, false, ReplyMode::Structured);
        std::fs::remove_file(&path).unwrap();
        // Filesystems without SEEK_HOLE support report everything as data; accept both.
        if ext.len() > 1 {
            assert_eq!(
                ext,
                vec![
                    Extent { length: 1 << 20, flags: hole },
                    Extent { length: 1 << 20, flags: 0 },
                    Extent { length: 2 << 20, flags: hole }
                ]
            );
        }
        let total: u64 = ext.iter().map(|e| e.length).sum();
        assert_eq!(total, 4 << 20);
        let one = block_status(&f, 4 << 20, 0, 4 << 20, true, ReplyMode::Structured);
        assert_eq!(one.len(), 1);
    }
}
