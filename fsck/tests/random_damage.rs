//! Property: whatever random damage is done to the metadata of a populated filesystem,
//! `gfs_fsck -y` never panics and a second run finds nothing left to repair (or, only when the
//! superblock cannot be rebuilt, both runs refuse with an operational error).
//! Damage: bit flips (checksum broken), and fields rewritten with plausible values behind a
//! resealed checksum (the blocks decode, the structure is wrong). Cases: 48 by default,
//! `FSCK_PROP_CASES=N` for more.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fsck::{check_device, Mode, Options};
use gfs::format::*;
use proptest::prelude::*;

struct Base {
    dir: PathBuf,
    img: PathBuf,
    /// Every metadata block outside the journals' log area.
    meta: Vec<u64>,
}

impl Drop for Base {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn build_base() -> Base {
    {
        let dir = std::env::temp_dir().join(format!("fsck-prop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("base.img");
        std::fs::File::create(&img).unwrap().set_len(24 << 20).unwrap();
        let dev = gfs::open_device(img.to_str().unwrap()).unwrap();
        let opts = gfs::MkfsOptions {
            lockproto: gfs::LockProto::Nolock,
            locktable: "prop:fsck".into(),
            journals: 2,
            journal_blocks: None,
            rg_blocks: Some(1024),
            overwrite: true,
        };
        let sb = gfs::mkfs(&*dev, &opts).unwrap();
        let mut fs = gfs::Fs::mount(dev.clone(), 0).unwrap();
        let root = fs.root();
        let a = fs.mkdir(root, b"a", 0o755, 0, 0).unwrap().ino;
        let b = fs.mkdir(a, b"b", 0o755, 0, 0).unwrap().ino;
        let many = fs.mkdir(root, b"many", 0o755, 0, 0).unwrap().ino;
        for i in 0..40u32 {
            let f = fs.mknod(if i % 2 == 0 { a } else { b }, format!("f{i}").as_bytes(), 0o100644, 0, 0, 0).unwrap();
            fs.write(f.ino, 0, &vec![i as u8; 1000 + 3000 * i as usize]).unwrap();
            if i % 10 == 0 {
                fs.setxattr(f.ino, b"user.x", b"value", 0).unwrap();
                fs.link(f.ino, root, format!("hard{i}").as_bytes()).unwrap();
            }
            fs.sync().unwrap();
        }
        for i in 0..400u32 {
            fs.mknod(many, format!("entry-{i}").as_bytes(), 0o100644, 0, 0, 0).unwrap();
            fs.sync().unwrap();
        }
        fs.symlink(root, b"sym", b"a/f0", 0, 0).unwrap();
        // Two files written block by block in turn: fragmented, with extent leaves.
        let x = fs.mknod(root, b"fragX", 0o100644, 0, 0, 0).unwrap().ino;
        let y = fs.mknod(root, b"fragY", 0o100644, 0, 0, 0).unwrap().ino;
        for k in 0..200u64 {
            fs.write(x, k * 4096, &[1u8; 4096]).unwrap();
            fs.write(y, k * 4096, &[2u8; 4096]).unwrap();
            fs.sync().unwrap();
        }
        fs.unmount().unwrap();
        drop(dev);
        // The metadata blocks.
        let data = std::fs::read(&img).unwrap();
        let jstart = sb.master_statfs + 1 + sb.journal_count as u64;
        let meta = (SB_BLOCK..sb.block_count)
            .filter(|&b| {
                let blk = &data[b as usize * BLOCK_SIZE..(b as usize + 1) * BLOCK_SIZE];
                let in_log = b >= jstart && b < sb.rg_start && Header::peek(blk).is_some_and(|h| h.block_type != 10);
                !in_log && Header::verify_any(blk, b).is_ok()
            })
            .collect();
        let opts = Options { mode: Mode::No, verbose: false, force: true };
        let s = check(&img, opts);
        assert!(s.problems.is_empty(), "base image not clean: {:#?}", s.problems);
        Base { dir, img, meta }
    }
}

fn check(img: &Path, opts: Options) -> fsck::Summary {
    try_check(img, opts).unwrap_or_else(|e| panic!("gfs_fsck failed: {e}"))
}

fn try_check(img: &Path, opts: Options) -> Result<fsck::Summary, fsck::FsckError> {
    let dev: Arc<dyn gfs::Device> = gfs::open_device(img.to_str().unwrap()).unwrap();
    let mut out = Vec::new();
    check_device(dev, &opts, &mut out)
}

#[derive(Debug, Clone)]
enum Damage {
    /// Flip one bit (checksum no longer matches).
    Flip { which: usize, bit: u32 },
    /// Overwrite 8 bytes at a body offset with a value, then reseal the checksum.
    Field { which: usize, off: u16, value: u64 },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 0..(BLOCK_SIZE as u32 * 8)).prop_map(|(which, bit)| Damage::Flip { which, bit }),
        (any::<usize>(), 24u16..(BLOCK_SIZE as u16 - 8), any::<u64>(), 0u8..4).prop_map(|(which, off, v, kind)| {
            // Mostly plausible values: small counts, block numbers inside the filesystem.
            let value = match kind {
                0 => v % 4,
                1 => v % 70_000,
                2 => v & 0xffff_ffff,
                _ => v,
            };
            Damage::Field { which, off, value }
        }),
    ]
}

type Edit = Box<dyn Fn(&mut Block)>;

fn apply(img: &Path, meta: &[u64], d: &Damage) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(img).unwrap();
    let (which, edit): (usize, Edit) = match *d {
        Damage::Flip { which, bit } => (which, Box::new(move |b: &mut Block| b[(bit / 8) as usize] ^= 1 << (bit % 8))),
        Damage::Field { which, off, value } => (
            which,
            Box::new(move |b: &mut Block| {
                b[off as usize..off as usize + 8].copy_from_slice(&value.to_le_bytes());
                Header::seal(b);
            }),
        ),
    };
    let blk = meta[which % meta.len()];
    let mut b = Box::new([0u8; BLOCK_SIZE]);
    f.read_exact_at(&mut b[..], blk * BLOCK_SIZE as u64).unwrap();
    edit(&mut b);
    f.write_all_at(&b[..], blk * BLOCK_SIZE as u64).unwrap();
}

fn cases() -> u32 {
    std::env::var("FSCK_PROP_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48)
}

#[test]
fn repair_converges() {
    let b = build_base();
    let config = ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&proptest::collection::vec(damage(), 1..4), |damages| {
        let img = b.dir.join("case.img");
        std::fs::copy(&b.img, &img).unwrap();
        for d in &damages {
            apply(&img, &b.meta, d);
        }
        let yes = Options { mode: Mode::Yes, verbose: false, force: true };
        let first = try_check(&img, yes);
        let second = try_check(&img, yes);
        match (first, second) {
            (Err(fsck::FsckError::Superblock(_)), Err(fsck::FsckError::Superblock(_))) => {}
            (Ok(_), Ok(second)) => {
                prop_assert!(second.problems.is_empty(), "second -y run still found: {:#?}", second.problems)
            }
            (a, b) => {
                prop_assert!(false, "first run {:?}, second run {:?}", a.map(|s| s.problems), b.map(|s| s.problems))
            }
        }
        Ok(())
    });
    drop(b);
    if let Err(e) = result {
        panic!("{e}");
    }
}
