//! `lvsd`: the running director. It loads an `lvs.cf` (and/or ipvsadm-save rules), listens
//! on every virtual address, runs the health checks, ages the table once a second, and
//! answers `lvsadm` on a Unix admin socket.
//!
//! Admin protocol (one request per connection, JSON lines):
//! `{"argv": ["-L", "-n"], "stdin": ""}` → `{"code": 0, "stdout": "...", "stderr": ""}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::admin::{self, Outcome};
use crate::config::LvsConfig;
use crate::model::Protocol;
use crate::proxy::{self, Shared};
use crate::table::Director;

/// Default admin socket.
pub const DEFAULT_SOCKET: &str = "/run/lvsd/lvsd.sock";

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The lvs.cf is unusable.
    #[error("{0}")]
    Config(String),
    /// The admin socket cannot be created.
    #[error("cannot listen on admin socket {path}: {source}")]
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
    /// Admin socket path.
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
        let out = admin::execute(&mut d, admin::Command::Restore, &text, 0);
        if out.code != 0 {
            return Err(DaemonError::Config(format!("{}: {}", path.display(), out.stderr.trim())));
        }
    }
    Ok((d, cfg))
}

/// Runs the director until `shutdown` resolves. `ready` is called once everything listens.
pub async fn run(
    opts: DaemonOptions,
    shutdown: impl std::future::Future<Output = ()>,
    ready: impl FnOnce(&Path),
) -> Result<(), DaemonError> {
    let (table, cfg) = load_table(&opts)?;
    let shared = Shared::new(table);
    if let Some(dir) = opts.socket.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(&opts.socket);
    let admin_listener =
        UnixListener::bind(&opts.socket).map_err(|source| DaemonError::Socket { path: opts.socket.clone(), source })?;
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    } else {
        opts.threads
    };
    let workers =
        Workers::start(threads).map_err(|source| DaemonError::Socket { path: opts.socket.clone(), source })?;
    let listeners = Arc::new(tokio::sync::Mutex::new(Listeners { tasks: HashMap::new(), workers }));
    let nft = Arc::new(tokio::sync::Mutex::new(NftSync { enabled: opts.nft, applied: None }));
    nft.lock().await.sync(&shared).await;
    {
        let errors = listeners.lock().await.reconcile(&shared);
        if let Some(e) = errors.into_iter().next() {
            return Err(e);
        }
    }
    let mut background = Vec::new();
    if let (Some(cfg), false) = (&cfg, opts.no_checks) {
        background.extend(crate::nanny::spawn_all(shared.clone(), cfg));
    }
    {
        let (shared, listeners, nft) = (shared.clone(), listeners.clone(), nft.clone());
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let now = shared.now_ms();
                shared.lock().tick(now);
                // Retry binds that failed (an address not up yet without FREEBIND support).
                for e in listeners.lock().await.reconcile(&shared) {
                    warn!(error = %e, "listener");
                }
                // Health checks change the table too.
                nft.lock().await.sync(&shared).await;
            }
        }));
    }
    {
        let (shared, listeners, nft) = (shared.clone(), listeners.clone(), nft.clone());
        background.push(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = admin_listener.accept().await else { continue };
                let (shared, listeners, nft) = (shared.clone(), listeners.clone(), nft.clone());
                tokio::spawn(async move { admin_conn(shared, listeners, nft, stream).await });
            }
        }));
    }
    ready(&opts.socket);
    shutdown.await;
    for h in background {
        h.abort();
    }
    let mut l = listeners.lock().await;
    for (_, hs) in l.tasks.drain() {
        for h in hs {
            h.abort();
        }
    }
    let workers = std::mem::replace(&mut l.workers, Workers { handles: Vec::new(), stops: Vec::new() });
    workers.stop();
    if opts.nft {
        if let Err(e) = nft_apply(&crate::nft::teardown()).await {
            warn!(error = %e, "cannot remove the nftables table");
        }
    }
    let _ = std::fs::remove_file(&opts.socket);
    Ok(())
}

#[derive(serde::Deserialize)]
struct Request {
    argv: Vec<String>,
    #[serde(default)]
    stdin: String,
}

async fn admin_conn(
    shared: Arc<Shared>,
    listeners: Arc<tokio::sync::Mutex<Listeners>>,
    nft: Arc<tokio::sync::Mutex<NftSync>>,
    stream: tokio::net::UnixStream,
) {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(16 << 20));
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let out = match serde_json::from_str::<Request>(&line) {
        Err(e) => Outcome { code: 2, stdout: String::new(), stderr: format!("lvsd: bad admin request: {e}\n") },
        Ok(req) => match admin::parse_args(&req.argv) {
            Err(e) => Outcome { code: 2, stdout: String::new(), stderr: format!("lvsadm: {e}\n") },
            Ok(cmd) => {
                let change = admin::is_change(&cmd);
                let now = shared.now_ms();
                let mut out = admin::execute(&mut shared.lock(), cmd, &req.stdin, now);
                if change {
                    for e in listeners.lock().await.reconcile(&shared) {
                        out.stderr.push_str(&format!("lvsadm: warning: {e}\n"));
                    }
                    nft.lock().await.sync(&shared).await;
                }
                out
            }
        },
    };
    let mut text = serde_json::to_string(&out).expect("outcome serializes");
    text.push('\n');
    let _ = w.write_all(text.as_bytes()).await;
}

/// Client side of the admin protocol (what `lvsadm` does).
pub fn admin_request(socket: &Path, argv: &[String], stdin: &str) -> std::io::Result<Outcome> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let req = serde_json::json!({ "argv": argv, "stdin": stdin });
    s.write_all(format!("{req}\n").as_bytes())?;
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
