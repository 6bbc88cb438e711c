//! The `gnbd_serv` daemon: state directory, listeners, handshake threads, workers, the
//! control socket and orderly shutdown.

use std::fs;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use anyhow::{bail, Context};
use nbd_proto::{ServerConfig, TlsPolicy};
use tracing::{debug, error, info, warn};

use crate::control::{
    ControlError, ControlReply, ControlRequest, ErrorKind, ExportStatus, SessionStatus, CONTROL_SOCKET,
};
use crate::export::{Export, ExportError, ExportSpec, Offline, Registry, Session};
use crate::fence::{self, NodeTable};
use crate::handshake::{negotiate, HandshakeFailure, Transport, HANDSHAKE_TIMEOUT};
use crate::netctl::{self, ClusterKey};
use crate::state;
use crate::sys;
use crate::tls::{self, TlsServer, TlsSettings};
use crate::worker::{NewConn, Workers};
use daemon::control::SocketAccess;
use gnbd_fence::{Order, Reply};

/// Default NBD port (IANA).
pub const DEFAULT_PORT: u16 = 10809;
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/gnbd";
/// How long SIGTERM waits for in-flight requests before cutting connections.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(20);
/// Handshakes allowed at once; further connections are closed at once.
const MAX_HANDSHAKES: usize = 1024;

/// Everything `gnbd_serv` needs to start.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub state_dir: PathBuf,
    pub bind: IpAddr,
    pub port: u16,
    pub unix: Option<PathBuf>,
    pub threads: usize,
    pub default_export: Option<String>,
    /// Node table: client addresses of the cluster's nodes (`NODE ADDRESS...` per line).
    pub nodes: Option<PathBuf>,
    /// Refuse clients whose address is not in the node table.
    pub cluster: bool,
    /// Shared cluster key: enables the network control channel for fence orders.
    pub cluster_key: Option<PathBuf>,
    /// Port of the network control channel (0: a free port, shown in the ready line).
    pub control_port: u16,
    /// STARTTLS: certificates and policy (`None`: TLS off).
    pub tls: Option<TlsSettings>,
}

struct Shared {
    registry: Registry,
    workers: Workers,
    state_dir: PathBuf,
    /// Serialises changes to the export set and the state file.
    state_lock: Mutex<()>,
    stopping: AtomicBool,
    handshakes: AtomicUsize,
    listening: Vec<String>,
    tls: Option<TlsServer>,
}

/// Runs the server until SIGTERM or SIGINT. `ready` receives the readiness line once every
/// listener accepts connections.
pub fn run(cfg: ServeConfig, ready: impl FnOnce(&str)) -> anyhow::Result<()> {
    let signals = daemon::signals::install().context("cannot install signal handlers")?;
    sys::ignore_sigpipe();
    fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("cannot create state directory {}", cfg.state_dir.display()))?;
    let _lock = daemon::lock::PidFile::lock(&cfg.state_dir.join(PID_FILE), "gnbd_serv")?;

    let nodes = match &cfg.nodes {
        Some(p) => NodeTable::load(p)?,
        None => NodeTable::default(),
    };
    if cfg.cluster && nodes.is_empty() {
        bail!("--cluster needs a node table (--nodes FILE) listing the nodes' addresses");
    }
    let tls = match &cfg.tls {
        Some(t) if t.policy != TlsPolicy::Off => {
            let server = TlsServer::load(t)?;
            info!(policy = ?t.policy, cert = %t.cert.display(), client_certificates = t.ca.is_some(), "TLS enabled");
            Some(server)
        }
        _ => None,
    };
    if cfg.cluster && tls.is_some() && cfg.tls.as_ref().is_some_and(|t| t.ca.is_none()) {
        bail!("--cluster with TLS needs --tls-ca: cluster nodes are identified by their client certificates");
    }
    let bans = fence::load_bans(&cfg.state_dir)?;
    if !bans.is_empty() {
        warn!(nodes = ?bans, "fenced nodes from the state directory stay fenced until unfenced");
    }
    let registry = Registry::new(cfg.default_export.clone(), nodes, cfg.cluster, bans);
    for spec in state::load(&cfg.state_dir)? {
        let name = spec.name.clone();
        match Export::open(spec.clone()) {
            Ok(e) => {
                info!(export = %name, path = %e.spec.path.display(), size = e.size, direct_io = e.direct_io(), "serving");
                registry.insert(e)?;
            }
            Err(e) => {
                error!(export = %name, error = %e, "export from the state file is offline");
                registry.insert_offline(Offline { spec, error: e.to_string() });
            }
        }
    }

    let tcp = TcpListener::bind(SocketAddr::new(cfg.bind, cfg.port))
        .with_context(|| format!("cannot listen on {}:{}", cfg.bind, cfg.port))?;
    let tcp_addr = tcp.local_addr()?;
    let mut listening = vec![format!("tcp={tcp_addr}")];
    let unix = match &cfg.unix {
        Some(p) => {
            remove_stale_socket(p)?;
            let l = UnixListener::bind(p).with_context(|| format!("cannot listen on {}", p.display()))?;
            listening.push(format!("unix={}", p.display()));
            Some(l)
        }
        None => None,
    };
    // Fence orders over the network: signed with the cluster key, or over TLS from a
    // certificate the CA signed.
    let key = cfg.cluster_key.as_ref().map(|path| ClusterKey::load(path).map(Arc::new)).transpose()?;
    let netctl = if key.is_some() || tls.as_ref().is_some_and(|t| t.client_auth) {
        let l = TcpListener::bind(SocketAddr::new(cfg.bind, cfg.control_port))
            .with_context(|| format!("cannot listen for control orders on {}:{}", cfg.bind, cfg.control_port))?;
        listening.push(format!("control={}", l.local_addr()?));
        Some((l, key))
    } else {
        None
    };
    let control_path = cfg.state_dir.join(CONTROL_SOCKET);
    // Only the server's own user may change exports and fence nodes through it.
    let control = daemon::control::bind(&control_path, SocketAccess::Owner)
        .with_context(|| format!("cannot create control socket {}", control_path.display()))?;

    let threads = if cfg.threads == 0 { thread::available_parallelism().map_or(2, |n| n.get()) } else { cfg.threads };
    let workers = Workers::spawn(threads).context("cannot start io_uring workers (is io_uring enabled?)")?;
    let shared = Arc::new(Shared {
        registry,
        workers,
        state_dir: cfg.state_dir.clone(),
        state_lock: Mutex::new(()),
        stopping: AtomicBool::new(false),
        handshakes: AtomicUsize::new(0),
        listening,
        tls,
    });

    let tcp_fd = tcp.as_raw_fd();
    let mut acceptors = Vec::new();
    {
        let sh = shared.clone();
        acceptors.push(thread::Builder::new().name("gnbd-accept-tcp".into()).spawn(move || accept_tcp(tcp, sh))?);
    }
    let unix_fd = unix.as_ref().map(|u| u.as_raw_fd());
    if let Some(u) = unix {
        let sh = shared.clone();
        acceptors.push(thread::Builder::new().name("gnbd-accept-unix".into()).spawn(move || accept_unix(u, sh))?);
    }
    let netctl_fd = netctl.as_ref().map(|(l, _)| l.as_raw_fd());
    if let Some((l, key)) = netctl {
        let sh = shared.clone();
        acceptors.push(thread::Builder::new().name("gnbd-netctl".into()).spawn(move || netctl_loop(l, key, sh))?);
    }
    let control_fd = control.as_raw_fd();
    {
        let sh = shared.clone();
        acceptors.push(thread::Builder::new().name("gnbd-control".into()).spawn(move || control_loop(control, sh))?);
    }

    let line = format!("gnbd_serv: ready {}", shared.listening.join(" "));
    info!(threads, "io_uring workers started");
    ready(&line);

    // SIGHUP rereads the node table (--nodes); exports are managed with gnbd_export.
    let mut seen = signals.counts();
    while seen.stop == 0 {
        let now = signals.wait_change(seen, std::time::Duration::from_secs(3600));
        if now.reload > seen.reload {
            reload_nodes(&cfg, &shared);
        }
        seen = now;
    }
    info!("shutting down: finishing in-flight requests");
    daemon::ready::stopping();
    shared.stopping.store(true, Ordering::SeqCst);
    shared.registry.set_shutting_down();
    for fd in [Some(tcp_fd), unix_fd, Some(control_fd), netctl_fd].into_iter().flatten() {
        // Wakes the accept() calls; the listeners are closed when their threads end.
        sys::shutdown(fd, libc::SHUT_RDWR);
    }
    for a in acceptors {
        let _ = a.join();
    }
    shared.workers.shutdown(SHUTDOWN_GRACE);
    let _ = fs::remove_file(&control_path);
    if let Some(p) = &cfg.unix {
        let _ = fs::remove_file(p);
    }
    info!("stopped");
    Ok(())
}

/// Name of the pid file (and instance lock) inside the state directory.
pub const PID_FILE: &str = "gnbd_serv.pid";

/// SIGHUP: reads the node table again; a table that does not parse leaves the old one in
/// force.
fn reload_nodes(cfg: &ServeConfig, sh: &Shared) {
    daemon::ready::reloading();
    match &cfg.nodes {
        None => info!("SIGHUP: no node table to reread (exports are managed with gnbd_export)"),
        Some(p) => match NodeTable::load(p) {
            Ok(t) => {
                let n = t.len();
                sh.registry.set_nodes(t);
                info!(nodes = n, file = %p.display(), "SIGHUP: node table reloaded");
            }
            Err(e) => warn!(error = %e, "SIGHUP: node table not reloaded; the old one stays in force"),
        },
    }
    daemon::ready::reloaded();
}

fn remove_stale_socket(p: &Path) -> anyhow::Result<()> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove stale socket {}", p.display())),
    }
}

/// Accepts until the server stops; a failed accept (EMFILE, ...) is logged and retried.
fn accept_loop<T>(sh: &Shared, what: &str, mut accept: impl FnMut() -> std::io::Result<T>, mut serve: impl FnMut(T)) {
    loop {
        let r = accept();
        if sh.stopping.load(Ordering::SeqCst) {
            return;
        }
        match r {
            Ok(c) => serve(c),
            Err(e) => {
                warn!(listener = what, error = %e, "accept failed");
                thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

fn accept_tcp(l: TcpListener, sh: Arc<Shared>) {
    accept_loop(
        &sh,
        "tcp",
        || l.accept(),
        |(s, peer)| {
            let _ = s.set_nodelay(true);
            sys::set_keepalive(&s);
            let node = sh.registry.node_of(Some(peer.ip()));
            spawn_handshake(&sh, s, peer.to_string(), node);
        },
    );
}

fn accept_unix(l: UnixListener, sh: Arc<Shared>) {
    let mut n = 0u64;
    accept_loop(
        &sh,
        "unix",
        || l.accept(),
        |(s, _)| {
            n += 1;
            spawn_handshake(&sh, s, format!("unix#{n}"), None);
        },
    );
}

/// A stream the handshake can run on and the data path can take over.
trait Socket: std::io::Read + std::io::Write + AsRawFd + Into<OwnedFd> + Send + 'static {
    fn set_timeout(&self, t: Option<std::time::Duration>) -> std::io::Result<()>;
}
impl Socket for TcpStream {
    fn set_timeout(&self, t: Option<std::time::Duration>) -> std::io::Result<()> {
        self.set_read_timeout(t)?;
        self.set_write_timeout(t)
    }
}
impl Socket for UnixStream {
    fn set_timeout(&self, t: Option<std::time::Duration>) -> std::io::Result<()> {
        self.set_read_timeout(t)?;
        self.set_write_timeout(t)
    }
}

fn spawn_handshake<S: Socket>(sh: &Arc<Shared>, s: S, peer: String, node: Option<String>) {
    if sh.handshakes.fetch_add(1, Ordering::SeqCst) >= MAX_HANDSHAKES {
        sh.handshakes.fetch_sub(1, Ordering::SeqCst);
        warn!(peer = %peer, "too many handshakes in progress; connection closed");
        return;
    }
    let sh2 = sh.clone();
    let r = thread::Builder::new().name("gnbd-handshake".into()).spawn(move || {
        let sh = sh2;
        let mut session = Session { registry: &sh.registry, peer: &peer, node, refused: None };
        let policy = sh.tls.as_ref().map_or(TlsPolicy::Off, |t| t.policy);
        let result = s.set_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(HandshakeFailure::Io).and_then(|()| {
            negotiate(s, &mut session, ServerConfig { tls: policy, ..ServerConfig::default() }, sh.tls.as_ref())
        });
        sh.handshakes.fetch_sub(1, Ordering::SeqCst);
        let node = session.node.clone();
        match result {
            Ok((negotiated, leftover, stream)) => start_data_path(&sh, negotiated, leftover, stream, peer, node),
            Err(HandshakeFailure::Aborted) => debug!(peer = %peer, "client ended the handshake"),
            Err(HandshakeFailure::Vanished) => debug!(peer = %peer, "client left during the handshake"),
            Err(e) => warn!(peer = %peer, error = %e, "handshake failed"),
        }
    });
    if let Err(e) = r {
        sh.handshakes.fetch_sub(1, Ordering::SeqCst);
        warn!(error = %e, "cannot start a handshake thread");
    }
}

/// Hands a negotiated connection to a worker: the socket itself, or for TLS one end of a
/// socket pair whose other end a relay thread joins to the TLS session.
fn start_data_path<S: Socket>(
    sh: &Arc<Shared>,
    negotiated: nbd_proto::Negotiated,
    leftover: Vec<u8>,
    stream: Transport<S>,
    peer: String,
    node: Option<String>,
) {
    let Some(export) = sh.registry.get(&negotiated.export.name) else {
        warn!(peer = %peer, export = %negotiated.export.name, "export removed during the handshake");
        return;
    };
    // The data path waits as long as it must; only the handshake is timed.
    let _ = stream.sock().set_timeout(None);
    let (sock, relay): (OwnedFd, _) = match stream {
        Transport::Plain(s) => (s.into(), None),
        Transport::Tls(t) => match UnixStream::pair() {
            Ok((worker_end, relay_end)) => (worker_end.into(), Some((t, relay_end))),
            Err(e) => {
                warn!(peer = %peer, error = %e, "cannot create the socket pair for a TLS connection");
                return;
            }
        },
    };
    let attached = match sh.registry.attach(&export, peer.clone(), node.clone(), negotiated.tls, sock.as_raw_fd()) {
        Ok(a) => a,
        Err(r) => {
            warn!(peer = %peer, refusal = ?r, "connection refused after its handshake (fenced meanwhile)");
            return;
        }
    };
    info!(peer = %peer, node = ?node, export = %export.spec.name, mode = ?negotiated.mode, tls = negotiated.tls,
          "client connected");
    if let Some((t, relay_end)) = relay {
        let p = peer.clone();
        if let Err(e) = thread::Builder::new().name("gnbd-tls".into()).spawn(move || tls::relay(*t, relay_end, &p)) {
            warn!(peer = %peer, error = %e, "cannot start a TLS relay thread");
            export.detach_client(attached.client_id);
            return;
        }
    }
    sh.workers.dispatch(NewConn {
        sock,
        peer,
        export,
        negotiated,
        leftover,
        client_id: attached.client_id,
        fenced: attached.fenced,
    });
}

fn control_loop(l: UnixListener, sh: Arc<Shared>) {
    accept_loop(
        &sh,
        "control",
        || l.accept(),
        |(s, _)| {
            let sh = sh.clone();
            let _ = thread::Builder::new().name("gnbd-control-conn".into()).spawn(move || control_conn(s, &sh));
        },
    );
}

fn netctl_loop(l: TcpListener, key: Option<Arc<ClusterKey>>, sh: Arc<Shared>) {
    accept_loop(
        &sh,
        "netctl",
        || l.accept(),
        |(s, _)| {
            let (sh, key) = (sh.clone(), key.clone());
            let _ = thread::Builder::new().name("gnbd-netctl-conn".into()).spawn(move || {
                let member = |node: &str| sh.registry.order_issuer(node);
                let auth = netctl::Authenticators { key: key.as_deref(), tls: sh.tls.as_ref(), member: &member };
                netctl::serve(s, &auth, |order| network_order(order, &sh));
            });
        },
    );
}

fn control_conn(s: UnixStream, sh: &Shared) {
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(30)));
    let _ = daemon::control::serve_blocking(s, |req| handle(req, sh));
}

/// A fence order from another node (network channel): the same handler as the socket's.
fn network_order(order: Order, sh: &Shared) -> Reply {
    let req = match order {
        Order::Fence { node } => ControlRequest::Fence { node },
        Order::Unfence { node } => ControlRequest::Unfence { node },
        Order::Bans => ControlRequest::Bans,
        Order::Status => ControlRequest::Status,
    };
    match handle(req, sh) {
        Ok(ControlReply::Done { message }) => Reply::Ok { message },
        Ok(ControlReply::Bans { nodes }) => Reply::Bans { nodes },
        Ok(ControlReply::Status { pid, version, listening }) => Reply::Status { pid, version, listening },
        Ok(ControlReply::Exports { .. }) => Reply::Error { message: "not an order of the network channel".into() },
        Err(e) => Reply::Error { message: e.message },
    }
}

/// Carries out one control request (from the socket, or a network fence order).
fn handle(req: ControlRequest, sh: &Shared) -> Result<ControlReply, ControlError> {
    let done = |message: String| Ok(ControlReply::Done { message });
    match req {
        ControlRequest::Export { spec } => {
            let _g = sh.state_lock.lock().expect("state lock");
            let export = Export::open(spec).map_err(|e| ControlError::failed(e.to_string()))?;
            let (name, path, size) = (export.spec.name.clone(), export.spec.path.clone(), export.size);
            let direct = export.direct_io();
            sh.registry.insert(export).map_err(export_error)?;
            if let Err(e) = state::save(&sh.state_dir, &sh.registry.specs()) {
                let _ = sh.registry.remove(&name, true);
                return Err(ControlError::failed(format!("export not created: {e}")));
            }
            info!(export = %name, path = %path.display(), size, direct_io = direct, "export created");
            done(format!("created export '{name}' ({}, {size} bytes)", path.display()))
        }
        ControlRequest::Remove { name, force } => {
            let _g = sh.state_lock.lock().expect("state lock");
            sh.registry.remove(&name, force).map_err(export_error)?;
            if let Err(e) = state::save(&sh.state_dir, &sh.registry.specs()) {
                return Err(ControlError::failed(format!("export removed, but the state file was not updated: {e}")));
            }
            info!(export = %name, force, "export removed");
            done(format!("removed export '{name}'"))
        }
        ControlRequest::List => {
            let mut exports: Vec<ExportStatus> = sh
                .registry
                .exports()
                .iter()
                .map(|e| ExportStatus {
                    name: e.spec.name.clone(),
                    path: e.spec.path.clone(),
                    size: e.size,
                    cached: e.spec.cached,
                    readonly: e.spec.readonly,
                    online: true,
                    direct_io: e.direct_io(),
                    error: None,
                    clients: e.clients().into_iter().map(|c| c.peer).collect(),
                    tls: e.spec.tls,
                    sessions: e
                        .clients()
                        .into_iter()
                        .map(|c| SessionStatus { peer: c.peer, node: c.node, tls: c.tls })
                        .collect(),
                })
                .collect();
            exports.extend(sh.registry.offline().into_iter().map(|o| ExportStatus {
                name: o.spec.name.clone(),
                path: o.spec.path.clone(),
                size: 0,
                cached: o.spec.cached,
                readonly: o.spec.readonly,
                online: false,
                direct_io: false,
                error: Some(o.error),
                clients: Vec::new(),
                tls: o.spec.tls,
                sessions: Vec::new(),
            }));
            exports.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(ControlReply::Exports { exports })
        }
        ControlRequest::Fence { node } => fence_node(sh, &node),
        ControlRequest::Unfence { node } => {
            if let Err(why) = fence::valid_node_name(&node) {
                return Err(ControlError::bad_request(format!("bad node name '{node}': {why}")));
            }
            let _g = sh.state_lock.lock().expect("state lock");
            match sh.registry.unfence(&node, |set| fence::save_bans(&sh.state_dir, set)) {
                Ok(true) => {
                    info!(node = %node, "node unfenced");
                    done(format!("unfenced node '{node}'"))
                }
                Ok(false) => done(format!("node '{node}' was not fenced")),
                Err(e) => Err(ControlError::failed(format!("node '{node}' is still fenced: {e}"))),
            }
        }
        ControlRequest::Bans => Ok(ControlReply::Bans { nodes: sh.registry.bans() }),
        ControlRequest::Status => Ok(ControlReply::Status {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            listening: sh.listening.clone(),
        }),
    }
}

/// The error kind of a refused export change.
fn export_error(e: ExportError) -> ControlError {
    let kind = match &e {
        ExportError::UnknownExport { .. } => ErrorKind::NotFound,
        ExportError::NameTaken { .. } => ErrorKind::Exists,
        ExportError::InUse { .. } => ErrorKind::Busy,
        ExportError::BadName { .. } => ErrorKind::BadRequest,
        _ => ErrorKind::Failed,
    };
    ControlError::new(kind, e.to_string())
}

/// How long a fence order waits for the node's connections to finish their I/O.
const FENCE_DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Carries out a fence order; the reply comes only when the node can no longer write.
fn fence_node(sh: &Shared, node: &str) -> Result<ControlReply, ControlError> {
    if let Err(why) = fence::valid_node_name(node) {
        return Err(ControlError::bad_request(format!("bad node name '{node}': {why}")));
    }
    let _g = sh.state_lock.lock().expect("state lock");
    let cut = sh
        .registry
        .fence(node, |set| fence::save_bans(&sh.state_dir, set))
        .map_err(|e| ControlError::failed(format!("node '{node}' NOT fenced: {e}")))?;
    warn!(node = %node, connections = cut, "fencing node: ban persisted, connections cut");
    let deadline = std::time::Instant::now() + FENCE_DRAIN;
    loop {
        let left = sh.registry.node_connections(node);
        if left == 0 {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(ControlError::busy(format!(
                "node '{node}' is banned, but {left} of its connection(s) still have I/O in flight after \
                 {FENCE_DRAIN:?}; the fence is not complete"
            )));
        }
        thread::sleep(std::time::Duration::from_millis(5));
    }
    info!(node = %node, connections = cut, "node fenced");
    Ok(ControlReply::Done { message: format!("fenced node '{node}' ({cut} connection(s) cut)") })
}

/// Builds an export spec as `gnbd_export -e` does: absolute path, checked to exist.
pub fn spec_for(
    name: &str,
    path: &Path,
    cached: bool,
    readonly: bool,
    description: String,
    tls: bool,
) -> anyhow::Result<ExportSpec> {
    let path = crate::export::absolute(path);
    if !path.exists() {
        bail!("{} does not exist", path.display());
    }
    Ok(ExportSpec { name: name.into(), path, cached, readonly, description, tls })
}
