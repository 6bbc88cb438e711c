//! Async client library for local programs: connect to `dlm_controld`'s Unix socket, join
//! lockspaces, take, convert, release and cancel locks, receive completion and blocking
//! callbacks, read and write value blocks.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dlm::ClientError> {
//! use dlm::{DlmClient, Flags, Mode};
//! let c = DlmClient::connect("/run/dlm/dlm.sock").await?;
//! let ls = c.join(b"myapp", 0).await?;
//! let mut lock = c.lock(ls, b"config", Mode::Ex, Flags::VALBLK, None).await?;
//! lock.convert(Mode::Nl, Flags::VALBLK, Some(&[1; 32])).await?;
//! lock.unlock(Flags::empty(), None).await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::mode::{Flags, Mode, SbFlags, Status};
use crate::plock::{PlockArgs, PlockConflict, PlockKind, PlockOpCode};
use crate::proto::{decode_response, encode_request, Frame, Request, Response};
use crate::resource::LockId;
use crate::wire::{MAX_LVB, MAX_NAME};

/// What went wrong for a client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon is unreachable or the connection broke.
    #[error("connection to dlm_controld failed: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon refused the call (a negative errno).
    #[error("refused by dlm_controld: errno {}", -.0)]
    Refused(i32),
    /// The operation completed with a status other than success.
    #[error("lock operation finished: {0}")]
    Status(Status),
    /// The daemon sent something this library does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A byte-range lock conflicts with another owner's and the caller does not wait
    /// (EAGAIN from F_SETLK).
    #[error("byte-range lock conflicts with another owner's lock")]
    WouldBlock,
}

/// A completion callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Outcome.
    pub status: Status,
    /// Granted mode now.
    pub mode: Option<Mode>,
    /// DEMOTED / VALNOTVALID / ALTMODE.
    pub sbflags: SbFlags,
    /// The value block read, if any.
    pub lvb: Option<Vec<u8>>,
}

#[derive(Debug)]
enum Event {
    Completion(Completion),
    Blocking(Mode),
}

struct Waiter {
    seq: u32,
    register: bool,
    tx: oneshot::Sender<(Response, Option<mpsc::UnboundedReceiver<Event>>)>,
}

#[derive(Default)]
struct Shared {
    /// Encoded requests not yet taken by the socket.
    pending: Vec<u8>,
    /// The writer task owns the socket's writes until `pending` is empty.
    busy: bool,
    next_seq: u32,
    waiters: std::collections::VecDeque<Waiter>,
    locks: HashMap<(u32, LockId), mpsc::UnboundedSender<Event>>,
    closed: bool,
    notify: Option<Arc<tokio::sync::Notify>>,
    /// Plock requests waiting for their outcome, by sequence number.
    plocks: HashMap<u32, oneshot::Sender<PlockOutcome>>,
    /// Waiting plock requests given up by their caller: if one is granted anyway, its
    /// range is released (lockspace, name, the request's arguments).
    abandoned: HashMap<u32, (u32, Vec<u8>, PlockArgs)>,
}

type PlockOutcome = (i32, Option<PlockConflict>);

/// Withdraws a waiting plock request when the future waiting for it is dropped.
struct PlockGuard {
    client: DlmClient,
    ls: u32,
    seq: u32,
    name: Vec<u8>,
    args: PlockArgs,
    armed: bool,
    outcome: oneshot::Receiver<PlockOutcome>,
}

impl Drop for PlockGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let name = std::mem::take(&mut self.name);
        match self.outcome.try_recv() {
            Ok((0, _)) => {
                // Granted, but nobody will hear of it: release the range again.
                let args = PlockArgs { kind: PlockKind::Unlock, ..self.args };
                queue_detached(
                    &self.client.shared,
                    Request::Plock { ls: self.ls, op: PlockOpCode::Set, name, args, wait: false },
                );
            }
            Ok(_) | Err(oneshot::error::TryRecvError::Closed) => {}
            Err(oneshot::error::TryRecvError::Empty) => {
                {
                    let mut sh = self.client.shared.lock().expect("client state lock");
                    sh.plocks.remove(&self.seq);
                    sh.abandoned.insert(self.seq, (self.ls, name, self.args));
                }
                let _ = self.client.start(Request::PlockCancel { ls: self.ls, reqid: self.seq }, false, false);
            }
        }
    }
}

/// A connection to `dlm_controld`. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct DlmClient {
    w: Arc<tokio::net::unix::OwnedWriteHalf>,
    notify: Arc<tokio::sync::Notify>,
    shared: Arc<Mutex<Shared>>,
}

impl std::fmt::Debug for DlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DlmClient").finish_non_exhaustive()
    }
}

impl DlmClient {
    /// Connect to the daemon's socket.
    pub async fn connect(path: impl AsRef<Path>) -> Result<DlmClient, ClientError> {
        let s = UnixStream::connect(path).await?;
        let (mut rd, wr) = s.into_split();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let w = Arc::new(wr);
        let notify = Arc::new(tokio::sync::Notify::new());
        // Writes that the socket did not take at once (see `call`).
        // It holds the socket weakly: dropping the last DlmClient closes the connection (the
        // daemon then releases this client's locks), and the writer ends with the reader.
        shared.lock().expect("client state lock").notify = Some(notify.clone());
        let (sh, ww, nn) = (shared.clone(), Arc::downgrade(&w), notify.clone());
        tokio::spawn(async move {
            loop {
                nn.notified().await;
                loop {
                    let buf = {
                        let mut s = sh.lock().expect("client state lock");
                        if s.closed {
                            return;
                        }
                        if s.pending.is_empty() {
                            s.busy = false;
                            break;
                        }
                        std::mem::take(&mut s.pending)
                    };
                    let Some(ww) = ww.upgrade() else { return };
                    let mut done = 0;
                    while done < buf.len() {
                        if ww.as_ref().as_ref().writable().await.is_err() {
                            close(&sh);
                            return;
                        }
                        match ww.try_write(&buf[done..]) {
                            Ok(n) => done += n,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => {
                                close(&sh);
                                return;
                            }
                        }
                    }
                }
            }
        });
        let sh = shared.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(16 * 1024);
            let mut chunk = vec![0u8; 16 * 1024];
            loop {
                let n = match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                let mut at = 0;
                loop {
                    match decode_response(&buf[at..]) {
                        Ok(Frame::NeedMore(_)) => break,
                        Ok(Frame::Done(resp, _, used)) => {
                            at += used;
                            dispatch(&sh, resp);
                        }
                        Err(_) => {
                            close(&sh);
                            return;
                        }
                    }
                }
                buf.drain(..at);
            }
            close(&sh);
        });
        Ok(DlmClient { w, notify, shared })
    }

    async fn call(
        &self,
        req: Request,
        register: bool,
    ) -> Result<(Response, Option<mpsc::UnboundedReceiver<Event>>), ClientError> {
        let (rx, _, _) = self.start(req, register, false)?;
        rx.await.map_err(|_| ClientError::Io(std::io::ErrorKind::BrokenPipe.into()))
    }

    /// Queue request `req` and write it if the socket takes it now. Returns the receiver of
    /// its reply, its sequence number and, with `plock`, the receiver of its plock outcome.
    #[allow(clippy::type_complexity)]
    fn start(
        &self,
        req: Request,
        register: bool,
        plock: bool,
    ) -> Result<
        (
            oneshot::Receiver<(Response, Option<mpsc::UnboundedReceiver<Event>>)>,
            u32,
            Option<oneshot::Receiver<PlockOutcome>>,
        ),
        ClientError,
    > {
        let (tx, rx) = oneshot::channel();
        let seq;
        let mut outcome = None;
        {
            let mut sh = self.shared.lock().expect("client state lock");
            if sh.closed {
                return Err(ClientError::Io(std::io::ErrorKind::BrokenPipe.into()));
            }
            sh.next_seq = sh.next_seq.wrapping_add(1);
            if sh.next_seq == 0 {
                sh.next_seq = 1;
            }
            seq = sh.next_seq;
            if plock {
                let (ptx, prx) = oneshot::channel();
                sh.plocks.insert(seq, ptx);
                outcome = Some(prx);
            }
            encode_request(&req, seq, &mut sh.pending);
            // Queue the waiter and write under the same lock so replies match in order.
            sh.waiters.push_back(Waiter { seq, register, tx });
            if !sh.busy && sh.waiters.len() > 1 {
                // Others are in flight: let the writer task batch this with what follows.
                sh.busy = true;
                self.notify.notify_one();
            } else if !sh.busy {
                // Alone: write now, no hop through another task.
                let mut done = 0;
                while done < sh.pending.len() {
                    match self.w.try_write(&sh.pending[done..]) {
                        Ok(n) => done += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(ClientError::Io(e)),
                    }
                }
                sh.pending.drain(..done);
                if !sh.pending.is_empty() {
                    sh.busy = true;
                    self.notify.notify_one();
                }
            }
        }
        Ok((rx, seq, outcome))
    }

    async fn plock_call(
        &self,
        ls: u32,
        op: PlockOpCode,
        name: &[u8],
        args: PlockArgs,
        wait: bool,
    ) -> Result<PlockOutcome, ClientError> {
        if name.is_empty() || name.len() > MAX_NAME || args.start > args.end {
            return Err(ClientError::Refused(-22));
        }
        let req = Request::Plock { ls, op, name: name.to_vec(), args, wait };
        let (reply, seq, outcome) = self.start(req, false, true)?;
        let outcome = outcome.expect("asked for");
        let mut guard = PlockGuard {
            client: self.clone(),
            ls,
            seq,
            name: name.to_vec(),
            args,
            armed: op == PlockOpCode::Set,
            outcome,
        };
        let broken = || ClientError::Io(std::io::ErrorKind::BrokenPipe.into());
        let accepted = match reply.await.map_err(|_| broken()) {
            Ok((Response::Reply { status, .. }, _)) if status < 0 => Err(ClientError::Refused(status)),
            Ok((Response::Reply { .. }, _)) => Ok(()),
            Ok((other, _)) => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
            Err(e) => Err(e),
        };
        if let Err(e) = accepted {
            guard.armed = false;
            self.shared.lock().expect("client state lock").plocks.remove(&seq);
            return Err(e);
        }
        let r = (&mut guard.outcome).await.map_err(|_| broken());
        guard.armed = false;
        r
    }

    /// A POSIX byte-range lock (fcntl F_SETLK, or F_SETLKW with `wait`) on resource `name`
    /// of lockspace `ls`, cluster-wide: `args.kind` Read or Write takes `[start, end]`
    /// (`end == u64::MAX`: to EOF) for `args.owner`, replacing what that owner held there
    /// (splitting and merging as POSIX does); Unlock releases it. Without `wait`, a
    /// conflict fails with [`ClientError::WouldBlock`]; with `wait` this returns once
    /// granted, or fails with [`ClientError::Status`]`(`[`Status::Deadlock`]`)` if waiting
    /// would close a cycle of owners waiting for each other on this resource (EDEADLK).
    /// Dropping the future while it waits withdraws the request on the daemon;
    /// if the grant crossed the withdrawal, the range is unlocked again.
    pub async fn plock_set(&self, ls: u32, name: &[u8], args: PlockArgs, wait: bool) -> Result<(), ClientError> {
        match self.plock_call(ls, PlockOpCode::Set, name, args, wait).await? {
            (0, _) => Ok(()),
            (-11, _) => Err(ClientError::WouldBlock),
            (-35, _) => Err(ClientError::Status(Status::Deadlock)),
            (s, _) if s == -crate::mode::DLM_ECANCEL => Err(ClientError::Status(Status::Canceled)),
            (s, _) => Err(ClientError::Refused(s)),
        }
    }

    /// F_GETLK: the first lock of another owner that conflicts with `args` (kind Read or
    /// Write over `[start, end]`), or None if the lock could be granted now.
    pub async fn plock_get(&self, ls: u32, name: &[u8], args: PlockArgs) -> Result<Option<PlockConflict>, ClientError> {
        match self.plock_call(ls, PlockOpCode::Get, name, args, false).await? {
            (0, c) => Ok(c),
            (s, _) => Err(ClientError::Refused(s)),
        }
    }

    /// Release every byte-range lock of `owner` on resource `name` (close of the file).
    pub async fn plock_release_owner(&self, ls: u32, name: &[u8], owner: u64) -> Result<(), ClientError> {
        let args = PlockArgs { owner, pid: 0, start: 0, end: u64::MAX, kind: PlockKind::Unlock };
        match self.plock_call(ls, PlockOpCode::ReleaseOwner, name, args, false).await? {
            (0, _) => Ok(()),
            (s, _) => Err(ClientError::Refused(s)),
        }
    }

    /// `dlm_tool plocks` text: the byte-range locks this daemon masters in lockspace `name`.
    pub async fn plock_dump(&self, name: &[u8]) -> Result<String, ClientError> {
        self.text(Request::PlockDump { name: name.to_vec() }).await
    }

    async fn simple(&self, req: Request) -> Result<(u32, LockId), ClientError> {
        match self.call(req, false).await?.0 {
            Response::Reply { status, ls, lkid, .. } if status >= 0 => Ok((ls, lkid)),
            Response::Reply { status, .. } => Err(ClientError::Refused(status)),
            other => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
        }
    }

    /// Join (create) a lockspace; `lvblen` 0 means the default (32 bytes). Returns its id.
    pub async fn join(&self, name: &[u8], lvblen: u16) -> Result<u32, ClientError> {
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(ClientError::Refused(-22));
        }
        Ok(self.simple(Request::Join { name: name.to_vec(), lvblen }).await?.0)
    }

    /// Leave a lockspace.
    pub async fn leave(&self, ls: u32) -> Result<(), ClientError> {
        self.simple(Request::Leave { ls }).await.map(|_| ())
    }

    /// Ask for a lock without waiting for the grant.
    pub async fn request(
        &self,
        ls: u32,
        name: &[u8],
        mode: Mode,
        flags: Flags,
        lvb: Option<&[u8]>,
    ) -> Result<Lock, ClientError> {
        if name.is_empty() || name.len() > MAX_NAME || lvb.is_some_and(|v| v.len() > MAX_LVB) {
            return Err(ClientError::Refused(-22));
        }
        let req = Request::Lock { ls, mode, flags, name: name.to_vec(), lvb: lvb.unwrap_or_default().to_vec() };
        match self.call(req, true).await? {
            (Response::Reply { status, ls, lkid, .. }, Some(events)) if status >= 0 => Ok(Lock {
                client: self.clone(),
                ls,
                id: lkid,
                events,
                mode: None,
                lvb: None,
                sbflags: SbFlags::default(),
                bast: std::collections::VecDeque::new(),
            }),
            (Response::Reply { status, .. }, _) => Err(ClientError::Refused(status)),
            (other, _) => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
        }
    }

    /// Take a lock and wait until it is granted (or fails: [`ClientError::Status`]).
    pub async fn lock(
        &self,
        ls: u32,
        name: &[u8],
        mode: Mode,
        flags: Flags,
        lvb: Option<&[u8]>,
    ) -> Result<Lock, ClientError> {
        let mut l = self.request(ls, name, mode, flags, lvb).await?;
        l.wait().await?;
        Ok(l)
    }

    /// Cancel the queued request or conversion of lock `id`; false if there was nothing to
    /// cancel. The lock's pending operation then completes with [`Status::Canceled`].
    pub async fn cancel(&self, ls: u32, id: LockId) -> Result<bool, ClientError> {
        match self.call(Request::Cancel { ls, lkid: id }, false).await?.0 {
            Response::Reply { status: 0, .. } => Ok(true),
            Response::Reply { status: 1, .. } => Ok(false),
            Response::Reply { status, .. } => Err(ClientError::Refused(status)),
            other => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
        }
    }

    /// Hand the daemon a membership event (what the cluster layer does: members changed,
    /// a node fenced, quorum).
    pub async fn membership(&self, event: crate::node::MemberEvent) -> Result<(), ClientError> {
        self.simple(Request::Member { event }).await.map(|_| ())
    }

    /// `dlm_tool ls` text.
    pub async fn list(&self) -> Result<String, ClientError> {
        self.text(Request::List).await
    }

    /// `dlm_tool lockdump` text for the lockspace `name`.
    pub async fn lockdump(&self, name: &[u8]) -> Result<String, ClientError> {
        self.text(Request::Dump { name: name.to_vec() }).await
    }

    async fn text(&self, req: Request) -> Result<String, ClientError> {
        match self.call(req, false).await?.0 {
            Response::Text { status: 0, text, .. } => Ok(text),
            Response::Text { status, text, .. } => {
                Err(ClientError::Protocol(format!("errno {}: {}", -status, text.trim_end())))
            }
            Response::Reply { status, .. } => Err(ClientError::Refused(status)),
            other => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
        }
    }
}

fn close(sh: &Arc<Mutex<Shared>>) {
    let mut s = sh.lock().expect("client state lock");
    s.closed = true;
    s.waiters.clear();
    s.locks.clear();
    s.plocks.clear();
    if let Some(n) = &s.notify {
        n.notify_one();
    }
}

fn dispatch(sh: &Arc<Mutex<Shared>>, resp: Response) {
    let mut s = sh.lock().expect("client state lock");
    match resp {
        Response::Plock { seq, status, conflict, .. } => {
            if let Some(tx) = s.plocks.remove(&seq) {
                let _ = tx.send((status, conflict));
            } else if let Some((ls, name, args)) = s.abandoned.remove(&seq) {
                if status == 0 {
                    // Granted although its caller gave up: release the range again.
                    let args = PlockArgs { kind: PlockKind::Unlock, ..args };
                    let req = Request::Plock { ls, op: PlockOpCode::Set, name, args, wait: false };
                    drop(s);
                    queue_detached(sh, req);
                }
            }
        }
        Response::Reply { seq, .. } | Response::Text { seq, .. } => {
            let Some(w) = s.waiters.pop_front() else { return };
            if w.seq != seq {
                s.closed = true;
                return;
            }
            let mut events = None;
            if let (true, Response::Reply { status, ls, lkid, .. }) = (w.register, &resp) {
                if *status >= 0 {
                    let (tx, rx) = mpsc::unbounded_channel();
                    s.locks.insert((*ls, *lkid), tx);
                    events = Some(rx);
                }
            }
            let _ = w.tx.send((resp, events));
        }
        Response::Completion { ls, lkid, status, mode, sbflags, lvb } => {
            let gone = matches!(status, Status::Unlocked) || mode.is_none();
            if let Some(tx) = s.locks.get(&(ls, lkid)) {
                let _ = tx.send(Event::Completion(Completion { status, mode, sbflags, lvb }));
            }
            if gone {
                s.locks.remove(&(ls, lkid));
            }
        }
        Response::Blocking { ls, lkid, mode } => {
            if let Some(tx) = s.locks.get(&(ls, lkid)) {
                let _ = tx.send(Event::Blocking(mode));
            }
        }
    }
}

/// A lock held (or requested) through a [`DlmClient`].
#[derive(Debug)]
pub struct Lock {
    client: DlmClient,
    ls: u32,
    id: LockId,
    events: mpsc::UnboundedReceiver<Event>,
    mode: Option<Mode>,
    lvb: Option<Vec<u8>>,
    sbflags: SbFlags,
    bast: std::collections::VecDeque<Mode>,
}

impl Lock {
    /// The lock id.
    pub fn id(&self) -> LockId {
        self.id
    }

    /// The lockspace id.
    pub fn lockspace(&self) -> u32 {
        self.ls
    }

    /// Granted mode as of the last completion.
    pub fn mode(&self) -> Option<Mode> {
        self.mode
    }

    /// The value block as of the last completion that read it.
    pub fn lvb(&self) -> Option<&[u8]> {
        self.lvb.as_deref()
    }

    /// Status-block flags of the last completion.
    pub fn sbflags(&self) -> SbFlags {
        self.sbflags
    }

    /// Wait for the completion of the operation in progress. Blocking callbacks that
    /// arrive meanwhile are kept for [`Lock::blocked`].
    pub async fn wait(&mut self) -> Result<Completion, ClientError> {
        loop {
            match self.events.recv().await {
                Some(Event::Blocking(m)) => self.bast.push_back(m),
                Some(Event::Completion(c)) => {
                    self.mode = c.mode;
                    self.sbflags = c.sbflags;
                    if c.lvb.is_some() {
                        self.lvb.clone_from(&c.lvb);
                    }
                    return match c.status {
                        Status::Granted | Status::Unlocked => Ok(c),
                        s => Err(ClientError::Status(s)),
                    };
                }
                None => return Err(ClientError::Io(std::io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    /// The next blocking callback: another request wants `mode`.
    pub async fn blocked(&mut self) -> Option<Mode> {
        if let Some(m) = self.bast.pop_front() {
            return Some(m);
        }
        loop {
            match self.events.recv().await? {
                Event::Blocking(m) => return Some(m),
                Event::Completion(_) => continue,
            }
        }
    }

    /// A blocking callback already received, if any.
    pub fn try_blocked(&mut self) -> Option<Mode> {
        while let Ok(e) = self.events.try_recv() {
            if let Event::Blocking(m) = e {
                self.bast.push_back(m);
            }
        }
        self.bast.pop_front()
    }

    /// Start a conversion without waiting.
    pub async fn start_convert(&mut self, mode: Mode, flags: Flags, lvb: Option<&[u8]>) -> Result<(), ClientError> {
        let req = Request::Convert { ls: self.ls, lkid: self.id, mode, flags, lvb: lvb.unwrap_or_default().to_vec() };
        self.client.simple(req).await.map(|_| ())
    }

    /// Convert and wait for the outcome.
    pub async fn convert(&mut self, mode: Mode, flags: Flags, lvb: Option<&[u8]>) -> Result<Completion, ClientError> {
        self.start_convert(mode, flags, lvb).await?;
        self.wait().await
    }

    /// Cancel the request or conversion in progress (see [`DlmClient::cancel`]).
    pub async fn cancel(&self) -> Result<bool, ClientError> {
        self.client.cancel(self.ls, self.id).await
    }

    /// Release the lock and wait until it is gone.
    pub async fn unlock(mut self, flags: Flags, lvb: Option<&[u8]>) -> Result<(), ClientError> {
        let req = Request::Unlock { ls: self.ls, lkid: self.id, flags, lvb: lvb.unwrap_or_default().to_vec() };
        self.client.simple(req).await?;
        self.wait().await.map(|_| ())
    }
}

/// Queue a request whose reply nobody waits for (called where no [`DlmClient`] is at hand,
/// from the reader task). The writer task writes it.
fn queue_detached(sh: &Arc<Mutex<Shared>>, req: Request) {
    let mut s = sh.lock().expect("client state lock");
    if s.closed {
        return;
    }
    s.next_seq = s.next_seq.wrapping_add(1);
    if s.next_seq == 0 {
        s.next_seq = 1;
    }
    let seq = s.next_seq;
    let (tx, _) = oneshot::channel();
    let (ptx, _) = oneshot::channel();
    s.plocks.insert(seq, ptx);
    encode_request(&req, seq, &mut s.pending);
    s.waiters.push_back(Waiter { seq, register: false, tx });
    if !s.busy {
        s.busy = true;
        if let Some(n) = &s.notify {
            n.notify_one();
        }
    }
}
