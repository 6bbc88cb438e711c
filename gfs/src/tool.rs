//! `gfs_tool`: superblock, journal index and free space of a device or a mounted filesystem.

use crate::device::open_device;
use crate::format::*;
use crate::mkfs::{df, read_block, read_superblock, uuid_string, MkfsError};
use std::fmt::Write;
use std::path::Path;

/// The device behind `target`: `target` itself, or the source of the FUSE mount at `target`
/// (whatever it names must then hold a valid superblock).
pub fn resolve_device(target: &str) -> String {
    if Path::new(target).is_dir() {
        if let Ok(canon) = std::fs::canonicalize(target) {
            if let Some((source, fstype)) = mount_entry(&canon) {
                if fstype == "fuse.gfs" || fstype == "fuse" {
                    return source;
                }
            }
        }
    }
    target.to_string()
}

/// The source and type of the (last) mount at mount point `path` in /proc/self/mounts.
pub(crate) fn mount_entry(path: &Path) -> Option<(String, String)> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let p = path.display().to_string();
    mounts.lines().rev().find_map(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        (f.len() >= 3 && unescape_mount(f[1]) == p).then(|| (unescape_mount(f[0]), f[2].to_string()))
    })
}

/// Undoes the octal escapes of /proc/self/mounts (`\040` for a space, ...).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = (b[i] == b'\\' && i + 4 <= b.len()).then(|| std::str::from_utf8(&b[i + 1..i + 4]).ok()).flatten();
        if let Some(v) = code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `gfs_tool sb`.
pub fn sb_report(target: &str) -> Result<String, MkfsError> {
    let dev = open_device(&resolve_device(target))?;
    let sb = read_superblock(&*dev)?;
    let mut s = String::new();
    let _ = writeln!(s, "  mh_magic = {GFS_MAGIC:#010x}");
    let _ = writeln!(s, "  sb_fs_format = {GFS_FORMAT}");
    let _ = writeln!(s, "  sb_bsize = {}", sb.block_size);
    let _ = writeln!(s, "  sb_blocks = {}", sb.block_count);
    let _ = writeln!(s, "  sb_uuid = {}", uuid_string(&sb.uuid));
    let _ = writeln!(s, "  sb_lockproto = {}", sb.lockproto);
    let _ = writeln!(s, "  sb_locktable = {}", sb.locktable);
    let _ = writeln!(s, "  sb_root_dinode = {}", sb.root_dinode);
    let _ = writeln!(s, "  sb_jindex = {}", sb.jindex_block);
    let _ = writeln!(s, "  sb_statfs = {}", sb.master_statfs);
    let _ = writeln!(s, "  sb_rg_start = {}", sb.rg_start);
    let _ = writeln!(s, "  sb_rg_blocks = {}", sb.rg_blocks);
    let _ = writeln!(s, "  sb_rg_count = {}", sb.rg_count);
    let _ = writeln!(s, "  sb_journals = {}", sb.journal_count);
    Ok(s)
}

/// `gfs_tool jindex`: one line per journal, with whether it holds transactions to replay.
pub fn jindex_report(target: &str) -> Result<String, MkfsError> {
    let dev = open_device(&resolve_device(target))?;
    let sb = read_superblock(&*dev)?;
    let ji = JIndex::decode(&read_block(&*dev, sb.jindex_block)?[..], sb.jindex_block)?;
    let mut s = String::new();
    for (i, j) in ji.journals.iter().enumerate() {
        let h = JournalHeader::decode(&read_block(&*dev, j.start)?[..], j.start)?;
        let first = read_block(&*dev, j.start + 1)?;
        let dirty = matches!(LogDescriptor::decode(&first[..], j.start + 1), Ok(d) if d.sequence == h.sequence);
        let _ = writeln!(
            s,
            "journal{i}: start {} blocks {} ({} MiB) statfs {} sequence {} {}",
            j.start,
            j.blocks,
            (j.blocks as u64 * BLOCK_SIZE as u64) >> 20,
            j.statfs_block,
            h.sequence,
            if dirty {
                "dirty"
            } else if h.clean {
                "clean"
            } else {
                "not unmounted (mounted, or its node died)"
            }
        );
    }
    Ok(s)
}

/// `gfs_tool df`.
pub fn df_report(target: &str) -> Result<String, MkfsError> {
    let spec = resolve_device(target);
    let dev = open_device(&spec)?;
    let sb = read_superblock(&*dev)?;
    let d = df(&*dev, &sb)?;
    let mut s = String::new();
    let _ = writeln!(s, "{spec}:");
    let _ = writeln!(s, "  SB lock proto = \"{}\"", sb.lockproto);
    let _ = writeln!(s, "  SB lock table = \"{}\"", sb.locktable);
    let _ = writeln!(s, "  SB uuid = {}", uuid_string(&sb.uuid));
    let _ = writeln!(s, "  Block size = {}", sb.block_size);
    let _ = writeln!(s, "  Journals = {}", sb.journal_count);
    let _ = writeln!(s, "  Resource Groups = {}", sb.rg_count);
    let _ = writeln!(s);
    let _ = writeln!(s, "  Type           Total          Used           Free           use%");
    let used = d.total.saturating_sub(d.free);
    let pct = (used * 100).checked_div(d.total).unwrap_or(0);
    let _ = writeln!(s, "  data           {:<14} {:<14} {:<14} {}%", d.total, used, d.free, pct);
    let _ = writeln!(s, "  dinodes        {:<14} {:<14} {:<14}", d.dinodes, d.dinodes, "-");
    Ok(s)
}

/// `gfs_tool lockdump`: the DLM's view of this filesystem's glocks (lock_dlm), from the
/// local `dlm_controld` at `socket`: the resources this node masters, their queues and modes.
pub fn lockdump_report(target: &str, socket: &str) -> Result<String, MkfsError> {
    let spec = resolve_device(target);
    let dev = open_device(&spec)?;
    let sb = read_superblock(&*dev)?;
    let fsname = sb.locktable.split_once(':').map(|(_, f)| f.to_string()).unwrap_or(sb.locktable.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| crate::DeviceError::Io { offset: 0, source })?;
    let dump = rt.block_on(async {
        let c = dlm::DlmClient::connect(socket).await?;
        c.lockdump(fsname.as_bytes()).await
    });
    dump.map_err(|e| {
        crate::DeviceError::Connect {
            spec: socket.to_string(),
            reason: format!("dlm_controld lockdump of {fsname}: {e}"),
        }
        .into()
    })
}
