//! gfs_fsck against damaged filesystems: a file set is written through mount.gfs (in a
//! private mount namespace), then for each damage class, one structure at a time, on a copy
//! of the image: `gfs_fsck -n` exits 4, `gfs_fsck -y` exits 1, `gfs_fsck -n` exits 0, and
//! every file the damage did not touch reads back the same (same inode, mode and bytes)
//! through the filesystem library. Random bit flips in metadata blocks likewise.

use gnbd_tests::gfs_harness::{in_mount_namespace, mkfs_image};
use gnbd_tests::{bin, require_tool, run_timeout, OutputExt, TempDir};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gfs::format::*;

const POPULATE: &str = r#"
cd $MNT
mkdir -p a/b/c d e/f
for i in $(seq 1 30); do head -c $((i * 1500)) /dev/urandom > a/f$i; done
for i in $(seq 1 700); do echo "name $i" > d/n$i; done
for i in $(seq 1 5); do echo "deep $i" > a/b/c/x$i; echo "e $i" > e/f/y$i; done
head -c 2000000 /dev/urandom > big
python3 -c "
import os
os.setxattr('big', 'user.k', b'v' * 100)
a = open('fragA', 'wb'); b = open('fragB', 'wb')
for i in range(400):
    a.write(os.urandom(4096)); a.flush(); os.fsync(a.fileno())
    b.write(os.urandom(4096)); b.flush(); os.fsync(b.fileno())
"
ln a/f1 a/b/hard
ln -s a/f2 sym
cd /
umount $MNT
"#;

/// Builds and populates a filesystem image in `dir`.
fn build_image(dir: &Path) -> PathBuf {
    require_tool("unshare");
    require_tool("python3");
    let img = dir.join("base.img");
    mkfs_image(&img, 64, "lock_nolock", "test:fsck", 2);
    in_mount_namespace(
        dir,
        &img.display().to_string(),
        &format!("$MOUNT $DEV $MNT -o log=$WORK/mount.log\n{POPULATE}"),
    )
    .assert_success("populate through mount.gfs");
    img
}

#[derive(Debug, Clone, PartialEq)]
struct FileState {
    ino: u64,
    mode: u32,
    data: Vec<u8>,
}

/// Every path under the root with its inode, mode and contents, read through the library.
fn snapshot(img: &Path) -> BTreeMap<String, FileState> {
    let dev = gfs::open_device(img.to_str().unwrap()).unwrap();
    let mut fs = gfs::Fs::mount(dev, 0).expect("mount after fsck");
    let mut out = BTreeMap::new();
    let mut stack = vec![(fs.root(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let mut off = 0;
        loop {
            let ents = fs.readdir(dir, off, 512).expect("readdir");
            let Some(last) = ents.last() else { break };
            off = last.offset;
            for e in ents {
                if e.name == b"." || e.name == b".." {
                    continue;
                }
                let path = format!("{prefix}/{}", String::from_utf8_lossy(&e.name));
                let a = fs.getattr(e.ino).expect("getattr");
                let data = match a.mode & 0o170000 {
                    0o040000 => {
                        stack.push((e.ino, path.clone()));
                        Vec::new()
                    }
                    0o120000 => fs.readlink(e.ino).expect("readlink"),
                    0o100000 => fs.read(e.ino, 0, a.size as usize).expect("read"),
                    _ => Vec::new(),
                };
                out.insert(path, FileState { ino: a.ino, mode: a.mode, data });
            }
        }
    }
    fs.unmount().unwrap();
    out
}

fn read_blk(img: &Path, b: u64) -> Box<Block> {
    let f = std::fs::File::open(img).unwrap();
    let mut x = Box::new([0u8; BLOCK_SIZE]);
    f.read_exact_at(&mut x[..], b * BLOCK_SIZE as u64).unwrap();
    x
}

fn write_blk(img: &Path, b: u64, x: &Block) {
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(&x[..], b * BLOCK_SIZE as u64).unwrap();
}

fn dinode(img: &Path, ino: u64) -> Dinode {
    Dinode::decode(&read_blk(img, ino)[..], ino).unwrap()
}

fn edit_dinode(img: &Path, ino: u64, f: impl FnOnce(&mut Dinode)) {
    let mut d = dinode(img, ino);
    f(&mut d);
    write_blk(img, ino, &d.encode(ino));
}

/// Leaf blocks of a directory with an inline hash table (with their overflow leaves).
fn leaves(img: &Path, dir: u64) -> Vec<(u64, DirLeaf)> {
    let Content::DirHash(t) = dinode(img, dir).content else { panic!("directory {dir} has no inline table") };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for p in t {
        let mut b = p;
        while b != 0 && seen.insert(b) {
            let l = DirLeaf::decode(&read_blk(img, b)[..], b).unwrap();
            let n = l.next;
            out.push((b, l));
            b = n;
        }
    }
    out
}

fn extents(img: &Path, ino: u64) -> Vec<Extent> {
    match dinode(img, ino).content {
        Content::Extents(v) => v,
        Content::Index(ix) => {
            ix.iter().flat_map(|x| ExtentLeaf::decode(&read_blk(img, x.leaf)[..], x.leaf).unwrap().extents).collect()
        }
        _ => Vec::new(),
    }
}

fn fsck(img: &Path, flag: &str) -> std::process::Output {
    run_timeout(Command::new(bin("gfs_fsck")).arg(flag).arg(img), Duration::from_secs(120))
}

struct Fixture {
    base: PathBuf,
    snap: BTreeMap<String, FileState>,
}

/// The shared base image lives (statics are never dropped) in `<tmp>/fsck-fixture-<pid>`;
/// those of test processes that are gone are removed first.
fn fixture_dir() -> PathBuf {
    let tmp = std::env::temp_dir();
    for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("fsck-fixture-") {
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = tmp.join(format!("fsck-fixture-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fixture() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let dir = fixture_dir();
        let base = build_image(&dir);
        fsck(&base, "-n").assert_code(0, "gfs_fsck -n on the freshly populated filesystem");
        let snap = snapshot(&base);
        // The snapshot mounted and unmounted the image: still clean.
        fsck(&base, "-n").assert_code(0, "gfs_fsck -n after a library mount");
        assert!(snap.len() > 750, "file set: {} paths", snap.len());
        Fixture { base, snap }
    })
}

impl Fixture {
    fn ino(&self, path: &str) -> u64 {
        self.snap.get(path).unwrap_or_else(|| panic!("{path} not in the file set")).ino
    }
}

/// Runs the -n / -y / -n sequence on a damaged copy and checks every path not under
/// `touched` (paths, or prefixes ending in '/') is intact.
fn check_repair(name: &str, damage: impl FnOnce(&Fixture, &Path) -> Vec<String>) {
    let fx = fixture();
    let dir = TempDir::new();
    let img = dir.join("img");
    std::fs::copy(&fx.base, &img).unwrap();
    let touched = damage(fx, &img);
    run_sequence(name, &img);
    let after = snapshot(&img);
    for (path, st) in &fx.snap {
        let hit = touched.iter().any(|t| path == t || (t.ends_with('/') && path.starts_with(t.as_str())));
        if hit {
            continue;
        }
        assert_eq!(after.get(path), Some(st), "{name}: {path} not intact after repair");
    }
}

fn run_sequence(name: &str, img: &Path) {
    let first = fsck(img, "-n");
    first.assert_code(4, &format!("{name}: gfs_fsck -n on the damaged image"));
    fsck(img, "-y").assert_code(1, &format!("{name}: gfs_fsck -y"));
    let again = fsck(img, "-n");
    again.assert_code(0, &format!("{name}: gfs_fsck -n after repair (first run said:\n{})", first.stdout_str()));
}

fn break_checksum(img: &Path, b: u64) {
    let mut x = read_blk(img, b);
    x[BLOCK_SIZE - 1] ^= 0x5a;
    write_blk(img, b, &x);
}

fn superblock(img: &Path) -> Superblock {
    Superblock::decode(&read_blk(img, SB_BLOCK)[..]).unwrap()
}

#[test]
fn resource_groups_bitmaps_statfs() {
    check_repair("rgrp header checksum", |_, img| {
        let sb = superblock(img);
        break_checksum(img, sb.rg_extent(1).0);
        vec![]
    });
    check_repair("rgrp free count", |_, img| {
        let a = superblock(img).rg_extent(0).0;
        let mut r = Rgrp::decode(&read_blk(img, a)[..], a).unwrap();
        r.free -= 7;
        write_blk(img, a, &r.encode(a));
        vec![]
    });
    check_repair("bitmap checksum", |_, img| {
        break_checksum(img, superblock(img).rg_extent(0).0 + 1);
        vec![]
    });
    check_repair("bitmap: block in use marked free", |fx, img| {
        let ino = fx.ino("/a/f9");
        let a = superblock(img).rg_extent(0).0;
        let r = Rgrp::decode(&read_blk(img, a)[..], a).unwrap();
        assert!(ino >= r.data0 && ino < r.data0 + r.data_count as u64, "inode in group 0");
        let mut bm = Bitmap::decode(&read_blk(img, a + 1)[..], a + 1).unwrap();
        bm.set((ino - r.data0) as u32, BlockState::Free);
        write_blk(img, a + 1, &bm.encode(a + 1));
        vec![]
    });
    check_repair("bitmap: free block marked in use", |_, img| {
        let a = superblock(img).rg_extent(3).0;
        let mut bm = Bitmap::decode(&read_blk(img, a + 1)[..], a + 1).unwrap();
        let free = bm.find_free(100, 10000).unwrap();
        bm.set(free, BlockState::Data);
        write_blk(img, a + 1, &bm.encode(a + 1));
        vec![]
    });
    check_repair("statfs master", |_, img| {
        let m = superblock(img).master_statfs;
        let mut s = Statfs::decode(&read_blk(img, m)[..], m).unwrap();
        s.free += 1000;
        write_blk(img, m, &s.encode(m));
        vec![]
    });
    check_repair("statfs change block checksum", |_, img| {
        break_checksum(img, superblock(img).master_statfs + 2);
        vec![]
    });
}

#[test]
fn journals() {
    check_repair("journal index checksum", |_, img| {
        break_checksum(img, superblock(img).jindex_block);
        vec![]
    });
    check_repair("journal header checksum", |_, img| {
        let sb = superblock(img);
        let j = JIndex::decode(&read_blk(img, sb.jindex_block)[..], sb.jindex_block).unwrap();
        break_checksum(img, j.journals[1].start);
        vec![]
    });
    // A node that died after committing: the journal holds a transaction not yet home.
    let fx = fixture();
    let dir = TempDir::new();
    let img = dir.join("img");
    std::fs::copy(&fx.base, &img).unwrap();
    {
        let dev = gfs::open_device(img.to_str().unwrap()).unwrap();
        let mut fs = gfs::Fs::mount(dev, 0).unwrap();
        let root = fs.root();
        let a = fs.mknod(root, b"journaled", 0o100644, 0, 0, 0).unwrap();
        fs.write(a.ino, 0, b"from the journal").unwrap();
        fs.commit().unwrap();
        drop(fs); // no unmount: as if the node died here
    }
    run_sequence("dirty journal", &img);
    let after = snapshot(&img);
    assert_eq!(after["/journaled"].data, b"from the journal", "replayed transaction");
    for (path, st) in &fx.snap {
        assert_eq!(after.get(path), Some(st), "dirty journal: {path} not intact");
    }
}

#[test]
fn inodes_and_block_maps() {
    check_repair("file dinode checksum", |fx, img| {
        break_checksum(img, fx.ino("/a/f3"));
        vec!["/a/f3".into()]
    });
    check_repair("extent pointer outside the filesystem", |fx, img| {
        let bc = superblock(img).block_count;
        edit_dinode(img, fx.ino("/a/f4"), |d| {
            if let Content::Extents(v) = &mut d.content {
                v[0].physical = bc + 5;
            }
        });
        vec!["/a/f4".into()]
    });
    check_repair("extent pointer into metadata", |fx, img| {
        let rg = superblock(img).rg_extent(1).0;
        edit_dinode(img, fx.ino("/a/f6"), |d| {
            if let Content::Extents(v) = &mut d.content {
                v[0].physical = rg;
                v[0].len = 1;
            }
        });
        vec!["/a/f6".into()]
    });
    check_repair("blocks claimed twice", |fx, img| {
        let other = extents(img, fx.ino("/a/f20"))[0];
        edit_dinode(img, fx.ino("/a/f5"), |d| {
            if let Content::Extents(v) = &mut d.content {
                v[0].physical = other.physical;
                v[0].len = v[0].len.min(other.len);
            }
        });
        vec!["/a/f5".into(), "/a/f20".into()]
    });
    check_repair("extent leaf checksum", |fx, img| {
        let Content::Index(ix) = dinode(img, fx.ino("/fragA")).content else { panic!("fragA is not fragmented") };
        break_checksum(img, ix[0].leaf);
        vec!["/fragA".into()]
    });
    check_repair("xattr block checksum", |fx, img| {
        let x = dinode(img, fx.ino("/big")).xattr_block;
        assert_ne!(x, 0);
        break_checksum(img, x);
        vec!["/big".into()]
    });
    check_repair("block count", |fx, img| {
        edit_dinode(img, fx.ino("/a/f7"), |d| d.blocks += 3);
        vec![]
    });
    check_repair("link count", |fx, img| {
        edit_dinode(img, fx.ino("/a/f8"), |d| d.nlink = 5);
        vec![]
    });
    check_repair("directory link count", |fx, img| {
        edit_dinode(img, fx.ino("/a"), |d| d.nlink = 9);
        vec![]
    });
}

#[test]
fn directories_and_connectivity() {
    check_repair("directory leaf checksum", |fx, img| {
        let (b, l) = leaves(img, fx.ino("/d")).into_iter().nth(1).unwrap();
        break_checksum(img, b);
        l.entries.iter().map(|e| format!("/d/{}", String::from_utf8_lossy(&e.name))).collect()
    });
    check_repair("entry pointing at a data block", |fx, img| {
        let data = extents(img, fx.ino("/big"))[0].physical;
        let (b, mut l) = leaves(img, fx.ino("/a")).remove(0);
        let victim = String::from_utf8_lossy(&l.entries[0].name).into_owned();
        l.entries[0].inum = data;
        write_blk(img, b, &l.encode(b));
        vec![format!("/a/{victim}"), format!("/a/{victim}/")]
    });
    check_repair("directory entry count", |fx, img| {
        edit_dinode(img, fx.ino("/d"), |d| d.dir_entries += 2);
        vec![]
    });
    check_repair("wrong '..'", |fx, img| {
        let root = superblock(img).root_dinode;
        edit_dinode(img, fx.ino("/a/b"), |d| d.parent = root);
        vec![]
    });
    check_repair("directory dinode checksum", |fx, img| {
        break_checksum(img, fx.ino("/e"));
        vec!["/e".into(), "/e/".into()]
    });
    // An entry removed: the file is an orphan and must come back in lost+found, intact.
    let fx = fixture();
    let dir = TempDir::new();
    let img = dir.join("img");
    std::fs::copy(&fx.base, &img).unwrap();
    let victim = fx.ino("/a/f10");
    let adir = fx.ino("/a");
    for (b, mut l) in leaves(&img, adir) {
        if l.entries.iter().any(|e| e.inum == victim) {
            l.entries.retain(|e| e.inum != victim);
            write_blk(&img, b, &l.encode(b));
        }
    }
    edit_dinode(&img, adir, |d| d.dir_entries -= 1);
    run_sequence("orphaned file", &img);
    let after = snapshot(&img);
    let found = after.get(&format!("/lost+found/#{victim}")).expect("orphan in lost+found");
    assert_eq!(found.data, fx.snap["/a/f10"].data, "orphan's contents");
    // An orphaned directory keeps its subtree.
    let img2 = dir.join("img2");
    std::fs::copy(&fx.base, &img2).unwrap();
    let victim = fx.ino("/a/b");
    for (b, mut l) in leaves(&img2, adir) {
        if l.entries.iter().any(|e| e.inum == victim) {
            l.entries.retain(|e| e.inum != victim);
            write_blk(&img2, b, &l.encode(b));
        }
    }
    edit_dinode(&img2, adir, |d| d.dir_entries -= 1);
    run_sequence("orphaned directory", &img2);
    let after = snapshot(&img2);
    assert_eq!(after[&format!("/lost+found/#{victim}/c/x3")], fx.snap["/a/b/c/x3"], "orphan directory's subtree");
}

/// Metadata blocks of the image (header verifies, superblock included), outside the journals' log
/// area.
fn metadata_blocks(img: &Path) -> Vec<(u64, u16)> {
    let sb = superblock(img);
    let j = JIndex::decode(&read_blk(img, sb.jindex_block)[..], sb.jindex_block).unwrap();
    let data = std::fs::read(img).unwrap();
    let mut out = Vec::new();
    for b in SB_BLOCK..sb.block_count {
        if j.journals.iter().any(|e| b > e.start && b < e.start + e.blocks as u64) {
            continue;
        }
        let blk = &data[b as usize * BLOCK_SIZE..(b as usize + 1) * BLOCK_SIZE];
        if let Ok(t) = Header::verify_any(blk, b) {
            out.push((b, t));
        }
    }
    out
}

/// Paths a damaged block may take away: the inode and, for directories, everything under it.
fn touched_by(fx: &Fixture, img: &Path, b: u64, t: u16) -> Vec<String> {
    let blk = read_blk(&fx.base, b);
    let owner = match BlockType::from_u16(t) {
        Some(BlockType::Dinode) => b,
        Some(BlockType::DirLeaf) => DirLeaf::decode(&blk[..], b).unwrap().owner,
        Some(BlockType::DirTable) => DirTable::decode(&blk[..], b).unwrap().owner,
        Some(BlockType::ExtentLeaf) => ExtentLeaf::decode(&blk[..], b).unwrap().owner,
        Some(BlockType::Xattr) => XattrBlock::decode(&blk[..], b).unwrap().owner,
        _ => return vec![],
    };
    let _ = img;
    if owner == superblock(&fx.base).root_dinode {
        return vec!["/".into()];
    }
    fx.snap.iter().filter(|(_, s)| s.ino == owner).flat_map(|(p, _)| [p.clone(), format!("{p}/")]).collect()
}

#[test]
fn random_bit_flips_in_metadata() {
    let fx = fixture();
    let blocks = metadata_blocks(&fx.base);
    let n: u64 = std::env::var("FSCK_BITFLIPS").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..n {
        let (b, t) = blocks[(next() % blocks.len() as u64) as usize];
        let bit = next() % (BLOCK_SIZE as u64 * 8);
        check_repair(&format!("bit flip {i}: block {b} (type {t}) bit {bit}"), |fx, img| {
            let mut x = read_blk(img, b);
            x[(bit / 8) as usize] ^= 1 << (bit % 8);
            write_blk(img, b, &x);
            touched_by(fx, img, b, t)
        });
    }
}

#[test]
fn superblock_and_operational_errors() {
    check_repair("superblock checksum", |_, img| {
        break_checksum(img, SB_BLOCK);
        vec![]
    });
    check_repair("superblock and journal index", |_, img| {
        let sb = superblock(img);
        break_checksum(img, sb.jindex_block);
        break_checksum(img, SB_BLOCK);
        vec![]
    });
    let dir = TempDir::new();
    let img = dir.join("zeros");
    std::fs::File::create(&img).unwrap().set_len(8 << 20).unwrap();
    fsck(&img, "-n").assert_code(8, "gfs_fsck -n on a device with no filesystem");
    let out = run_timeout(Command::new(bin("gfs_fsck")).args(["-n", "-y"]).arg(&img), Duration::from_secs(30));
    out.assert_code(16, "conflicting options");
}

#[test]
fn preen_leaves_unsafe_repairs_alone() {
    let fx = fixture();
    let dir = TempDir::new();
    // Safe only (a link count): preen repairs it.
    let img = dir.join("safe");
    std::fs::copy(&fx.base, &img).unwrap();
    edit_dinode(&img, fx.ino("/a/f11"), |d| d.nlink = 3);
    fsck(&img, "-p").assert_code(1, "gfs_fsck -p on a wrong link count");
    fsck(&img, "-n").assert_code(0, "gfs_fsck -n after preening");
    // Unsafe (an entry must go): preen writes nothing and exits 4.
    let img = dir.join("unsafe");
    std::fs::copy(&fx.base, &img).unwrap();
    break_checksum(&img, fx.ino("/a/f12"));
    let before = std::fs::read(&img).unwrap();
    let out = fsck(&img, "-p");
    out.assert_code(4, "gfs_fsck -p on a damaged dinode");
    assert!(out.stdout_str().contains("UNEXPECTED INCONSISTENCY"), "{}", out.describe());
    assert!(std::fs::read(&img).unwrap() == before, "preen changed the image");
    fsck(&img, "-y").assert_code(1, "gfs_fsck -y after preen gave up");
}

/// After a repair the filesystem mounts through mount.gfs: orphans are listed in lost+found
/// and untouched files read back the same through the kernel.
#[test]
fn repaired_filesystem_mounts_through_fuse() {
    let fx = fixture();
    let dir = TempDir::new();
    let img = dir.join("img");
    std::fs::copy(&fx.base, &img).unwrap();
    let (b, l) = leaves(&img, fx.ino("/d")).into_iter().nth(1).unwrap();
    break_checksum(&img, b);
    run_sequence("directory leaf, then FUSE mount", &img);
    std::fs::write(dir.join("f1.expected"), &fx.snap["/a/f1"].data).unwrap();
    std::fs::write(dir.join("big.expected"), &fx.snap["/big"].data).unwrap();
    let mnt = dir.join("mnt");
    let script = dir.join("mount.sh");
    std::fs::write(
        &script,
        format!(
            "set -eu\nMNT={mnt}\ncleanup() {{ umount $MNT 2>/dev/null || umount -l $MNT 2>/dev/null || true; }}\n\
             trap cleanup EXIT\nmkdir -p $MNT\n{mount} {img} $MNT -o log={work}/mount.log\n\
             cmp $MNT/a/f1 {work}/f1.expected\ncmp $MNT/big {work}/big.expected\n\
             echo lost=$(ls $MNT/lost+found | wc -l)\necho d=$(ls $MNT/d | wc -l)\numount $MNT\n",
            mnt = mnt.display(),
            mount = bin("mount_gfs").display(),
            img = img.display(),
            work = dir.path().display(),
        ),
    )
    .unwrap();
    let out = run_timeout(
        Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-x"]).arg(&script),
        Duration::from_secs(60),
    );
    out.assert_success("mount.gfs after repair");
    let n = l.entries.len();
    assert!(out.stdout_str().contains(&format!("lost={n}")), "{n} orphans in lost+found: {}", out.describe());
    assert!(out.stdout_str().contains(&format!("d={}", 700 - n)), "{}", out.describe());
}
