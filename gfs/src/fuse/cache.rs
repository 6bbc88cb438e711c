//! What the kernel caches on a lock_dlm mount (attributes, not names), and the thread that
//! takes it back when a glock goes to another node (FUSE invalidation notifications).

use super::Shared;
use fuser::INodeNo;
use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// What the kernel caches on a lock_dlm mount, and the channel to take it back.
///
/// The kernel caches attributes (taken back with an attribute-only invalidation, which never
/// waits on the kernel's inode locks). It does not cache names (entry TTL zero): taking a
/// name back needs the directory's inode lock, which a request in flight holds while it waits
/// for the very glock being given up, so every lookup reaches the engine instead.
#[derive(Debug, Default)]
pub(super) struct KernelCache {
    root: u64,
    /// Inodes whose attributes were handed out.
    attrs: Mutex<HashSet<u64>>,
    /// Set once the FUSE session exists.
    invalidator: OnceLock<std::sync::mpsc::Sender<Invalidation>>,
}

/// Kernel attributes to invalidate (FUSE inode numbers), and who waits.
#[derive(Debug)]
struct Invalidation {
    attrs: Vec<u64>,
    done: std::sync::mpsc::Sender<()>,
}

/// How long a demotion waits for the kernel to drop what it cached (an attribute-only
/// invalidation takes no inode lock: this is a safety net, not an expected wait).
const INVALIDATE_WAIT: Duration = Duration::from_millis(200);

impl KernelCache {
    /// Nothing cached yet; `root` is the engine's root inode (FUSE inode 1).
    pub(super) fn new(root: u64) -> KernelCache {
        KernelCache { root, ..Default::default() }
    }

    fn fuse_ino(&self, ino: u64) -> u64 {
        if ino == self.root {
            1
        } else {
            ino
        }
    }

    pub(super) fn note_attr(&self, ino: u64) {
        if self.invalidator.get().is_some() {
            self.attrs.lock().expect("kernel attrs").insert(ino);
        }
    }

    /// Takes back everything the kernel caches (after replaying another node's journal).
    pub(super) fn invalidate_all(&self) {
        let attrs: Vec<u64> = self.attrs.lock().expect("kernel attrs").drain().collect();
        self.send(attrs);
    }

    /// Takes back what the kernel caches under inode `ino`'s glock: its attributes.
    pub(super) fn invalidate(&self, ino: u64) {
        if self.attrs.lock().expect("kernel attrs").remove(&ino) {
            self.send(vec![ino]);
        }
    }

    fn send(&self, inos: Vec<u64>) {
        let Some(tx) = self.invalidator.get() else { return };
        if inos.is_empty() {
            return;
        }
        let (done, wait) = std::sync::mpsc::channel();
        let job = Invalidation { attrs: inos.into_iter().map(|i| self.fuse_ino(i)).collect(), done };
        if tx.send(job).is_ok() && wait.recv_timeout(INVALIDATE_WAIT).is_err() {
            tracing::warn!("the kernel has not dropped cached attributes yet");
        }
    }
}

impl Shared {
    /// lock_dlm: starts the thread that takes back what the kernel cached when a glock goes
    /// to another node (FUSE invalidation notifications on the session's channel).
    pub fn start_invalidator(&self, notifier: fuser::Notifier) {
        if self.glocks.lock().expect("glocks mutex").is_none() {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel::<Invalidation>();
        let spawned = std::thread::Builder::new().name("gfs-invalidate".into()).spawn(move || {
            for job in rx {
                for ino in job.attrs {
                    // Offset -1: attributes only. ENOENT: the kernel had already dropped it.
                    let _ = notifier.inval_inode(INodeNo(ino), -1, 0);
                }
                let _ = job.done.send(());
            }
        });
        match spawned {
            Ok(_) => {
                let _ = self.kernel.invalidator.set(tx);
            }
            Err(e) => tracing::error!(error = %e, "cannot start the invalidation thread"),
        }
    }
}
