//! Cluster-wide POSIX locks (fcntl) and flock through the DLM's plock service, beside the
//! glocks: every node sees the same byte-range locks on a file.

use super::*;

/// A POSIX byte-range lock request as FUSE gives it (`typ` is F_RDLCK, F_WRLCK or F_UNLCK;
/// `end` inclusive, `i64::MAX` meaning to the end of the file).
#[derive(Debug, Clone, Copy)]
pub struct RangeLock {
    pub ino: u64,
    pub owner: u64,
    pub pid: u32,
    pub start: u64,
    pub end: u64,
    pub typ: i32,
}

/// Why a byte-range lock was refused.
#[derive(Debug, Error)]
pub enum PlockError {
    #[error("conflicting lock held")]
    WouldBlock,
    #[error("waiting would deadlock")]
    Deadlock,
    #[error("invalid range or type")]
    Invalid,
    #[error("the wait was withdrawn (the file was closed)")]
    Interrupted,
    #[error("dlm: {0}")]
    Dlm(dlm::ClientError),
}

impl PlockError {
    /// The errno for FUSE.
    pub fn errno(&self) -> i32 {
        match self {
            PlockError::WouldBlock => libc::EAGAIN,
            PlockError::Deadlock => libc::EDEADLK,
            PlockError::Invalid => libc::EINVAL,
            PlockError::Interrupted => libc::EINTR,
            PlockError::Dlm(_) => libc::EIO,
        }
    }
}

type PlockReply = Arc<Mutex<Option<Box<dyn FnOnce(Result<(), PlockError>) + Send>>>>;

/// An F_SETLKW waiting in the background.
pub(super) struct PlockWait {
    ino: u64,
    owner: u64,
    task: tokio::task::AbortHandle,
    reply: PlockReply,
}

fn plock_name(ino: u64) -> Vec<u8> {
    format!("plock-{ino:x}").into_bytes()
}

fn plock_args(l: &RangeLock) -> Result<dlm::PlockArgs, PlockError> {
    let kind = match l.typ {
        libc::F_RDLCK => dlm::PlockKind::Read,
        libc::F_WRLCK => dlm::PlockKind::Write,
        libc::F_UNLCK => dlm::PlockKind::Unlock,
        _ => return Err(PlockError::Invalid),
    };
    let end = if l.end >= i64::MAX as u64 { u64::MAX } else { l.end };
    if l.start > end {
        return Err(PlockError::Invalid);
    }
    Ok(dlm::PlockArgs { owner: l.owner, pid: l.pid, start: l.start, end, kind })
}

fn plock_error(e: dlm::ClientError) -> PlockError {
    match e {
        dlm::ClientError::WouldBlock => PlockError::WouldBlock,
        dlm::ClientError::Status(dlm::Status::Deadlock) => PlockError::Deadlock,
        dlm::ClientError::Refused(-22) => PlockError::Invalid,
        e => PlockError::Dlm(e),
    }
}

/// Cluster-wide POSIX locks (fcntl) and flock, through the DLM's plock service: every node
/// sees the same locks on a file.
impl Glocks {
    /// F_GETLK: the first lock that conflicts with `l`, as (type, start, end, pid).
    pub fn plock_get(&self, l: &RangeLock) -> Result<Option<(i32, u64, u64, u32)>, PlockError> {
        let args = plock_args(l)?;
        let i = &self.inner;
        let c = i.rt.block_on(i.client.plock_get(i.ls, &plock_name(l.ino), args)).map_err(plock_error)?;
        Ok(c.map(|c| {
            let typ = match c.kind {
                dlm::PlockKind::Read => libc::F_RDLCK,
                _ => libc::F_WRLCK,
            };
            let end = if c.end == u64::MAX { i64::MAX as u64 } else { c.end };
            (typ, c.start, end, c.pid)
        }))
    }

    /// F_SETLK (or an unlock): at once.
    pub fn plock_set(&self, l: &RangeLock) -> Result<(), PlockError> {
        let args = plock_args(l)?;
        let i = &self.inner;
        i.rt.block_on(i.client.plock_set(i.ls, &plock_name(l.ino), args, false)).map_err(plock_error)
    }

    /// F_SETLKW: waits in the background (no FUSE thread is held) and calls `done` with the
    /// outcome. The wait is withdrawn when the owner closes the file ([`Glocks::plock_close`]).
    pub fn plock_wait(&self, l: &RangeLock, done: impl FnOnce(Result<(), PlockError>) + Send + 'static) {
        let args = match plock_args(l) {
            Ok(a) => a,
            Err(e) => return done(Err(e)),
        };
        let inner = self.inner.clone();
        let name = plock_name(l.ino);
        let reply: PlockReply = Arc::new(Mutex::new(Some(Box::new(done))));
        let r2 = reply.clone();
        let task = self.inner.rt.spawn(async move {
            let r = inner.client.plock_set(inner.ls, &name, args, true).await.map_err(plock_error);
            if let Some(f) = r2.lock().expect("plock reply").take() {
                f(r);
            }
        });
        let mut w = self.plock_waits.lock().expect("plock waits");
        w.retain(|x| !x.task.is_finished());
        w.push(PlockWait { ino: l.ino, owner: l.owner, task: task.abort_handle(), reply });
    }

    /// The owner closed the file: withdraw its waits and drop its locks on `ino`.
    pub fn plock_close(&self, ino: u64, owner: u64) -> Result<(), PlockError> {
        let withdrawn: Vec<PlockWait> = {
            let mut w = self.plock_waits.lock().expect("plock waits");
            let (gone, keep): (Vec<_>, Vec<_>) =
                w.drain(..).filter(|x| !x.task.is_finished()).partition(|x| x.ino == ino && x.owner == owner);
            *w = keep;
            gone
        };
        for x in withdrawn {
            x.task.abort();
            if let Some(f) = x.reply.lock().expect("plock reply").take() {
                f(Err(PlockError::Interrupted));
            }
        }
        let i = &self.inner;
        i.rt.block_on(i.client.plock_release_owner(i.ls, &plock_name(ino), owner)).map_err(plock_error)
    }
}
