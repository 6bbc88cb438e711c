//! lock_dlm: glocks through the cluster's DLM (`dlm_controld` and its client library).
//!
//! This first version is coarse: one glock covers the whole filesystem. A node takes it in
//! EX for any operation and keeps it (caching what it read) until another node asks for it;
//! then it writes everything back home (commit + checkpoint), drops its caches and demotes
//! to NL. The kernel caches nothing (zero TTLs, direct I/O), so there is nothing to
//! invalidate there. Each node also holds its journal's lock (`journal-N`, EX) for as long as
//! it is mounted: whoever can take another slot's journal lock knows that node is gone (the
//! DLM releases a dead node's locks only after it is fenced) and replays its journal.

use dlm::{DlmClient, Flags, Lock, Mode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::mpsc;

/// The shortest time a node keeps the glock once granted (avoids ping-pong).
const MIN_HOLD: Duration = Duration::from_millis(20);
/// How long a mount waits for its journal slot's lock.
const JOURNAL_WAIT: Duration = Duration::from_secs(20);

/// Why a glock operation failed.
#[derive(Debug, Error)]
pub enum GlockError {
    #[error("dlm: {0}")]
    Dlm(#[from] dlm::ClientError),
    #[error("journal slot {0} is in use by another node (pick another with -o journal=N)")]
    SlotBusy(u32),
    #[error("the glock thread is gone")]
    Gone,
}

enum Cmd {
    /// Take the filesystem glock in EX; answers with the slots whose journals are free.
    Acquire(std_mpsc::Sender<Result<Vec<u32>, GlockError>>),
    Shutdown(std_mpsc::Sender<()>),
}

/// What the glock thread calls when another node wants the filesystem: under the
/// filesystem's own mutex, write everything back, forget cached state and clear the `held`
/// flag it is given (so no operation slips in between).
pub type DemoteFn = Box<dyn Fn(&AtomicBool) + Send + Sync>;

/// This node's glocks.
pub struct Glocks {
    tx: mpsc::UnboundedSender<Cmd>,
    held: Arc<AtomicBool>,
    demote: Arc<OnceLock<DemoteFn>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Glocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Glocks").field("held", &self.held.load(Ordering::SeqCst)).finish()
    }
}

fn journal_name(slot: u32) -> Vec<u8> {
    format!("journal-{slot}").into_bytes()
}

impl Glocks {
    /// Connects to `dlm_controld` at `socket`, joins lockspace `fsname` and takes the lock of
    /// journal `slot` (waiting a little for a previous holder).
    pub fn start(socket: &str, fsname: &str, slot: u32, journals: u32) -> Result<Glocks, GlockError> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Cmd>();
        let held = Arc::new(AtomicBool::new(false));
        let demote: Arc<OnceLock<DemoteFn>> = Arc::new(OnceLock::new());
        let (ready_tx, ready_rx) = std_mpsc::channel::<Result<(), GlockError>>();
        let (socket, fsname) = (socket.to_string(), fsname.to_string());
        let (h, d) = (held.clone(), demote.clone());
        let thread = std::thread::Builder::new()
            .name("gfs-glock".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(GlockError::Dlm(dlm::ClientError::Io(e))));
                        return;
                    }
                };
                rt.block_on(async move {
                    let setup = async {
                        let client = DlmClient::connect(&socket).await?;
                        let ls = client.join(fsname.as_bytes(), 0).await?;
                        let mut j = client.request(ls, &journal_name(slot), Mode::Ex, Flags::empty(), None).await?;
                        match tokio::time::timeout(JOURNAL_WAIT, j.wait()).await {
                            Ok(r) => {
                                r?;
                            }
                            Err(_) => {
                                let _ = j.cancel().await;
                                return Err(GlockError::SlotBusy(slot));
                            }
                        }
                        Ok::<_, GlockError>((client, ls, j))
                    };
                    let (client, ls, journal_lock) = match setup.await {
                        Ok(x) => {
                            let _ = ready_tx.send(Ok(()));
                            x
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let mut fs_lock: Option<Lock> = None;
                    let mut granted_at = Instant::now();
                    enum Ev {
                        Cmd(Option<Cmd>),
                        Blocked,
                    }
                    loop {
                        let holding = h.load(Ordering::SeqCst);
                        let ev = match fs_lock.as_mut() {
                            Some(l) if holding => tokio::select! {
                                c = rx.recv() => Ev::Cmd(c),
                                b = l.blocked() => if b.is_some() { Ev::Blocked } else { Ev::Cmd(None) },
                            },
                            _ => Ev::Cmd(rx.recv().await),
                        };
                        match ev {
                            Ev::Cmd(None) => break,
                            Ev::Cmd(Some(Cmd::Shutdown(reply))) => {
                                if let Some(l) = fs_lock.take() {
                                    let _ = l.unlock(Flags::empty(), None).await;
                                }
                                let _ = journal_lock.unlock(Flags::empty(), None).await;
                                let _ = client.leave(ls).await;
                                let _ = reply.send(());
                                return;
                            }
                            Ev::Cmd(Some(Cmd::Acquire(reply))) => {
                                let r = async {
                                    match fs_lock.as_mut() {
                                        Some(l) => {
                                            l.convert(Mode::Ex, Flags::empty(), None).await?;
                                        }
                                        None => {
                                            fs_lock =
                                                Some(client.lock(ls, b"fs", Mode::Ex, Flags::empty(), None).await?);
                                        }
                                    }
                                    // Journals nobody holds belong to nodes that are gone.
                                    let mut free = Vec::new();
                                    for s in (0..journals).filter(|&s| s != slot) {
                                        if let Ok(l) =
                                            client.lock(ls, &journal_name(s), Mode::Ex, Flags::NOQUEUE, None).await
                                        {
                                            free.push(s);
                                            let _ = l.unlock(Flags::empty(), None).await;
                                        }
                                    }
                                    Ok::<_, GlockError>(free)
                                }
                                .await;
                                if r.is_ok() {
                                    granted_at = Instant::now();
                                    h.store(true, Ordering::SeqCst);
                                }
                                let _ = reply.send(r);
                            }
                            Ev::Blocked => {
                                tokio::time::sleep_until((granted_at + MIN_HOLD).into()).await;
                                match d.get() {
                                    Some(f) => f(&h),
                                    None => h.store(false, Ordering::SeqCst),
                                }
                                if let Some(l) = fs_lock.as_mut() {
                                    if let Err(e) = l.convert(Mode::Nl, Flags::empty(), None).await {
                                        tracing::error!(error = %e, "cannot demote the filesystem glock");
                                    }
                                }
                            }
                        }
                    }
                });
            })
            .map_err(|e| GlockError::Dlm(dlm::ClientError::Io(e)))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Glocks { tx, held, demote, thread: Some(thread) }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(GlockError::Gone),
        }
    }

    /// Sets what runs when another node wants the filesystem.
    pub fn on_demote(&self, f: DemoteFn) {
        let _ = self.demote.set(f);
    }

    /// Whether this node holds the filesystem glock.
    pub fn held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    /// Takes the filesystem glock in EX (waits for other nodes to write back and let go).
    /// Returns the journal slots of nodes that are gone.
    pub fn acquire(&self) -> Result<Vec<u32>, GlockError> {
        let (tx, rx) = std_mpsc::channel();
        self.tx.send(Cmd::Acquire(tx)).map_err(|_| GlockError::Gone)?;
        rx.recv().map_err(|_| GlockError::Gone)?
    }

    /// Releases every lock and leaves the lockspace.
    pub fn shutdown(mut self) {
        let (tx, rx) = std_mpsc::channel();
        if self.tx.send(Cmd::Shutdown(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
