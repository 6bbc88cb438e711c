//! gfs_fsck on a small populated filesystem whose metadata blocks the input rewrites: the
//! check never panics, and after one `-y` run a second finds nothing to repair.
//!
//! Input: records of 6 bytes + payload: metadata block pick (2), offset in the block (2),
//! payload length (1), reseal flag (1), then the payload bytes written at the offset.
#![no_main]

use std::sync::{Arc, OnceLock};

use fsck::{check_device, Mode, Options};
use gfs::device::MemDevice;
use gfs::format::{Header, BLOCK_SIZE, SB_BLOCK};
use gfs::Device;
use libfuzzer_sys::fuzz_target;

/// The populated image and its metadata blocks (other than the superblock).
fn base() -> &'static (Vec<u8>, Vec<u64>) {
    static B: OnceLock<(Vec<u8>, Vec<u64>)> = OnceLock::new();
    B.get_or_init(|| {
        let dev = Arc::new(MemDevice::new(vec![0u8; 8 << 20]));
        let opts = gfs::MkfsOptions {
            lockproto: gfs::LockProto::Nolock,
            locktable: "fuzz:fsck".into(),
            journals: 1,
            journal_blocks: Some(64),
            rg_blocks: Some(512),
            overwrite: true,
        };
        let sb = gfs::mkfs(&*dev, &opts).unwrap();
        let mut fs = gfs::Fs::mount(dev.clone(), 0).unwrap();
        let root = fs.root();
        let a = fs.mkdir(root, b"a", 0o755, 0, 0).unwrap().ino;
        for i in 0..30u32 {
            let f = fs.mknod(if i % 3 == 0 { root } else { a }, format!("f{i}").as_bytes(), 0o100644, 0, 0, 0);
            let f = f.unwrap().ino;
            fs.write(f, 0, &vec![i as u8; 500 * i as usize]).unwrap();
            if i == 5 {
                fs.setxattr(f, b"user.k", b"v", 0).unwrap();
                fs.link(f, a, b"hard").unwrap();
            }
            fs.sync().unwrap();
        }
        fs.symlink(a, b"sym", b"f1", 0, 0).unwrap();
        fs.unmount().unwrap();
        let img = dev.image();
        let meta = ((SB_BLOCK + 1)..sb.block_count)
            .filter(|&b| Header::verify_any(&img[b as usize * BLOCK_SIZE..][..BLOCK_SIZE], b).is_ok())
            .collect();
        (img, meta)
    })
}

fuzz_target!(|data: &[u8]| {
    let (img, meta) = base();
    let mut img = img.clone();
    let mut d = data;
    while d.len() >= 6 {
        let pick = u16::from_le_bytes([d[0], d[1]]) as usize;
        let off = u16::from_le_bytes([d[2], d[3]]) as usize % BLOCK_SIZE;
        let len = (d[4] as usize).min(d.len() - 6);
        let reseal = d[5] & 1 == 1;
        let b = meta[pick % meta.len()] as usize;
        let blk: &mut [u8; BLOCK_SIZE] = (&mut img[b * BLOCK_SIZE..(b + 1) * BLOCK_SIZE]).try_into().unwrap();
        let n = len.min(BLOCK_SIZE - off);
        blk[off..off + n].copy_from_slice(&d[6..6 + n]);
        if reseal {
            Header::seal(blk);
        }
        d = &d[6 + len..];
    }
    let dev: Arc<dyn Device> = Arc::new(MemDevice::new(img));
    let yes = Options { mode: Mode::Yes, verbose: false, force: true };
    let mut out = std::io::sink();
    check_device(dev.clone(), &yes, &mut out).expect("the superblock is never touched");
    let again = check_device(dev, &yes, &mut out).unwrap();
    assert!(again.problems.is_empty(), "second run: {:#?}", again.problems);
});
