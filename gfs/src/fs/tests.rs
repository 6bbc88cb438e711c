use super::*;
use crate::device::CutoffDevice;
pub(super) use crate::device::MemDevice;
use crate::mkfs::{mkfs, MkfsOptions};
use std::sync::Mutex;

fn new_fs(mib: usize, journal_blocks: u32) -> Arc<dyn Device> {
    let dev: Arc<dyn Device> = Arc::new(MemDevice(Mutex::new(vec![0u8; mib << 20])));
    let o = MkfsOptions {
        lockproto: LockProto::Nolock,
        locktable: "t:fs".into(),
        journals: 2,
        journal_blocks: Some(journal_blocks),
        rg_blocks: Some(2048),
        overwrite: false,
    };
    mkfs(&*dev, &o).unwrap();
    dev
}

fn assert_consistent(fs: &mut Fs) {
    let r = fs.check().unwrap();
    assert!(r.problems.is_empty(), "inconsistent: {:#?}", r.problems);
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i as u64).wrapping_mul(2654435761) ^ seed) as u8).collect()
}

#[test]
fn namespace_and_data_survive_remount() {
    let dev = new_fs(64, 512);
    let mut fs = Fs::mount(dev.clone(), 0).unwrap();
    let root = fs.root();
    let d = fs.mkdir(root, b"dir", 0o755, 1, 2).unwrap();
    let f = fs.mknod(d.ino, b"file", libc::S_IFREG | 0o644, 1, 2, 0).unwrap();
    let data = pattern(1, 300_000);
    fs.write(f.ino, 0, &data).unwrap();
    // Sparse: a block far out.
    fs.write(f.ino, 10 << 20, b"tail").unwrap();
    fs.symlink(d.ino, b"link", b"file", 0, 0).unwrap();
    fs.link(f.ino, root, b"hard").unwrap();
    fs.mknod(root, b"fifo", libc::S_IFIFO | 0o600, 0, 0, 0).unwrap();
    fs.mknod(root, b"dev", libc::S_IFCHR | 0o600, 0, 0, 0x0103).unwrap();
    fs.mkdir(root, b"gone", 0o755, 0, 0).unwrap();
    fs.rmdir(root, b"gone").unwrap();
    assert_consistent(&mut fs);
    fs.unmount().unwrap();

    let mut fs = Fs::mount(dev.clone(), 0).unwrap();
    assert_eq!(fs.replayed(), 0, "clean unmount leaves nothing to replay");
    let root = fs.root();
    let d = fs.lookup(root, b"dir").unwrap();
    assert_eq!((d.uid, d.gid, d.mode & 0o7777, d.nlink), (1, 2, 0o755, 2));
    let f = fs.lookup(d.ino, b"file").unwrap();
    assert_eq!(f.nlink, 2);
    assert_eq!(f.size, (10 << 20) + 4);
    assert_eq!(fs.read(f.ino, 0, data.len()).unwrap(), data);
    assert_eq!(fs.read(f.ino, 5 << 20, 8).unwrap(), vec![0u8; 8], "hole reads zeros");
    assert_eq!(fs.read(f.ino, 10 << 20, 100).unwrap(), b"tail");
    let l = fs.lookup(d.ino, b"link").unwrap();
    assert_eq!(fs.readlink(l.ino).unwrap(), b"file");
    assert_eq!(fs.lookup(root, b"dev").unwrap().rdev, 0x0103);
    assert!(matches!(fs.lookup(root, b"gone"), Err(FsError::NotFound)));
    assert!(matches!(fs.rmdir(root, b"dir"), Err(FsError::NotEmpty)));
    assert!(matches!(fs.mkdir(root, b"dir", 0o755, 0, 0), Err(FsError::Exists)));
    // Truncate down then up: the old tail reads as zeros.
    fs.setattr(f.ino, &SetAttr { size: Some(1000), ..Default::default() }).unwrap();
    fs.setattr(f.ino, &SetAttr { size: Some(8192), ..Default::default() }).unwrap();
    let back = fs.read(f.ino, 0, 8192).unwrap();
    assert_eq!(&back[..1000], &data[..1000]);
    assert!(back[1000..].iter().all(|&b| b == 0));
    assert_consistent(&mut fs);
    // Unlink both names: the blocks come back (after a checkpoint unpins them).
    let before = fs.statfs().unwrap();
    fs.unlink(root, b"hard").unwrap();
    fs.unlink(d.ino, b"file").unwrap();
    fs.commit().unwrap();
    fs.checkpoint().unwrap();
    assert!(fs.statfs().unwrap().free > before.free);
    assert_consistent(&mut fs);
    fs.unmount().unwrap();
    let df = crate::mkfs::df(&*dev, &crate::mkfs::read_superblock(&*dev).unwrap()).unwrap();
    let mut fs = Fs::mount(dev, 0).unwrap();
    let st = fs.statfs().unwrap();
    assert_eq!((df.free, df.dinodes), (st.free, st.dinodes), "statfs blocks match the bitmaps");
}

#[test]
fn rename_replaces_atomically() {
    let dev = new_fs(32, 256);
    let mut fs = Fs::mount(dev, 0).unwrap();
    let root = fs.root();
    let a = fs.mknod(root, b"a", libc::S_IFREG | 0o644, 0, 0, 0).unwrap();
    fs.write(a.ino, 0, b"new").unwrap();
    let b = fs.mknod(root, b"b", libc::S_IFREG | 0o644, 0, 0, 0).unwrap();
    fs.write(b.ino, 0, b"old").unwrap();
    fs.rename(root, b"a", root, b"b").unwrap();
    let got = fs.lookup(root, b"b").unwrap();
    assert_eq!(got.ino, a.ino);
    assert_eq!(fs.read(got.ino, 0, 10).unwrap(), b"new");
    assert!(matches!(fs.lookup(root, b"a"), Err(FsError::NotFound)));
    let d1 = fs.mkdir(root, b"d1", 0o755, 0, 0).unwrap();
    let d2 = fs.mkdir(root, b"d2", 0o755, 0, 0).unwrap();
    fs.mkdir(d2.ino, b"sub", 0o755, 0, 0).unwrap();
    assert!(matches!(fs.rename(root, b"d2", d2.ino, b"x"), Err(FsError::Invalid)), "no move below itself");
    fs.rename(d2.ino, b"sub", d1.ino, b"sub").unwrap();
    assert_eq!(fs.getattr(d1.ino).unwrap().nlink, 3);
    assert_eq!(fs.getattr(d2.ino).unwrap().nlink, 2);
    assert!(matches!(fs.rename(root, b"b", root, b"d1"), Err(FsError::IsDir)));
    fs.rename(root, b"d2", root, b"d1").unwrap_err();
    assert_consistent(&mut fs);
}

#[test]
fn big_directory_lookup_readdir_and_removal() {
    let dev = new_fs(128, 2048);
    let mut fs = Fs::mount(dev.clone(), 0).unwrap();
    fs.set_cache_limit(64);
    let root = fs.root();
    let dir = fs.mkdir(root, b"big", 0o755, 0, 0).unwrap().ino;
    let n = 6000;
    for i in 0..n {
        fs.mknod(dir, format!("file-{i:06}").as_bytes(), libc::S_IFREG | 0o644, 0, 0, 0).unwrap();
        if fs.dirty_blocks() > 400 {
            fs.commit().unwrap();
        }
    }
    for i in (0..n).step_by(97) {
        fs.lookup(dir, format!("file-{i:06}").as_bytes()).unwrap();
    }
    // readdir in small batches while removing what was read: nothing skipped, nothing twice.
    let mut offset = 0;
    let mut seen = std::collections::HashSet::new();
    loop {
        let batch = fs.readdir(dir, offset, 50).unwrap();
        if batch.is_empty() {
            break;
        }
        for e in &batch {
            assert!(seen.insert(e.name.clone()), "{:?} twice", String::from_utf8_lossy(&e.name));
            fs.unlink(dir, &e.name).unwrap();
            offset = e.offset;
        }
        if fs.dirty_blocks() > 400 {
            fs.commit().unwrap();
        }
    }
    assert_eq!(seen.len(), n);
    assert_eq!(fs.getattr(dir).unwrap().nlink, 2);
    fs.rmdir(root, b"big").unwrap();
    assert_consistent(&mut fs);
    fs.unmount().unwrap();
    let mut fs = Fs::mount(dev, 0).unwrap();
    assert_consistent(&mut fs);
}

#[test]
fn crash_after_commit_replays_journal() {
    let dev = new_fs(32, 512);
    let mut fs = Fs::mount(dev.clone(), 0).unwrap();
    let root = fs.root();
    for i in 0..50 {
        let f = fs.mknod(root, format!("f{i}").as_bytes(), libc::S_IFREG | 0o600, 0, 0, 0).unwrap();
        fs.write(f.ino, 0, &pattern(i, 5000)).unwrap();
    }
    fs.sync().unwrap();
    // Not synced: may be lost, must not corrupt.
    fs.mknod(root, b"unsynced", libc::S_IFREG | 0o600, 0, 0, 0).unwrap();
    drop(fs); // crash: nothing written home, journal dirty
    let mut fs = Fs::mount(dev, 0).unwrap();
    assert!(fs.replayed() > 0);
    for i in 0..50 {
        let f = fs.lookup(root, format!("f{i}").as_bytes()).unwrap();
        assert_eq!(fs.read(f.ino, 0, 5000).unwrap(), pattern(i, 5000));
    }
    assert_consistent(&mut fs);
}

/// Block-level crash test: the device drops every write after the Nth. Whatever was synced
/// before the cut is there after remount, and the filesystem is consistent.
#[test]
fn cut_power_after_nth_write() {
    // Count the writes of a full run first.
    let run = |dev: Arc<dyn Device>, cut: Option<&CutoffDevice>| -> (usize, Vec<(String, u64)>) {
        let mut durable = Vec::new();
        let mut done: Vec<(String, u64)> = Vec::new();
        let Ok(mut fs) = Fs::mount(dev, 0) else { return (0, durable) };
        fs.set_cache_limit(8);
        let root = fs.root();
        for i in 0..40u64 {
            let name = format!("f{i}");
            let step = (|| -> Result<()> {
                let f = fs.mknod(root, name.as_bytes(), libc::S_IFREG | 0o600, 0, 0, 0)?;
                fs.write(f.ino, 0, &pattern(i, 3000 + i as usize * 1000))?;
                if i % 3 == 0 {
                    fs.rename(root, name.as_bytes(), root, format!("r{i}").as_bytes())?;
                }
                if let Some((prev, _)) = done.iter().find(|(_, j)| i % 5 == 4 && *j == i - 1) {
                    fs.unlink(root, prev.as_bytes())?;
                }
                fs.sync()
            })();
            if step.is_err() {
                break;
            }
            done.push((if i % 3 == 0 { format!("r{i}") } else { name }, i));
            if i % 5 == 4 {
                done.retain(|(_, j)| *j != i - 1);
            }
            if cut.is_none_or(|c| !c.cut()) {
                durable = done.clone();
            }
        }
        let _ = fs.unmount();
        (durable.len(), durable)
    };
    let base = new_fs(32, 256);
    let counter = Arc::new(CutoffDevice::new(base, u64::MAX));
    run(counter.clone(), None);
    let total = counter.writes();
    assert!(total > 80, "a full run makes {total} writes");
    let mut partial_runs = 0;
    for limit in (0..total).step_by((total / 25).max(1) as usize) {
        let base = new_fs(32, 256);
        let cut = Arc::new(CutoffDevice::new(base.clone(), limit));
        let (n, durable) = run(cut.clone(), Some(&cut));
        if n > 0 && n < 30 {
            partial_runs += 1;
        }
        let mut fs = Fs::mount(base, 0).unwrap_or_else(|e| panic!("mount after cut at write {limit}: {e}"));
        let root = fs.root();
        for (name, i) in &durable {
            let f = fs.lookup(root, name.as_bytes()).unwrap_or_else(|e| panic!("cut {limit}: {name} lost: {e}"));
            assert_eq!(
                fs.read(f.ino, 0, 1 << 20).unwrap(),
                pattern(*i, 3000 + *i as usize * 1000),
                "cut {limit}: {name}"
            );
        }
        let r = fs.check().unwrap();
        assert!(r.problems.is_empty(), "cut at write {limit}: {:#?}", r.problems);
    }
    assert!(partial_runs >= 10, "only {partial_runs} cuts fell in the middle of the workload");
}

#[test]
fn fragmented_file_uses_extent_leaves() {
    let dev = new_fs(64, 1024);
    let mut fs = Fs::mount(dev.clone(), 0).unwrap();
    let root = fs.root();
    let f = fs.mknod(root, b"frag", libc::S_IFREG | 0o644, 0, 0, 0).unwrap().ino;
    // Every other block: 1500 extents, far more than fit in the dinode.
    for i in 0..1500u64 {
        fs.write(f, i * 2 * 4096, &pattern(i, 4096)).unwrap();
        if fs.dirty_blocks() > 300 {
            fs.commit().unwrap();
        }
    }
    assert!(matches!(fs.dinode(f).unwrap().content, Content::Index(_)));
    assert_consistent(&mut fs);
    // Fill the holes in the middle (merges extents), truncate, remount.
    for i in (500..700u64).rev() {
        fs.write(f, (i * 2 + 1) * 4096, &pattern(i + 10_000, 4096)).unwrap();
    }
    fs.setattr(f, &SetAttr { size: Some(2000 * 4096 + 100), ..Default::default() }).unwrap();
    fs.unmount().unwrap();
    let mut fs = Fs::mount(dev, 0).unwrap();
    for i in [0u64, 1, 499, 500, 650, 699, 700, 999] {
        assert!(fs.read(f, i * 2 * 4096, 4096).unwrap() == pattern(i, 4096), "block {}", i * 2);
    }
    assert!(fs.read(f, 1001 * 4096, 4096).unwrap() == pattern(10_500, 4096), "filled hole");
    assert!(fs.read(f, 1403 * 4096, 4096).unwrap() == vec![0; 4096], "hole");
    assert!(fs.read(f, 2001 * 4096, 4096).unwrap().is_empty(), "past the end");
    assert_eq!(fs.getattr(f).unwrap().size, 2000 * 4096 + 100);
    assert_consistent(&mut fs);
    fs.unlink(root, b"frag").unwrap();
    assert_consistent(&mut fs);
}

#[test]
fn directory_table_moves_to_blocks() {
    let dev = new_fs(64, 2048);
    let mut fs = Fs::mount(dev.clone(), 0).unwrap();
    // Tables deeper than 2 (4 slots) go to blocks; a few thousand entries reach depth 5+.
    fs.set_inline_dir_depth(2);
    let root = fs.root();
    let dir = fs.mkdir(root, b"huge", 0o755, 0, 0).unwrap().ino;
    let n = 5_000;
    for i in 0..n {
        fs.mknod(dir, format!("file-{i:06}").as_bytes(), libc::S_IFREG | 0o644, 0, 0, 0).unwrap();
        if fs.dirty_blocks() > 400 {
            fs.commit().unwrap();
        }
    }
    let d = fs.dinode(dir).unwrap();
    assert!(d.dir_depth > 2, "depth {}", d.dir_depth);
    assert!(!matches!(d.content, Content::DirHash(_)));
    assert_eq!(d.dir_entries, n as u64);
    fs.unmount().unwrap();
    let mut fs = Fs::mount(dev, 0).unwrap();
    for i in (0..n).step_by(211) {
        fs.lookup(dir, format!("file-{i:06}").as_bytes()).unwrap();
    }
    assert!(matches!(fs.lookup(dir, b"file-999999"), Err(FsError::NotFound)));
    let mut offset = 0;
    let mut count = 0;
    loop {
        let batch = fs.readdir(dir, offset, 1000).unwrap();
        let Some(last) = batch.last() else { break };
        offset = last.offset;
        count += batch.len();
    }
    assert_eq!(count, n);
    assert_consistent(&mut fs);
    for i in 0..n {
        fs.unlink(dir, format!("file-{i:06}").as_bytes()).unwrap();
        if fs.dirty_blocks() > 400 {
            fs.commit().unwrap();
        }
    }
    fs.rmdir(root, b"huge").unwrap();
    assert_consistent(&mut fs);
}

#[test]
fn xattrs_set_get_list_remove() {
    let dev = new_fs(32, 256);
    let mut fs = Fs::mount(dev.clone(), 0).unwrap();
    let root = fs.root();
    let f = fs.mknod(root, b"f", libc::S_IFREG | 0o644, 0, 0, 0).unwrap().ino;
    fs.setxattr(f, b"user.a", b"one", 0).unwrap();
    fs.setxattr(f, b"user.b", &[7u8; 1000], 0).unwrap();
    fs.setxattr(root, b"trusted.r", b"root", 0).unwrap();
    assert!(matches!(fs.setxattr(f, b"user.a", b"x", XATTR_CREATE), Err(FsError::Exists)));
    assert!(matches!(fs.setxattr(f, b"user.c", b"x", XATTR_REPLACE), Err(FsError::NoData)));
    assert!(matches!(fs.setxattr(f, b"user.big", &[0u8; 4000], 0), Err(FsError::NoSpace)));
    fs.setxattr(f, b"user.a", b"two", XATTR_REPLACE).unwrap();
    assert_consistent(&mut fs);
    fs.unmount().unwrap();
    let mut fs = Fs::mount(dev, 0).unwrap();
    assert_eq!(fs.getxattr(f, b"user.a").unwrap(), b"two");
    assert_eq!(fs.getxattr(root, b"trusted.r").unwrap(), b"root");
    assert_eq!(fs.listxattr(f).unwrap(), b"user.a\0user.b\0");
    fs.removexattr(f, b"user.a").unwrap();
    fs.removexattr(f, b"user.b").unwrap();
    assert!(matches!(fs.getxattr(f, b"user.a"), Err(FsError::NoData)));
    assert_eq!(fs.getattr(f).unwrap().blocks, 0, "the xattr block is freed with the last attribute");
    fs.setxattr(f, b"user.again", b"1", 0).unwrap();
    fs.unlink(root, b"f").unwrap();
    assert_consistent(&mut fs);
}

#[test]
fn open_unlinked_inode_freed_after_crash() {
    let dev = new_fs(32, 256);
    let mut fs = Fs::mount(dev.clone(), 0).unwrap();
    assert_eq!(fs.orphans_freed(), 0);
    let root = fs.root();
    let f = fs.mknod(root, b"tmp", libc::S_IFREG | 0o600, 0, 0, 0).unwrap().ino;
    fs.write(f, 0, &pattern(3, 50_000)).unwrap();
    fs.open_inode(f);
    fs.unlink(root, b"tmp").unwrap();
    // Still readable while open.
    assert!(fs.read(f, 0, 50_000).unwrap() == pattern(3, 50_000));
    fs.sync().unwrap();
    drop(fs); // the node dies with the file open
    let mut fs = Fs::mount(dev.clone(), 0).unwrap();
    assert_eq!(fs.orphans_freed(), 1);
    assert_consistent(&mut fs);
    fs.unmount().unwrap();
    let fs = Fs::mount(dev, 0).unwrap();
    assert_eq!(fs.orphans_freed(), 0, "a clean unmount leaves no orphan scan to do");
}
