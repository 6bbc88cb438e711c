//! gfs_fsck after a power cut during an online grow and journal add (`Fs::grow`,
//! `Fs::add_journals`): for a cut after every one of their device writes, the journal holds
//! the layout change or nothing of it; `gfs_fsck -y` replays it (re-reading the superblock
//! and journal index it brings) and a second `gfs_fsck -n` finds nothing. Every run ends
//! with the old layout, the grown one, or the grown one with the new journal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fsck::{check_device, Mode, Options};

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn check(img: &Path, mode: Mode) -> fsck::Summary {
    let dev: Arc<dyn gfs::Device> = gfs::open_device(img.to_str().unwrap()).unwrap();
    let mut out = Vec::new();
    let opts = Options { mode, verbose: false, force: true };
    check_device(dev, &opts, &mut out)
        .unwrap_or_else(|e| panic!("gfs_fsck failed: {e}\n{}", String::from_utf8_lossy(&out)))
}

/// Mounts, writes a file, grows into the new space and adds a journal, through a device
/// that drops every write after the `limit`th; returns the writes it saw. No unmount: the
/// power is cut.
fn run(img: &Path, limit: u64) -> u64 {
    let dev = gfs::open_device(img.to_str().unwrap()).unwrap();
    let cut = Arc::new(gfs::CutoffDevice::new(dev, limit));
    let r = (|| -> Result<(), Box<dyn std::error::Error>> {
        let mut fs = gfs::Fs::mount(cut.clone(), 0)?;
        let f = fs.mknod(fs.root(), b"kept", 0o100644, 0, 0, 0)?;
        fs.write(f.ino, 0, &[7u8; 30_000])?;
        fs.sync()?;
        fs.grow(None, false)?;
        fs.add_journals(1, None, false)?;
        Ok(())
    })();
    if limit == u64::MAX {
        r.unwrap();
    }
    cut.writes()
}

#[test]
fn a_cut_during_grow_and_jadd_is_replayed_by_fsck() {
    let dir = Dir(std::env::temp_dir().join(format!("fsck-grow-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let base = dir.0.join("base.img");
    std::fs::File::create(&base).unwrap().set_len(16 << 20).unwrap();
    let opts = gfs::MkfsOptions {
        lockproto: gfs::LockProto::Nolock,
        locktable: "grow:fsck".into(),
        journals: 2,
        journal_blocks: Some(600),
        rg_blocks: Some(1024),
        overwrite: true,
    };
    gfs::mkfs(&*gfs::open_device(base.to_str().unwrap()).unwrap(), &opts).unwrap();
    std::fs::OpenOptions::new().write(true).open(&base).unwrap().set_len(24 << 20).unwrap();
    let img = dir.0.join("img");
    std::fs::copy(&base, &img).unwrap();
    let total = run(&img, u64::MAX);
    let mut seen = std::collections::BTreeSet::new();
    let mut replayed_layout = false;
    let mut n = 0;
    while n <= total {
        std::fs::copy(&base, &img).unwrap();
        run(&img, n);
        let first = check(&img, Mode::Yes);
        let again = check(&img, Mode::No);
        assert!(again.problems.is_empty(), "after {n} writes, -y left: {:#?}", again.problems);
        let dev = gfs::open_device(img.to_str().unwrap()).unwrap();
        let sb = gfs::read_superblock(&*dev).unwrap();
        assert!(
            matches!((sb.block_count, sb.journal_count), (4096, 2)) || sb.block_count == 24 << 8,
            "after {n} writes: {sb:?}"
        );
        if first.journals_replayed > 0 && sb.block_count == 24 << 8 {
            replayed_layout = true;
        }
        seen.insert((sb.block_count == 24 << 8, sb.journal_count));
        n += if n < 10 { 1 } else { 2 };
    }
    assert_eq!(seen.len(), 3, "layouts seen: {seen:?}");
    assert!(replayed_layout, "no cut left the grow in the journal for fsck to replay");
}
