//! `lvsd`: the running director. It loads an `lvs.cf` (and/or ipvsadm-save rules), listens
//! on every virtual address, runs the health checks, ages the table once a second, answers
//! `lvsadm` on its control socket ([`crate::control`]) and, on SIGHUP (or a `reload`
//! request), rereads its files and applies the difference ([`crate::reload`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use daemon::control::{AsyncConn, ControlError, SocketAccess};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::admin;
use crate::config::{LvsConfig, RealServerConf, VirtualConf};
use crate::control::{admin_error, IpvsadmReply, ReloadReply, Request, StatusReply};
use crate::model::{Protocol, ServiceKey};
use crate::proxy::{self, Shared};
use crate::table::Director;

pub use crate::control::DEFAULT_SOCKET;

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The lvs.cf is unusable.
    #[error("{0}")]
    Config(String),
    /// The control socket cannot be created.
    #[error("cannot listen on control socket {path}: {source}")]
    Socket {
        /// Its path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A virtual address cannot be bound.
    #[error("cannot listen on {proto:?} {addr}: {source}")]
    Bind {
        /// Protocol.
        proto: Protocol,
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Control socket path.
    pub socket: PathBuf,
    /// An lvs.cf to load (services, servers, health checks).
    pub config: Option<PathBuf>,
    /// ipvsadm-save rules to load after the config.
    pub rules: Option<PathBuf>,
    /// Do not run the health checks of the lvs.cf.
    pub no_checks: bool,
    /// Drop persistence templates that point at a quiesced server.
    pub expire_quiescent_template: bool,
    /// Data-plane worker threads (0: one per CPU).
    pub threads: usize,
    /// Program the nftables fast path for the services it can express.
    pub nft: bool,
}

/// Keeps the nftables table in step with the director's table.
#[derive(Debug)]
struct NftSync {
    enabled: bool,
    applied: Option<u64>,
}

impl NftSync {
    async fn sync(&mut self, shared: &Shared) {
        if !self.enabled {
            return;
        }
        let (version, script, fast) = {
            let d = shared.lock();
            (d.version(), crate::nft::ruleset(&d), crate::nft::fast_services(&d))
        };
        if self.applied == Some(version) {
            return;
        }
        match nft_apply(&script).await {
            Ok(()) => {
                self.applied = Some(version);
                info!(services = ?fast.iter().map(|k| k.to_string()).collect::<Vec<_>>(), "nftables fast path updated");
            }
            Err(e) => warn!(error = %e, "cannot program nftables; those services stay on the proxy"),
        }
    }
}

async fn nft_apply(script: &str) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("nft -f: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// Data-plane worker threads, each running its own single-threaded runtime: every TCP
/// virtual address gets one SO_REUSEPORT listener per worker, so the kernel spreads
/// accepts over the workers and a connection stays on the thread that accepted it.
#[derive(Debug)]
struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Workers {
    fn start(n: usize) -> std::io::Result<Workers> {
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            handles.push(rt.handle().clone());
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            stops.push(tx);
            std::thread::Builder::new().name(format!("lvsd-worker-{i}")).spawn(move || {
                rt.block_on(async {
                    let _ = rx.await;
                });
            })?;
        }
        Ok(Workers { handles, stops })
    }

    fn stop(self) {
        for s in self.stops {
            let _ = s.send(());
        }
    }
}

/// The listeners, keyed by what they serve.
#[derive(Debug)]
struct Listeners {
    tasks: HashMap<(Protocol, SocketAddr), Vec<JoinHandle<()>>>,
    workers: Workers,
}

impl Listeners {
    /// Opens listeners for new virtual addresses and closes those no longer in the table.
    /// Established connections are separate tasks and are not touched.
    fn reconcile(&mut self, shared: &Arc<Shared>) -> Vec<DaemonError> {
        let want = shared.lock().listen_set();
        let mut errors = Vec::new();
        self.tasks.retain(|k, hs| {
            let keep = want.contains(k);
            if !keep {
                for h in hs.iter() {
                    h.abort();
                }
                info!(proto = ?k.0, addr = %k.1, "stopped listening");
            }
            keep
        });
        for (proto, addr) in want {
            if self.tasks.contains_key(&(proto, addr)) {
                continue;
            }
            let mut tasks = Vec::new();
            let result: std::io::Result<()> = (|| {
                match proto {
                    Protocol::Tcp => {
                        for h in &self.workers.handles {
                            let _guard = h.enter();
                            let l = proxy::bind_tcp(addr)?;
                            tasks.push(h.spawn(proxy::serve_tcp(shared.clone(), l, addr)));
                        }
                    }
                    Protocol::Udp => {
                        let h = &self.workers.handles[0];
                        let _guard = h.enter();
                        let s = proxy::bind_udp(addr)?;
                        tasks.push(h.spawn(proxy::serve_udp(shared.clone(), s, addr)));
                    }
                }
                Ok(())
            })();
            if let Err(source) = result {
                for t in tasks {
                    t.abort();
                }
                errors.push(DaemonError::Bind { proto, addr, source });
                continue;
            }
            info!(proto = ?proto, addr = %addr, "listening");
            self.tasks.insert((proto, addr), tasks);
        }
        errors
    }
}

/// Builds the table from the options (config then rules).
pub fn load_table(opts: &DaemonOptions) -> Result<(Director, Option<LvsConfig>), DaemonError> {
    let mut d = Director::new();
    d.expire_quiescent_template = opts.expire_quiescent_template;
    let mut cfg = None;
    if let Some(path) = &opts.config {
        let c = LvsConfig::load(path).map_err(DaemonError::Config)?;
        c.apply(&mut d).map_err(|e| DaemonError::Config(format!("{}: {e}", path.display())))?;
        cfg = Some(c);
    }
    if let Some(path) = &opts.rules {
        let text = std::fs::read_to_string(path)
            .map_err(|e| DaemonError::Config(format!("{}: cannot read: {e}", path.display())))?;
        admin::run(&mut d, admin::Command::Restore, &text, 0)
            .map_err(|e| DaemonError::Config(format!("{}: {e}", path.display())))?;
    }
    Ok((d, cfg))
}

/// A running health check and the configuration it was started with (line numbers
/// cleared: moving a block in the file does not restart its checks).
#[derive(Debug)]
struct Check {
    conf: (VirtualConf, RealServerConf),
    task: JoinHandle<()>,
}

type CheckKey = (ServiceKey, SocketAddr);

/// The health checks an lvs.cf asks for, by service and real server.
fn wanted_checks(cfg: Option<&LvsConfig>, no_checks: bool) -> HashMap<CheckKey, (VirtualConf, RealServerConf)> {
    let mut out = HashMap::new();
    let Some(cfg) = cfg.filter(|_| !no_checks) else { return out };
    for v in cfg.virtuals.iter().filter(|v| v.active) {
        for s in v.servers.iter().filter(|s| s.active) {
            let (mut v2, mut s2) = (v.clone(), s.clone());
            v2.line = 0;
            s2.line = 0;
            out.insert((v.key(), v.dest_addr(s)), (v2, s2));
        }
    }
    out
}

/// Everything the control plane shares.
#[derive(Debug)]
struct State {
    opts: DaemonOptions,
    shared: Arc<Shared>,
    listeners: tokio::sync::Mutex<Listeners>,
    nft: tokio::sync::Mutex<NftSync>,
    checks: tokio::sync::Mutex<HashMap<CheckKey, Check>>,
    reloads: std::sync::atomic::AtomicU64,
}

impl State {
    /// Brings the listeners and the nftables table in step with the table; what could not
    /// be done, as warnings.
    async fn table_changed(&self) -> Vec<String> {
        let warnings = self.listeners.lock().await.reconcile(&self.shared).iter().map(|e| e.to_string()).collect();
        self.nft.lock().await.sync(&self.shared).await;
        warnings
    }

    /// Starts the health checks `cfg` asks for; keeps the running ones whose configuration
    /// did not change. Returns the keys of the kept ones.
    async fn update_checks(&self, cfg: Option<&LvsConfig>) -> Vec<CheckKey> {
        let want = wanted_checks(cfg, self.opts.no_checks);
        let mut checks = self.checks.lock().await;
        checks.retain(|k, c| {
            let keep = want.get(k) == Some(&c.conf);
            if !keep {
                c.task.abort();
            }
            keep
        });
        let kept: Vec<CheckKey> = checks.keys().copied().collect();
        for (k, conf) in want {
            if let std::collections::hash_map::Entry::Vacant(e) = checks.entry(k) {
                let task = crate::nanny::spawn_one(self.shared.clone(), &conf.0, &conf.1);
                e.insert(Check { conf, task });
            }
        }
        kept
    }

    /// Rereads `--config` and `--rules` and applies the difference to the running table.
    /// An unreadable or invalid file changes nothing.
    async fn reload(&self) -> Result<ReloadReply, ControlError> {
        let (target, cfg) =
            load_table(&self.opts).map_err(|e| ControlError::failed(format!("{e}; the running table is unchanged")))?;
        self.reloads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Checks whose configuration is unchanged keep running, and keep their say over
        // their server's presence and weight.
        let kept = self.update_checks(cfg.as_ref()).await;
        let now = self.shared.now_ms();
        let (changes, mut warnings) = {
            let mut d = self.shared.lock();
            let ops = crate::reload::diff(&d, &target, |k, a| kept.contains(&(*k, a)));
            crate::reload::apply(&mut d, ops, now)
        };
        warnings.extend(self.table_changed().await);
        Ok(ReloadReply { changes, warnings })
    }

    /// A reload asked for by SIGHUP: logged, never fatal.
    async fn reload_logged(&self) {
        daemon::ready::reloading();
        match self.reload().await {
            Ok(r) => {
                for c in &r.changes {
                    info!(change = %c, "reload");
                }
                for w in &r.warnings {
                    warn!(problem = %w, "reload: not applied; the rest of the table runs on");
                }
                info!(changes = r.changes.len(), warnings = r.warnings.len(), "configuration reloaded");
            }
            Err(e) => warn!(error = %e.message, "reload failed; still running on the previous configuration"),
        }
        daemon::ready::reloaded();
    }

    async fn ipvsadm(&self, args: &[String], input: &str) -> Result<IpvsadmReply, ControlError> {
        let cmd = admin::parse_args(args).map_err(|e| admin_error(&e.into()))?;
        let change = admin::is_change(&cmd);
        let now = self.shared.now_ms();
        let result = admin::run(&mut self.shared.lock(), cmd, input, now);
        // A failed -R may have applied its first lines: reconcile in any case.
        let warnings = if change { self.table_changed().await } else { Vec::new() };
        let output = result.map_err(|e| admin_error(&e))?;
        Ok(IpvsadmReply { output, warnings })
    }

    async fn status(&self) -> StatusReply {
        let (services, real_servers, connections) = {
            let d = self.shared.lock();
            (d.services().len(), d.services().iter().map(|s| s.dests.len()).sum(), d.conns().count())
        };
        let mut listening: Vec<(Protocol, SocketAddr)> = self.listeners.lock().await.tasks.keys().copied().collect();
        listening.sort();
        StatusReply {
            pid: std::process::id(),
            config: self.opts.config.clone(),
            rules: self.opts.rules.clone(),
            services,
            real_servers,
            connections,
            listening: listening.iter().map(|(p, a)| format!("{} {a}", p.upper())).collect(),
            nft: self.opts.nft,
            health_checks: self.checks.lock().await.len(),
            reloads: self.reloads.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// Runs the director until a stop is requested through `signals`; SIGHUP reloads. Prints
/// the ready line (`lvsd: ready socket=PATH`) once everything listens.
pub async fn run(opts: DaemonOptions, signals: daemon::Signals) -> Result<(), DaemonError> {
    let (table, cfg) = load_table(&opts)?;
    let shared = Shared::new(table);
    let socket_err = |source| DaemonError::Socket { path: opts.socket.clone(), source };
    let control = daemon::control::bind(&opts.socket, SocketAccess::Owner).map_err(socket_err)?;
    control.set_nonblocking(true).map_err(socket_err)?;
    let control = tokio::net::UnixListener::from_std(control).map_err(socket_err)?;
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    } else {
        opts.threads
    };
    let workers = Workers::start(threads).map_err(socket_err)?;
    let state = Arc::new(State {
        shared: shared.clone(),
        listeners: tokio::sync::Mutex::new(Listeners { tasks: HashMap::new(), workers }),
        nft: tokio::sync::Mutex::new(NftSync { enabled: opts.nft, applied: None }),
        checks: tokio::sync::Mutex::new(HashMap::new()),
        reloads: Default::default(),
        opts,
    });
    state.nft.lock().await.sync(&shared).await;
    {
        let errors = state.listeners.lock().await.reconcile(&shared);
        if let Some(e) = errors.into_iter().next() {
            return Err(e);
        }
    }
    state.update_checks(cfg.as_ref()).await;
    let mut background = Vec::new();
    {
        let state = state.clone();
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let now = state.shared.now_ms();
                state.shared.lock().tick(now);
                // Retry binds that failed (an address not up yet without FREEBIND support).
                for e in state.listeners.lock().await.reconcile(&state.shared) {
                    warn!(error = %e, "listener");
                }
                // Health checks change the table too.
                state.nft.lock().await.sync(&state.shared).await;
            }
        }));
    }
    {
        let state = state.clone();
        background.push(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = control.accept().await else { continue };
                let state = state.clone();
                tokio::spawn(async move { control_conn(state, stream).await });
            }
        }));
    }
    {
        // SIGHUP never stops lvsd: it rereads the files (one reload at a time).
        let (state, mut rx) = (state.clone(), signals.subscribe());
        background.push(tokio::spawn(async move {
            let mut seen = rx.borrow_and_update().reload;
            while rx.changed().await.is_ok() {
                let now = rx.borrow_and_update().reload;
                if now != seen {
                    seen = now;
                    state.reload_logged().await;
                }
            }
        }));
    }
    daemon::ready::ready(&format!("lvsd: ready socket={}", state.opts.socket.display()));
    signals.stopped().await;
    daemon::ready::stopping();
    for h in background {
        h.abort();
    }
    for (_, c) in state.checks.lock().await.drain() {
        c.task.abort();
    }
    let mut l = state.listeners.lock().await;
    for (_, hs) in l.tasks.drain() {
        for h in hs {
            h.abort();
        }
    }
    let workers = std::mem::replace(&mut l.workers, Workers { handles: Vec::new(), stops: Vec::new() });
    workers.stop();
    if state.opts.nft {
        if let Err(e) = nft_apply(&crate::nft::teardown()).await {
            warn!(error = %e, "cannot remove the nftables table");
        }
    }
    let _ = std::fs::remove_file(&state.opts.socket);
    Ok(())
}

/// Answers one control connection: any number of requests, one reply each.
async fn control_conn(state: Arc<State>, stream: tokio::net::UnixStream) {
    let mut conn = AsyncConn::new(stream);
    loop {
        let req = match conn.next_request::<Request>().await {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => return,
        };
        let sent = match req {
            Request::Ipvsadm { args, input } => conn.reply(state.ipvsadm(&args, &input).await).await,
            Request::Status {} => conn.reply(Ok(state.status().await)).await,
            Request::Reload {} => {
                let r = state.reload().await;
                if let Ok(r) = &r {
                    info!(changes = r.changes.len(), warnings = r.warnings.len(), "configuration reloaded on request");
                }
                conn.reply(r).await
            }
        };
        if sent.is_err() {
            return;
        }
    }
}
