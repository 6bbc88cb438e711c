use super::*;
use crate::device::CutoffDevice;
use crate::mkfs::{mkfs, MkfsOptions};
use std::sync::Mutex;

use crate::fs::tests::MemDevice;

const MIB: usize = 1 << 20;

/// A filesystem of `bytes` with 1024-block groups and 2 journals of 600 blocks.
fn new_fs(bytes: usize) -> Arc<MemDevice> {
    let dev = Arc::new(MemDevice(Mutex::new(vec![0u8; bytes])));
    let o = MkfsOptions {
        lockproto: LockProto::Nolock,
        locktable: "t:grow".into(),
        journals: 2,
        journal_blocks: Some(600),
        rg_blocks: Some(1024),
        overwrite: false,
    };
    mkfs(&*dev, &o).unwrap();
    dev
}

fn consistent(fs: &mut Fs) {
    let r = fs.check().unwrap();
    assert!(r.problems.is_empty(), "inconsistent: {:#?}", r.problems);
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i as u64).wrapping_mul(2654435761) ^ seed) as u8).collect()
}

/// Writes files of `size` bytes named `{prefix}{i}` until the filesystem is full; returns
/// how many were written whole.
fn fill(fs: &mut Fs, prefix: &str, size: usize) -> u64 {
    let root = fs.root();
    let mut n = 0;
    loop {
        let name = format!("{prefix}{n}");
        let Ok(f) = fs.mknod(root, name.as_bytes(), libc::S_IFREG | 0o644, 0, 0, 0) else { break };
        match fs.write(f.ino, 0, &pattern(n, size)) {
            Ok(w) if w == size => {}
            _ => {
                let _ = fs.unlink(root, name.as_bytes());
                break;
            }
        }
        fs.sync().unwrap();
        n += 1;
    }
    fs.sync().unwrap();
    n
}

fn verify(fs: &mut Fs, prefix: &str, count: u64, size: usize) {
    let root = fs.root();
    for i in 0..count {
        let a = fs.lookup(root, format!("{prefix}{i}").as_bytes()).unwrap();
        assert_eq!(fs.read(a.ino, 0, size + 1).unwrap(), pattern(i, size), "{prefix}{i}");
    }
}

#[test]
fn grow_adds_groups_the_new_space_fills_and_survives_remount() {
    let dev = new_fs(16 * MIB);
    let mut fs = Fs::mount(dev.clone(), 0).unwrap();
    let before = fs.statfs().unwrap();
    let old = fill(&mut fs, "old", 256 * 1024);
    assert!(old > 10, "{old}");
    let full = fs.statfs().unwrap();
    assert!(full.free < 64, "{full:?}");
    dev.resize(48 * MIB);
    let r = fs.grow(None, false).unwrap();
    assert!(!r.test);
    assert_eq!(r.new_rgs, r.old_rgs + 8, "{r:?}");
    assert_eq!(r.extended.map(|(i, _, _)| i), Some(r.old_rgs - 1), "{r:?}");
    assert_eq!(r.new_blocks, (48 * MIB / BLOCK_SIZE) as u64);
    let after = fs.statfs().unwrap();
    assert_eq!(after.total, before.total + r.added_data);
    // (The grow's checkpoint also releases blocks freed since the last one.)
    assert!(after.free >= full.free + r.added_data && after.free < full.free + r.added_data + 64, "{after:?}");
    consistent(&mut fs);
    let new = fill(&mut fs, "new", 256 * 1024);
    assert!(new > old * 2, "the new space holds {new} files, the old held {old}");
    consistent(&mut fs);
    fs.unmount().unwrap();
    let mut fs = Fs::mount(dev.clone(), 0).unwrap();
    assert_eq!(fs.superblock().block_count, r.new_blocks);
    assert_eq!(fs.superblock().rg_count, r.new_rgs);
    verify(&mut fs, "old", old, 256 * 1024);
    verify(&mut fs, "new", new, 256 * 1024);
    consistent(&mut fs);
    let df = crate::df(&*dev, fs.superblock()).unwrap();
    assert_eq!(df.total, after.total);
    fs.unmount().unwrap();
}

#[test]
fn a_short_last_group_grows_in_place() {
    // 16 MiB + 300 blocks: the last group is 300 blocks long.
    let dev = new_fs(16 * MIB + 300 * BLOCK_SIZE);
    let mut fs = Fs::mount(dev.clone(), 0).unwrap();
    let last = fs.superblock().rg_count - 1;
    let short = fs.rgs[last as usize].rg;
    assert!(short.data_count < 1000, "{short:?}");
    let f = fs.mknod(fs.root(), b"keep", libc::S_IFREG | 0o644, 0, 0, 0).unwrap();
    fs.write(f.ino, 0, &pattern(7, 100_000)).unwrap();
    // Grows by less than a group: only the short group changes.
    dev.resize(16 * MIB + 700 * BLOCK_SIZE);
    let r = fs.grow(Some(1024), false).unwrap();
    assert_eq!(r.new_rgs, r.old_rgs);
    let (i, a, b) = r.extended.unwrap();
    assert_eq!((i, a), (last, short.data_count));
    assert_eq!(b, short.data_count + 400);
    consistent(&mut fs);
    // Then past it: the group fills its slot and new ones follow.
    dev.resize(24 * MIB);
    let r = fs.grow(None, false).unwrap();
    assert!(r.new_rgs > r.old_rgs);
    assert_eq!(fs.rgs[last as usize].rg.data_count, Rgrp::layout(last, 0, 1024).unwrap().data_count);
    fill(&mut fs, "x", 64 * 1024);
    consistent(&mut fs);
    fs.unmount().unwrap();
    let mut fs = Fs::mount(dev, 0).unwrap();
    let a = fs.lookup(fs.root(), b"keep").unwrap();
    assert_eq!(fs.read(a.ino, 0, 200_000).unwrap(), pattern(7, 100_000));
    consistent(&mut fs);
}

#[test]
fn capped_layout_keeps_the_bitmap_count() {
    // A one-bitmap group whose slot grows past what one bitmap covers.
    let r = Rgrp::layout_capped(3, 5000, 16384, 1).unwrap();
    assert_eq!((r.bitmap_blocks, r.data_count, r.data0), (1, BITMAP_BLOCKS_PER_BLOCK, 5002));
    assert!(r.fits_slot(3, 5000, 16384));
    let full = Rgrp::layout(3, 5000, 16384).unwrap();
    assert_eq!(full.bitmap_blocks, 2);
    assert!(full.fits_slot(3, 5000, 16384));
    assert_eq!(Rgrp::layout_capped(3, 5000, 16384, 2), Some(full));
    assert!(!Rgrp { data_count: 100, ..r }.fits_slot(3, 5000, 16384));
}

#[test]
fn refusals_and_test_mode() {
    // Three whole groups after the journals (1221 blocks).
    let end = 1221 + 3 * 1024;
    let dev = new_fs(end * BLOCK_SIZE);
    let mut fs = Fs::mount(dev.clone(), 0).unwrap();
    let sb = fs.superblock().clone();
    assert!(matches!(fs.grow(None, false), Err(GrowError::NotLarger { .. })));
    assert_eq!(sb.block_count, end as u64);
    dev.resize((end + 8) * BLOCK_SIZE);
    let e = fs.grow(None, false).unwrap_err();
    assert!(matches!(e, GrowError::TooLittle { extra: 8, .. }), "{e}");
    dev.resize((end + 4 * 1024) * BLOCK_SIZE);
    let e = fs.grow(Some(2048), false).unwrap_err();
    assert!(e.to_string().contains("1024 blocks (4 MiB)"), "{e}");
    let r = fs.grow(None, true).unwrap();
    assert!(r.test && r.new_rgs == sb.rg_count + 4, "{r:?}");
    assert!(r.to_string().contains("would add 4 new resource groups"), "{r}");
    assert_eq!(fs.superblock(), &sb);
    assert!(matches!(fs.add_journals(0, None, false), Err(GrowError::NoJournals)));
    assert!(matches!(fs.add_journals(126, None, false), Err(GrowError::TooManyJournals { .. })));
    assert!(matches!(fs.add_journals(1, Some(100), false), Err(GrowError::JournalSize { .. })));
    let t = fs.add_journals(1, None, true).unwrap();
    assert_eq!(t.journals.len(), 1);
    assert_eq!(fs.superblock(), &sb);
    consistent(&mut fs);
    fs.unmount().unwrap();
    let fs = Fs::mount(dev, 0).unwrap();
    assert_eq!(fs.superblock(), &sb);
}

#[test]
fn jadd_from_free_space_and_the_new_slots_mount() {
    let dev = new_fs(24 * MIB);
    let mut fs = Fs::mount(dev.clone(), 0).unwrap();
    let f = fs.mknod(fs.root(), b"a", libc::S_IFREG | 0o644, 0, 0, 0).unwrap();
    fs.write(f.ino, 0, &pattern(1, 50_000)).unwrap();
    let free = fs.statfs().unwrap().free;
    let r = fs.add_journals(2, None, false).unwrap();
    assert!(r.grew.is_none());
    assert_eq!(r.journal_count, 4);
    assert_eq!(r.journals.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(fs.statfs().unwrap().free, free - 2 * 601);
    consistent(&mut fs);
    fs.unmount().unwrap();
    for slot in [3u32, 2] {
        let mut fs = Fs::mount(dev.clone(), slot).unwrap();
        let root = fs.root();
        let g = fs.mknod(root, format!("from{slot}").as_bytes(), libc::S_IFREG | 0o644, 0, 0, 0).unwrap();
        fs.write(g.ino, 0, &pattern(slot as u64, 30_000)).unwrap();
        consistent(&mut fs);
        fs.unmount().unwrap();
    }
    let mut fs = Fs::mount(dev.clone(), 0).unwrap();
    for slot in [2u64, 3] {
        let a = fs.lookup(fs.root(), format!("from{slot}").as_bytes()).unwrap();
        assert_eq!(fs.read(a.ino, 0, 40_000).unwrap(), pattern(slot, 30_000));
    }
    consistent(&mut fs);
    let df = crate::df(&*dev, fs.superblock()).unwrap();
    assert_eq!(df.free, fs.statfs().unwrap().free);
    fs.unmount().unwrap();
}

#[test]
fn jadd_grows_into_new_space_when_free_space_has_no_room() {
    let dev = new_fs(16 * MIB);
    let mut fs = Fs::mount(dev.clone(), 0).unwrap();
    fill(&mut fs, "f", 64 * 1024);
    let e = fs.add_journals(1, None, false).unwrap_err();
    assert!(matches!(e, GrowError::NoRoom { need: 601 }), "{e}");
    dev.resize(32 * MIB);
    let r = fs.add_journals(3, None, false).unwrap();
    assert!(r.grew.is_some());
    assert_eq!(fs.superblock().journal_count, 5);
    consistent(&mut fs);
    fs.unmount().unwrap();
    let mut fs = Fs::mount(dev, 4).unwrap();
    consistent(&mut fs);
    fs.unmount().unwrap();
}

#[test]
fn another_mount_reloads_the_layout() {
    let dev = new_fs(16 * MIB);
    let mut a = Fs::mount(dev.clone(), 0).unwrap();
    let mut b = Fs::mount(dev.clone(), 1).unwrap();
    assert!(!b.reload_layout().unwrap());
    dev.resize(32 * MIB);
    a.grow(None, false).unwrap();
    a.add_journals(1, None, false).unwrap();
    assert!(b.reload_layout().unwrap());
    assert_eq!(b.superblock(), a.superblock());
    assert_eq!(b.statfs().unwrap().total, a.statfs().unwrap().total);
    assert_eq!(b.rgs.len(), a.rgs.len());
}

/// Power cut after each of the device writes of a grow + jadd: the next mount sees the old
/// layout or the new one (never a mix), consistent, and usable.
#[test]
fn crash_during_grow_and_jadd_leaves_old_or_new() {
    // Count the writes of the whole sequence first.
    let run = |dev: Arc<dyn Device>| -> std::result::Result<(), GrowError> {
        let mut fs = Fs::mount(dev, 0)?;
        let f = fs.mknod(fs.root(), b"before", libc::S_IFREG | 0o644, 0, 0, 0)?;
        fs.write(f.ino, 0, &pattern(3, 20_000))?;
        fs.sync()?;
        fs.grow(None, false)?;
        fs.add_journals(1, None, false)?;
        Ok(())
    };
    let base = new_fs(16 * MIB);
    base.resize(24 * MIB);
    let image = base.0.lock().unwrap().clone();
    let counter = Arc::new(CutoffDevice::new(Arc::new(MemDevice(Mutex::new(image.clone()))), u64::MAX));
    run(counter.clone()).unwrap();
    let total = counter.writes();
    assert!(total > 10, "{total}");
    let (mut old, mut grown, mut jadded) = (0, 0, 0);
    let mut n = 0;
    while n <= total {
        let disk = Arc::new(MemDevice(Mutex::new(image.clone())));
        let cut = Arc::new(CutoffDevice::new(disk.clone(), n));
        let _ = run(cut);
        let mut fs = Fs::mount(disk.clone(), 0).unwrap_or_else(|e| panic!("mount after {n} writes: {e}"));
        consistent(&mut fs);
        let sb = fs.superblock().clone();
        match (sb.block_count, sb.journal_count) {
            (b, 2) if b < 24 * 256 => old += 1,
            (b, 2) if b == 24 * 256 => grown += 1,
            (b, 3) if b == 24 * 256 => jadded += 1,
            other => panic!("after {n} writes: layout {other:?}"),
        }
        assert_eq!(fs.statfs().unwrap().total, crate::df(&*disk, &sb).unwrap().total);
        // Still usable, in old and new space alike.
        fill(&mut fs, "after", 128 * 1024);
        consistent(&mut fs);
        fs.unmount().unwrap();
        if sb.journal_count == 3 {
            let mut fs = Fs::mount(disk, 2).unwrap();
            consistent(&mut fs);
        }
        n += if n < 8 { 1 } else { 3 };
    }
    assert!(old > 0 && grown > 0 && jadded > 0, "{old} {grown} {jadded}");
}
