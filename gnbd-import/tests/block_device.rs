//! `run_block_device` in-process: a `blockdev::FileDevice` (a temporary file) served as a
//! loop device over FUSE with a stable name, written, discarded and read back with O_DIRECT
//! through that name, its control socket answering `status`, `remove_block_device`
//! refused while the device is held, then removing it, and nothing left behind (loop
//! device, link, mount, record, socket).
//!
//! Needs root, /dev/fuse and loop devices. The test runs itself again inside
//! `unshare -m --propagation private`, so its FUSE mount is seen by no other process.

use gnbd_import::{control, run_block_device, BlockDeviceConfig, BlockDeviceError, BlockRecord};
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "GNBD_IMPORT_BLOCK_DEVICE_CHILD";
const SIZE: u64 = 16 << 20;

/// A directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = std::env::temp_dir().join(format!("gnbd-import-blockdev-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A 4096-aligned buffer of `len` bytes inside `storage` (O_DIRECT needs aligned memory).
fn aligned(storage: &mut Vec<u8>, len: usize) -> &mut [u8] {
    storage.resize(len + 4096, 0);
    let at = storage.as_ptr().align_offset(4096);
    &mut storage[at..at + len]
}

fn pattern(offset: u64, buf: &mut [u8], seed: u8) {
    for (i, b) in buf.iter_mut().enumerate() {
        let pos = offset + i as u64;
        *b = ((pos / 512) as u8).wrapping_mul(31) ^ (pos as u8) ^ seed;
    }
}

fn mounted(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = path.to_string_lossy();
    info.lines().find(|l| l.split(' ').nth(4) == Some(&*want)).map(str::to_string)
}

fn backing_file(loop_device: &Path) -> Option<String> {
    let name = loop_device.file_name()?.to_str()?;
    std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok().map(|s| s.trim_end().to_string())
}

/// Stops the device however the test ends, and waits (bounded) for it to be torn down.
struct Running {
    signals: daemon::Signals,
    done: mpsc::Receiver<anyhow::Result<()>>,
    finished: Option<anyhow::Result<()>>,
}

impl Running {
    fn wait(&mut self, limit: Duration) -> &anyhow::Result<()> {
        if self.finished.is_none() {
            let r = self.done.recv_timeout(limit).expect("run_block_device did not return in time");
            self.finished = Some(r);
        }
        self.finished.as_ref().expect("set above")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.finished.is_none() {
            self.signals.request_stop();
            let _ = self.done.recv_timeout(Duration::from_secs(60));
        }
    }
}

#[test]
fn a_file_device_is_served_as_a_loop_device_and_torn_down_on_stop() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return in_private_namespace();
    }
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new("unshare")
        .args(["-m", "--propagation", "private"])
        .arg(exe)
        .args(["--exact", "a_file_device_is_served_as_a_loop_device_and_torn_down_on_stop", "--nocapture"])
        .env(CHILD_ENV, "1")
        .spawn()
        .expect("cannot run unshare (util-linux)");
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the test did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "the test in its own mount namespace failed: {status}");
}

fn in_private_namespace() {
    let tmp = TempDir::new();
    let img = tmp.0.join("lv0.img");
    let mut seed = vec![0u8; SIZE as usize];
    pattern(0, &mut seed, 0x5a);
    std::fs::write(&img, &seed).unwrap();
    let dev = Arc::new(blockdev::FileDevice::open(&img).unwrap());

    let link = tmp.0.join("dev").join("vg0").join("lv0");
    let cfg = BlockDeviceConfig::in_dir(&tmp.0.join("state"), "vg0-lv0", "vg0/lv0", &link, "clvm");
    assert_eq!(cfg.fsname, "clvm:vg0/lv0");
    let signals = daemon::signals::install().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel::<BlockRecord>();
    let (done_tx, done_rx) = mpsc::channel();
    let run_cfg = cfg.clone();
    let run_signals = signals.clone();
    std::thread::spawn(move || {
        let r = run_block_device(dev, run_cfg, run_signals, |rec| ready_tx.send(rec.clone()).unwrap());
        let _ = done_tx.send(r);
    });
    let mut running = Running { signals: signals.clone(), done: done_rx, finished: None };
    let record = match ready_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(r) => r,
        Err(_) => panic!("the device never became ready: {:?}", running.wait(Duration::from_secs(60))),
    };

    // What was set up: record, link, loop device over the FUSE file, the mount's names.
    assert_eq!(record.size, SIZE);
    assert_eq!(record.pid, std::process::id());
    assert_eq!(gnbd_import::read_block_record(&cfg.record_path).unwrap(), record);
    assert_eq!(std::fs::read_link(&link).unwrap(), record.loop_device);
    assert_eq!(backing_file(&record.loop_device).as_deref(), Some(&*record.file.to_string_lossy()));
    let mount = mounted(&cfg.mountpoint).expect("the FUSE file is mounted");
    // The type is `fuse` or `fuse.clvm` (the subtype shows where mount(8) records it).
    let (_, fields) = mount.split_once(" - ").unwrap();
    let mut fields = fields.split(' ');
    assert!(fields.next().is_some_and(|t| t.starts_with("fuse")), "{mount}");
    assert_eq!(fields.next(), Some("clvm:vg0/lv0"), "{mount}");
    assert!(cfg.socket_path.exists());

    // The seeded content reads back through the device.
    let mut storage = vec![];
    let f = OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(&link).unwrap();
    let buf = aligned(&mut storage, 1 << 20);
    f.read_exact_at(buf, 3 << 20).unwrap();
    assert!(buf[..] == seed[3 << 20..4 << 20], "seeded content differs through the device");

    // O_DIRECT writes of several sizes, read back through the device and found in the file.
    let writes: [(u64, usize); 4] = [(0, 4096), (1 << 20, 4 << 20), ((8 << 20) + 512, 64 << 10), (SIZE - 8192, 8192)];
    for (i, &(off, len)) in writes.iter().enumerate() {
        let buf = aligned(&mut storage, len);
        pattern(off, buf, i as u8 + 1);
        f.write_all_at(buf, off).unwrap();
    }
    f.sync_all().unwrap();
    for (i, &(off, len)) in writes.iter().enumerate() {
        let mut want = vec![0u8; len];
        pattern(off, &mut want, i as u8 + 1);
        let buf = aligned(&mut storage, len);
        f.read_exact_at(buf, off).unwrap();
        assert!(buf[..] == want[..], "write {i} at {off} reads back wrong through the device");
        let mut file = std::fs::File::open(&img).unwrap();
        file.seek(SeekFrom::Start(off)).unwrap();
        let mut got = vec![0u8; len];
        file.read_exact(&mut got).unwrap();
        assert!(got == want, "write {i} at {off} did not reach the backing file");
    }
    // Past the end: nothing is read, a write fails.
    let buf = aligned(&mut storage, 4096);
    assert_eq!(f.read_at(buf, SIZE).unwrap(), 0);
    assert!(f.write_at(buf, SIZE).is_err(), "a write past the end succeeded");

    // Discard (the loop device punches a hole in the FUSE file): zeros afterwards.
    let out = Command::new("blkdiscard")
        .args(["-o", &(2u64 << 20).to_string(), "-l", &(1u64 << 20).to_string()])
        .arg(&record.loop_device)
        .output()
        .expect("cannot run blkdiscard");
    assert!(out.status.success(), "blkdiscard: {}", String::from_utf8_lossy(&out.stderr));
    let buf = aligned(&mut storage, 1 << 20);
    f.read_exact_at(buf, 2 << 20).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "a discarded range does not read as zeros");

    // The control socket: status, and a stop refused while the device is held.
    let status = control::status(&cfg.socket_path, Duration::from_secs(10)).unwrap();
    assert_eq!(status.state, "active");
    assert!(status.writes >= 4 && status.reads >= 5, "{status:?}");
    assert_eq!(status.errors, 0, "{status:?}");
    {
        let _held = OpenOptions::new().read(true).custom_flags(libc::O_EXCL).open(&record.loop_device).unwrap();
        match gnbd_import::remove_block_device(&record, false) {
            Err(e @ BlockDeviceError::Busy { .. }) => {
                assert!(e.to_string().contains(&*link.to_string_lossy()), "{e}")
            }
            other => panic!("removing a held device answered {other:?}"),
        }
    }
    drop(f);

    // Remove it (a stop on the control socket); everything is torn down.
    gnbd_import::remove_block_device(&record, false).unwrap();
    if let Err(e) = running.wait(Duration::from_secs(60)) {
        panic!("run_block_device failed: {e:#}");
    }
    assert!(std::fs::symlink_metadata(&link).is_err(), "the link is left");
    assert!(link.parent().unwrap().is_dir(), "the link's directory is removed");
    assert_eq!(backing_file(&record.loop_device).as_deref().filter(|f| *f == record.file.to_string_lossy()), None);
    let out = Command::new("losetup").arg("-j").arg(&record.file).output().unwrap();
    assert!(out.stdout.is_empty(), "a loop device is left: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(mounted(&cfg.mountpoint), None, "the FUSE file is still mounted");
    assert!(!cfg.mountpoint.exists(), "the mountpoint is left");
    assert!(!cfg.record_path.exists(), "the record is left");
    assert!(!cfg.socket_path.exists(), "the socket is left");
    assert!(control::status(&cfg.socket_path, Duration::from_secs(2)).is_err());
    // The data stays in the file.
    let mut want = vec![0u8; 4 << 20];
    pattern(1 << 20, &mut want, 2);
    let mut got = vec![0u8; 4 << 20];
    std::fs::File::open(&img).unwrap().read_exact_at(&mut got, 1 << 20).unwrap();
    assert!(got[..1 << 20] == want[..1 << 20], "written data is not in the file");
    assert!(got[(1 << 20)..(2 << 20)].iter().all(|&b| b == 0), "a discarded range is not zero in the file");
    assert!(got[2 << 20..] == want[2 << 20..], "written data is not in the file");
    let _ = std::io::stdout().flush();
}
