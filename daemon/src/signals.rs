//! Signals as a daemon of this suite treats them:
//!
//! | signal | effect |
//! |---|---|
//! | SIGTERM, SIGINT | stop requested: [`Signals::stopped`] completes, [`Signals::stop_requested`] is true |
//! | SIGHUP | log files are reopened (before anything else sees it), then the reload counter moves: daemons with a configuration reread it. The process never exits on SIGHUP |
//! | SIGUSR1, SIGUSR2 | counters of their own, for daemons that give them a meaning (pulse: take over) |
//!
//! The handler only writes the signal number to a pipe; a thread named `signals` turns the
//! bytes into state that both threads (blocking waits) and async tasks (a `watch` channel)
//! can wait on. [`install`] is called once, early in `main`; later calls return the same
//! handle.

use std::io::Read;
use std::os::fd::IntoRawFd;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;

/// How many times each signal arrived (and whether a stop was asked for in code).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// SIGTERM/SIGINT deliveries plus [`Signals::request_stop`] calls.
    pub stop: u64,
    /// The signal number of the first stop (0 when asked for in code).
    pub stop_signal: i32,
    /// SIGHUP deliveries.
    pub reload: u64,
    /// SIGUSR1 deliveries.
    pub user1: u64,
    /// SIGUSR2 deliveries.
    pub user2: u64,
}

#[derive(Debug)]
struct Inner {
    counts: Mutex<Counts>,
    cv: Condvar,
    tx: watch::Sender<Counts>,
}

/// The process's signal state. Cheap to clone; every clone sees the same signals.
#[derive(Debug, Clone)]
pub struct Signals(Arc<Inner>);

static INSTALLED: OnceLock<Signals> = OnceLock::new();

/// Routes SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 to the returned handle. From this
/// call on none of them has its default action: call it before starting threads that could
/// be killed by an early SIGHUP.
pub fn install() -> std::io::Result<Signals> {
    if let Some(s) = INSTALLED.get() {
        return Ok(s.clone());
    }
    let (mut reader, writer) = std::io::pipe()?;
    let (tx, _) = watch::channel(Counts::default());
    let signals = Signals(Arc::new(Inner { counts: Mutex::new(Counts::default()), cv: Condvar::new(), tx }));
    if INSTALLED.set(signals.clone()).is_err() {
        // Another thread won the race; use its handle.
        return Ok(INSTALLED.get().expect("set by the winner").clone());
    }
    let wanted = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2];
    // The write end lives as long as the process: the handler may run at any time.
    crate::sys::install_signal_pipe(writer.into_raw_fd(), &wanted)?;
    let s = signals.clone();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut buf = [0u8; 64];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    for &b in &buf[..n] {
                        s.deliver(i32::from(b));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    })?;
    Ok(signals)
}

impl Signals {
    fn deliver(&self, sig: i32) {
        if sig == libc::SIGHUP {
            match crate::log::reopen() {
                Ok(true) => tracing::info!("SIGHUP: log file reopened"),
                Ok(false) => tracing::info!("SIGHUP received"),
                Err(e) => {
                    tracing::warn!(error = %e, "SIGHUP: cannot reopen the log file; still writing to the old one")
                }
            }
        } else if sig == libc::SIGTERM || sig == libc::SIGINT {
            tracing::info!(signal = sig, "stop requested by signal");
        }
        self.update(|c| match sig {
            libc::SIGTERM | libc::SIGINT => {
                if c.stop == 0 {
                    c.stop_signal = sig;
                }
                c.stop += 1;
            }
            libc::SIGHUP => c.reload += 1,
            libc::SIGUSR1 => c.user1 += 1,
            libc::SIGUSR2 => c.user2 += 1,
            _ => {}
        });
    }

    fn update(&self, f: impl FnOnce(&mut Counts)) {
        let mut c = self.0.counts.lock().expect("signal counts");
        f(&mut c);
        let now = *c;
        drop(c);
        self.0.cv.notify_all();
        self.0.tx.send_replace(now);
    }

    /// Asks the daemon to stop as if SIGTERM had arrived (a `shutdown` control request).
    pub fn request_stop(&self) {
        self.update(|c| c.stop += 1);
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        *self.0.counts.lock().expect("signal counts")
    }

    /// True once a stop was requested.
    pub fn stop_requested(&self) -> bool {
        self.counts().stop > 0
    }

    /// Blocks until a stop is requested; returns the signal number (0 when asked in code).
    pub fn wait_stop(&self) -> i32 {
        let mut c = self.0.counts.lock().expect("signal counts");
        while c.stop == 0 {
            c = self.0.cv.wait(c).expect("signal counts");
        }
        c.stop_signal
    }

    /// Blocks until something changes after `seen` or `timeout` passes; returns the counts.
    pub fn wait_change(&self, seen: Counts, timeout: Duration) -> Counts {
        let c = self.0.counts.lock().expect("signal counts");
        let (c, _) = self.0.cv.wait_timeout_while(c, timeout, |c| *c == seen).expect("signal counts");
        *c
    }

    /// Completes when a stop is requested.
    pub async fn stopped(&self) {
        let mut rx = self.0.tx.subscribe();
        let _ = rx.wait_for(|c| c.stop > 0).await;
    }

    /// Completes at the next SIGHUP after this call.
    pub async fn reloaded(&self) {
        let mut rx = self.0.tx.subscribe();
        let start = rx.borrow_and_update().reload;
        let _ = rx.wait_for(|c| c.reload > start).await;
    }

    /// A receiver of every change, for loops that react to several signals.
    pub fn subscribe(&self) -> watch::Receiver<Counts> {
        self.0.tx.subscribe()
    }
}
