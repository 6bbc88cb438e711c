//! `dlm_controld`: the per-node daemon. It hosts this node's [`Node`], serves local
//! programs on a Unix socket (the protocol of [`crate::proto`]) and talks to the other
//! nodes' daemons over TCP (the protocol of [`crate::wire`]).
//!
//! Membership is either static (the configured node ids, this one and its peers, are the
//! members, always quorate) or, in cluster mode, fenced's view fed in as
//! [`crate::MemberEvent`]s (see [`crate::cluster`]).
//!
//! Everything runs on one thread: one task per connection, all sharing the node through a
//! `RefCell` (no lock is ever held across an await).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tracing::{debug, info, warn};

use crate::cluster::{spawn_subscriber, spawn_wait_fenced, ClusterSource, Input, Tracker};
use crate::mode::Mode;
use crate::node::{Ast, MemberEvent, Node, Output, Owner, PlockOp, DEFAULT_LVB_LEN};
use crate::plock::{PlockKind, PlockOpCode};
use crate::proto::{decode_request, encode_response, Frame, Request, Response};
use crate::resource::Queue;
use crate::wire::{decode, encode, Decoded, Message, NodeId};

/// What the daemon needs to start.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// Unix socket for local programs.
    pub socket: PathBuf,
    /// TCP address for peer daemons (None: single-node mode).
    pub listen: Option<SocketAddr>,
    /// The other nodes: id and TCP address.
    pub peers: Vec<(NodeId, SocketAddr)>,
    /// Cluster mode: membership, quorum and fencing from fenced (None: static members).
    pub cluster: Option<ClusterSource>,
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Binding the Unix socket failed.
    #[error("cannot listen on {path}: {source}")]
    Socket {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Binding the TCP address failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Bad configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// Where the daemon listens, once it is ready.
#[derive(Debug, Clone)]
pub struct Ready {
    /// Node id.
    pub node_id: NodeId,
    /// Unix socket path.
    pub socket: PathBuf,
    /// Bound TCP address, if any.
    pub listen: Option<SocketAddr>,
}

/// The writing half of a connection.
#[derive(Clone)]
enum W {
    Unix(Rc<tokio::net::unix::OwnedWriteHalf>),
    Tcp(Rc<tokio::net::tcp::OwnedWriteHalf>),
}

impl W {
    fn try_write(&self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            W::Unix(w) => w.try_write(b),
            W::Tcp(w) => w.try_write(b),
        }
    }

    async fn writable(&self) -> std::io::Result<()> {
        match self {
            W::Unix(w) => w.as_ref().as_ref().writable().await,
            W::Tcp(w) => w.as_ref().as_ref().writable().await,
        }
    }
}

/// Bytes waiting for one connection. Frames are appended during a flush and written at
/// its end straight from the task that produced them (no hop through another task); only
/// what the socket does not take at once is left to the connection's writer task.
struct Sink {
    w: Option<W>,
    pending: Vec<u8>,
    busy: bool,
    notify: Rc<tokio::sync::Notify>,
}

impl Sink {
    fn new() -> Sink {
        Sink { w: None, pending: Vec::new(), busy: false, notify: Rc::new(tokio::sync::Notify::new()) }
    }

    /// Write what is pending without blocking; hand the rest to the writer task.
    fn kick(&mut self) {
        if self.busy || self.pending.is_empty() {
            return;
        }
        let Some(w) = &self.w else { return };
        let mut done = 0;
        while done < self.pending.len() {
            match w.try_write(&self.pending[done..]) {
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.w = None;
                    self.pending.clear();
                    return;
                }
            }
        }
        self.pending.drain(..done);
        if !self.pending.is_empty() {
            self.busy = true;
            self.notify.notify_one();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Client(Owner),
    Peer(NodeId),
}

struct Core {
    node: Node,
    sinks: HashMap<Key, Sink>,
    dirty: Vec<Key>,
}

impl Core {
    fn sink(&mut self, k: Key) -> Option<&mut Sink> {
        let s = self.sinks.get_mut(&k)?;
        if !self.dirty.contains(&k) {
            self.dirty.push(k);
        }
        Some(s)
    }

    /// Queue a response for a client.
    fn reply(&mut self, owner: Owner, resp: &Response) {
        if let Some(s) = self.sink(Key::Client(owner)) {
            encode_response(resp, &mut s.pending);
        }
    }

    /// Carry out the node's outputs: frames to peers, callbacks to clients; then write.
    fn flush(&mut self) {
        self.route();
        self.kick();
    }

    /// Write what is pending for every connection touched since the last kick.
    fn kick(&mut self) {
        for k in std::mem::take(&mut self.dirty) {
            if let Some(s) = self.sinks.get_mut(&k) {
                s.kick();
            }
        }
    }

    /// Queue the node's outputs on their connections.
    fn route(&mut self) {
        for o in self.node.take_output() {
            match o {
                Output::Send { to, msg } => match self.sink(Key::Peer(to)) {
                    Some(s) => encode(&msg, &mut s.pending),
                    None => warn!(to, "message for an unknown node dropped"),
                },
                Output::Ast(a) => {
                    let (owner, resp) = match a {
                        Ast::Completion { ls, lkid, owner, status, mode, sbflags, lvb } => {
                            (owner, Response::Completion { ls, lkid, status, mode, sbflags, lvb })
                        }
                        Ast::Blocking { ls, lkid, owner, mode } => (owner, Response::Blocking { ls, lkid, mode }),
                        Ast::Plock { ls, owner, reqid, status, conflict } => {
                            (owner, Response::Plock { seq: reqid as u32, status, ls, conflict })
                        }
                    };
                    self.reply(owner, &resp);
                }
            }
        }
    }
}

/// Write what [`Sink::kick`] could not, whenever it is notified.
async fn sink_writer(core: Rc<RefCell<Core>>, key: Key, notify: Rc<tokio::sync::Notify>) {
    loop {
        notify.notified().await;
        loop {
            let (w, buf) = {
                let mut c = core.borrow_mut();
                let Some(s) = c.sinks.get_mut(&key) else { return };
                if s.pending.is_empty() || s.w.is_none() {
                    s.busy = false;
                    break;
                }
                (s.w.clone().expect("checked"), std::mem::take(&mut s.pending))
            };
            let mut done = 0;
            let mut failed = false;
            while done < buf.len() {
                if w.writable().await.is_err() {
                    failed = true;
                    break;
                }
                match w.try_write(&buf[done..]) {
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            let mut c = core.borrow_mut();
            let Some(s) = c.sinks.get_mut(&key) else { return };
            if failed {
                s.w = None;
                s.pending.clear();
                s.busy = false;
                break;
            }
            // Frames queued meanwhile went to `pending`, behind these bytes: loop.
        }
    }
}

/// Run the daemon until SIGTERM or SIGINT (as `signals`, installed by the caller before any
/// thread was started, reports them; SIGHUP only reopens the log file, which the toolkit
/// does by itself). `ready` is called once everything listens.
pub fn run(cfg: DaemonConfig, signals: &::daemon::Signals, ready: impl FnOnce(&Ready)) -> Result<(), DaemonError> {
    if cfg.peers.iter().any(|(id, _)| *id == cfg.node_id) {
        return Err(DaemonError::Config(format!("node {} is listed as its own peer", cfg.node_id)));
    }
    if !cfg.peers.is_empty() && cfg.listen.is_none() {
        return Err(DaemonError::Config("peers need --listen".into()));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(DaemonError::Runtime)?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, serve(cfg, signals, ready))
}

async fn serve(cfg: DaemonConfig, signals: &::daemon::Signals, ready: impl FnOnce(&Ready)) -> Result<(), DaemonError> {
    let _ = std::fs::remove_file(&cfg.socket);
    let unix =
        UnixListener::bind(&cfg.socket).map_err(|source| DaemonError::Socket { path: cfg.socket.clone(), source })?;
    let tcp = match cfg.listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| DaemonError::Listen { addr, source })?),
        None => None,
    };
    let mut node = Node::new(cfg.node_id);
    if cfg.cluster.is_none() {
        let mut members: Vec<NodeId> = cfg.peers.iter().map(|p| p.0).collect();
        members.push(cfg.node_id);
        node.membership(MemberEvent::Members { epoch: 1, members, failed: Vec::new() });
    }
    let core = Rc::new(RefCell::new(Core { node, sinks: HashMap::new(), dirty: Vec::new() }));
    let mut first_view = None;
    if let Some(src) = &cfg.cluster {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (view_tx, view_rx) = tokio::sync::oneshot::channel();
        first_view = Some(view_rx);
        spawn_subscriber(src, tx.clone());
        tokio::task::spawn_local(cluster_events(core.clone(), src.clone(), cfg.node_id, tx, rx, view_tx));
    }
    for &(id, addr) in &cfg.peers {
        let sink = Sink::new();
        let notify = sink.notify.clone();
        core.borrow_mut().sinks.insert(Key::Peer(id), sink);
        tokio::task::spawn_local(sink_writer(core.clone(), Key::Peer(id), notify));
        tokio::task::spawn_local(peer_connector(core.clone(), cfg.node_id, id, addr));
    }
    if let Some(tcp) = tcp {
        let peers: Vec<NodeId> = cfg.peers.iter().map(|p| p.0).collect();
        let core = core.clone();
        tokio::task::spawn_local(async move {
            loop {
                match tcp.accept().await {
                    Ok((s, addr)) => {
                        let _ = s.set_nodelay(true);
                        tokio::task::spawn_local(peer_reader(core.clone(), s, addr, peers.clone()));
                    }
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    if let Some(view) = first_view {
        // Clients are served once the members are known (like the static list), so nothing
        // waits on a lockspace that cannot recover yet. (The lock engine copes with a
        // lockspace joined before the first member list: it recovers with the others, or
        // makes running members recover with it.)
        info!("waiting for the first member list from fenced");
        let _ = view.await;
    }
    ready(&Ready { node_id: cfg.node_id, socket: cfg.socket.clone(), listen: cfg.listen });
    let mut next_owner: Owner = 1;
    let stopped = signals.stopped();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            r = unix.accept() => match r {
                Ok((s, _)) => {
                    let owner = next_owner;
                    next_owner += 1;
                    tokio::task::spawn_local(client_conn(core.clone(), s, owner));
                }
                Err(e) => {
                    warn!(error = %e, "accept on the client socket failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut stopped => break,
        }
    }
    ::daemon::ready::stopping();
    let _ = std::fs::remove_file(&cfg.socket);
    info!("dlm_controld stopping");
    Ok(())
}

/// Feed the cluster layer's view to the node (cluster mode).
async fn cluster_events(
    core: Rc<RefCell<Core>>,
    src: ClusterSource,
    me: NodeId,
    tx: tokio::sync::mpsc::UnboundedSender<Input>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Input>,
    first_view: tokio::sync::oneshot::Sender<()>,
) {
    let mut first_view = Some(first_view);
    let mut tracker = Tracker::new(me);
    while let Some(input) = rx.recv().await {
        let step = match input {
            Input::Event(ev) => {
                debug!(?ev, "fenced event");
                tracker.on_event(&ev)
            }
            Input::Lost => tracker.on_lost(),
            Input::Safe(node) => {
                info!(node, "fenced: node is safe; its locks can be recovered");
                crate::cluster::Step { events: vec![MemberEvent::Fenced { node }], wait_for: Vec::new() }
            }
        };
        for n in step.wait_for {
            spawn_wait_fenced(&src, n, tx.clone());
        }
        if step.events.is_empty() {
            continue;
        }
        let mut c = core.borrow_mut();
        for ev in step.events {
            info!(?ev, "membership event");
            c.node.membership(ev);
        }
        c.flush();
        if tracker.epoch() > 0 {
            if let Some(v) = first_view.take() {
                let _ = v.send(());
            }
        }
    }
}

/// Keep a connection open to peer `id`; frames to it go through its [`Sink`].
async fn peer_connector(core: Rc<RefCell<Core>>, me: NodeId, id: NodeId, addr: SocketAddr) {
    loop {
        let connected = core.borrow().sinks.get(&Key::Peer(id)).is_some_and(|s| s.w.is_some());
        if connected {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let s = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => {
                debug!(peer = id, error = %e, "connect failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        let (rd, mut wr) = s.into_split();
        let mut hello = Vec::new();
        encode(&Message::Hello { node: me }, &mut hello);
        if wr.write_all(&hello).await.is_err() {
            continue;
        }
        info!(peer = id, %addr, "connected to peer");
        // Nothing comes back on this connection; reading it notices when it closes.
        tokio::task::spawn_local(async move {
            let mut rd = rd;
            let mut b = [0u8; 64];
            while matches!(rd.read(&mut b).await, Ok(n) if n > 0) {}
        });
        let mut c = core.borrow_mut();
        if let Some(sink) = c.sinks.get_mut(&Key::Peer(id)) {
            sink.w = Some(W::Tcp(Rc::new(wr)));
            sink.busy = false;
            sink.kick();
        }
    }
}

/// Read frames from a peer and feed them to the node.
async fn peer_reader(core: Rc<RefCell<Core>>, mut s: TcpStream, addr: SocketAddr, peers: Vec<NodeId>) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut from: Option<NodeId> = None;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        let mut fed = false;
        loop {
            match decode(&buf[at..]) {
                Ok(Decoded::NeedMore(_)) => break,
                Ok(Decoded::Frame(msg, used)) => {
                    at += used;
                    match (from, msg) {
                        (None, Message::Hello { node }) if peers.contains(&node) => from = Some(node),
                        (None, _) => {
                            warn!(%addr, "peer did not introduce itself as a configured node; closing");
                            return;
                        }
                        (Some(f), msg) => {
                            core.borrow_mut().node.receive(f, msg);
                            fed = true;
                        }
                    }
                }
                Err(e) => {
                    warn!(%addr, error = %e, "malformed frame from peer; closing");
                    if fed {
                        core.borrow_mut().flush();
                    }
                    return;
                }
            }
        }
        buf.drain(..at);
        if fed {
            core.borrow_mut().flush();
        }
    }
}

async fn client_conn(core: Rc<RefCell<Core>>, s: UnixStream, owner: Owner) {
    let (mut rd, wr) = s.into_split();
    let mut sink = Sink::new();
    sink.w = Some(W::Unix(Rc::new(wr)));
    let notify = sink.notify.clone();
    core.borrow_mut().sinks.insert(Key::Client(owner), sink);
    let writer = tokio::task::spawn_local(sink_writer(core.clone(), Key::Client(owner), notify));
    debug!(owner, "client connected");
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        let mut bad = false;
        {
            let mut c = core.borrow_mut();
            loop {
                match decode_request(&buf[at..]) {
                    Ok(Frame::NeedMore(_)) => break,
                    Ok(Frame::Done(req, seq, used)) => {
                        at += used;
                        let resp = handle(&mut c.node, owner, req, seq);
                        // The reply goes before any callback the request caused.
                        c.reply(owner, &resp);
                        c.route();
                    }
                    Err(e) => {
                        warn!(owner, error = %e, "malformed request from a client; closing its connection");
                        c.reply(owner, &Response::Reply { seq: 0, status: -22, ls: 0, lkid: 0 });
                        bad = true;
                        break;
                    }
                }
            }
            c.kick();
        }
        if bad {
            // Let the writer drain the error reply before the connection goes.
            tokio::time::sleep(Duration::from_millis(20)).await;
            break;
        }
        buf.drain(..at);
    }
    debug!(owner, "client gone");
    writer.abort();
    let mut c = core.borrow_mut();
    c.sinks.remove(&Key::Client(owner));
    let ids: Vec<u32> = c.node.lockspaces().iter().map(|l| l.id).collect();
    for ls in ids {
        c.node.purge_owner(ls, owner);
    }
    c.flush();
}

fn reply(seq: u32, r: Result<(u32, u64), crate::node::DlmError>) -> Response {
    match r {
        Ok((ls, lkid)) => Response::Reply { seq, status: 0, ls, lkid },
        Err(e) => Response::Reply { seq, status: e.code(), ls: 0, lkid: 0 },
    }
}

fn opt(v: &[u8]) -> Option<&[u8]> {
    (!v.is_empty()).then_some(v)
}

/// Carry out one client request on the node; the synchronous answer.
fn handle(node: &mut Node, owner: Owner, req: Request, seq: u32) -> Response {
    match req {
        Request::Join { name, lvblen } => {
            let lvblen = if lvblen == 0 { DEFAULT_LVB_LEN } else { lvblen as usize };
            reply(seq, node.join(&name, lvblen).map(|ls| (ls, 0)))
        }
        Request::Leave { ls } => {
            let status = if node.leave(ls) { 0 } else { -2 };
            Response::Reply { seq, status, ls, lkid: 0 }
        }
        Request::Lock { ls, mode, flags, name, lvb } => {
            reply(seq, node.lock(ls, owner, &name, mode, flags, opt(&lvb)).map(|id| (ls, id)))
        }
        Request::Convert { ls, lkid, mode, flags, lvb } => {
            reply(seq, node.convert(ls, owner, lkid, mode, flags, opt(&lvb)).map(|()| (ls, lkid)))
        }
        Request::Unlock { ls, lkid, flags, lvb } => {
            reply(seq, node.unlock(ls, owner, lkid, flags, opt(&lvb)).map(|()| (ls, lkid)))
        }
        Request::Cancel { ls, lkid } => match node.cancel(ls, owner, lkid) {
            Ok(sent) => Response::Reply { seq, status: if sent { 0 } else { 1 }, ls, lkid },
            Err(e) => reply(seq, Err(e)),
        },
        Request::Member { event } => {
            info!(?event, "membership event");
            node.membership(event);
            Response::Reply { seq, status: 0, ls: 0, lkid: 0 }
        }
        Request::Plock { ls, op, name, args, wait } => {
            let op = match op {
                PlockOpCode::Set => PlockOp::Set { args, wait },
                PlockOpCode::Get => PlockOp::Get { args },
                _ => PlockOp::ReleaseOwner { owner: args.owner },
            };
            reply(seq, node.plock(ls, owner, u64::from(seq), &name, op).map(|()| (ls, u64::from(seq))))
        }
        Request::PlockCancel { ls, reqid } => match node.plock_cancel(ls, owner, u64::from(reqid)) {
            Ok(found) => Response::Reply { seq, status: if found { 0 } else { 1 }, ls, lkid: u64::from(reqid) },
            Err(e) => reply(seq, Err(e)),
        },
        Request::PlockDump { name } => match node.lockspace_by_name(&name) {
            Some(ls) => Response::Text { seq, status: 0, text: plock_text(node, ls) },
            None => Response::Text {
                seq,
                status: -2,
                text: format!("no lockspace {:?} on this node\n", String::from_utf8_lossy(&name)),
            },
        },
        Request::List => Response::Text { seq, status: 0, text: list_text(node) },
        Request::Dump { name } => match node.lockspace_by_name(&name) {
            Some(ls) => Response::Text { seq, status: 0, text: dump_text(node, ls) },
            None => Response::Text {
                seq,
                status: -2,
                text: format!("no lockspace {:?} on this node\n", String::from_utf8_lossy(&name)),
            },
        },
    }
}

fn list_text(node: &Node) -> String {
    let mut s = String::new();
    for l in node.lockspaces() {
        s.push_str(&format!(
            "name {}\nid 0x{:08x}\nstate {}\nepoch {}\nlvblen {}\nmembers {}\nslots {}\nlocks {}\nmastered {}\n\n",
            String::from_utf8_lossy(&l.name),
            l.id,
            l.state,
            l.epoch,
            l.lvblen,
            l.members.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(" "),
            l.slots.iter().map(|(n, s)| format!("{n}:{s}")).collect::<Vec<_>>().join(" "),
            l.local_locks,
            l.mastered
        ));
    }
    s
}

fn mode_name(m: Option<Mode>) -> &'static str {
    m.map_or("--", Mode::name)
}

fn dump_text(node: &Node, ls: u32) -> String {
    let mut s = String::new();
    for r in node.lockdump(ls).unwrap_or_default() {
        s.push_str(&format!(
            "resource {:?} master {} lvbseq {}{}\n",
            String::from_utf8_lossy(&r.name),
            r.master,
            r.lvbseq,
            if r.valnotvalid { " valnotvalid" } else { "" }
        ));
        for l in r.locks {
            let q = match l.queue {
                Queue::Grant => "granted",
                Queue::Convert => "convert",
                Queue::Wait => "waiting",
            };
            s.push_str(&format!(
                "  {:016x} node {} {q} gr {} rq {}\n",
                l.lkid,
                crate::resource::lock_node(l.lkid),
                mode_name(l.grmode),
                mode_name(l.rqmode)
            ));
        }
    }
    s
}

fn plock_kind_name(k: PlockKind) -> &'static str {
    match k {
        PlockKind::Read => "RD",
        PlockKind::Write => "WR",
        PlockKind::Unlock => "UN",
    }
}

fn plock_range(start: u64, end: u64) -> String {
    if end == u64::MAX {
        format!("{start}-EOF")
    } else {
        format!("{start}-{end}")
    }
}

/// `dlm_tool plocks`: the plock resources this node masters, one line per lock.
fn plock_text(node: &Node, ls: u32) -> String {
    let mut s = String::new();
    for r in node.plock_dump(ls).unwrap_or_default() {
        s.push_str(&format!("resource {:?} master {}\n", String::from_utf8_lossy(&r.name), node.id()));
        for p in r.locks {
            s.push_str(&format!(
                "  {} {} node {} client {} owner {:x} pid {}\n",
                plock_kind_name(p.kind),
                plock_range(p.start, p.end),
                p.who.node,
                p.who.client,
                p.who.owner,
                p.pid
            ));
        }
        for (req, p) in r.waiters {
            s.push_str(&format!(
                "  WAITING {} {} node {} client {} owner {:x} pid {} request {}\n",
                plock_kind_name(p.kind),
                plock_range(p.start, p.end),
                req.node,
                req.client,
                p.who.owner,
                p.pid,
                req.id
            ));
        }
    }
    s
}
