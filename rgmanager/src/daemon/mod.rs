//! The `rgmanager` daemon: one loop that learns the membership from fenced, reads every
//! service's record from the DLM, asks [`crate::engine::decide`] what to do, does it (record
//! changes under the service's lock, resource actions outside it), runs the status checks
//! of the services it owns, and answers its control socket between rounds.
//!
//! Why a DLM lock per service and not ordered messages on CPG: see `docs/design.md`.

mod control;
mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::api::Event;
use cluster::conf::{ClusterConf, Rm};
use daemon::control::ControlError;
use daemon::Signals;
use tracing::{error, info, warn};

use crate::agent::{self, Env};
use crate::api::Request;
use crate::engine::{self, Hand, Step, View};
use crate::policy::{Action as Recover, RestartWindow};
use crate::record::{Record, State};
use crate::tree::Tree;
pub use store::Store;

/// How the daemon is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// cluster.conf.
    pub conf: PathBuf,
    /// fenced's socket.
    pub fenced: PathBuf,
    /// dlm_controld's socket.
    pub dlm: PathBuf,
    /// Our control socket.
    pub socket: PathBuf,
    /// Evaluation period.
    pub tick: Duration,
}

/// Why the daemon could not start or went down.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// cluster.conf is unusable.
    #[error("{0}")]
    Conf(String),
    /// fenced is not reachable.
    #[error(transparent)]
    Fenced(#[from] cluster::api::ApiError),
    /// dlm_controld is not reachable or failed.
    #[error("dlm_controld: {0}; is dlm_controld running on this node?")]
    Dlm(#[from] dlm::ClientError),
    /// The control socket.
    #[error("control socket {path}: {source}")]
    Socket {
        /// The socket.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What the daemon reports when ready.
#[derive(Debug, Clone)]
pub struct Ready {
    /// This node's id.
    pub node_id: u32,
    /// The control socket.
    pub socket: PathBuf,
}

enum Input {
    Event(Event),
    Lost,
    Safe(u32),
}

type ControlMsg = (Request, Sender<Result<serde_json::Value, ControlError>>);

/// How long a status request waits for the loop before the last round's state answers it.
const STATUS_WAIT: Duration = Duration::from_secs(2);

/// A service as this node runs it.
struct Local {
    tree: Tree,
    running: bool,
    next_check: Vec<Instant>,
    window: RestartWindow,
}

struct Daemon {
    cfg: Config,
    conf: ClusterConf,
    rm: Rm,
    view: View,
    store: Store,
    records: BTreeMap<String, Record>,
    local: BTreeMap<String, Local>,
    env: Env,
    safe: BTreeSet<u32>,
    waiting: BTreeSet<u32>,
    events_tx: Sender<Input>,
    locked: bool,
    epoch: Instant,
    /// Quorum as the subscriber thread last saw it (read by DLM calls while they wait).
    quorum: Arc<AtomicBool>,
    /// The state as of the last round, for status requests while the loop is busy.
    snapshot: Arc<Mutex<Option<serde_json::Value>>>,
}

fn load_conf(path: &std::path::Path) -> Result<ClusterConf, DaemonError> {
    cluster::conf::load(path).map_err(|e| DaemonError::Conf(format!("{}: {e}", path.display())))
}

fn local_for(rm: &Rm, name: &str) -> Option<Local> {
    let svc = rm.services.iter().find(|s| s.name == name)?;
    let tree = match Tree::build(rm, svc) {
        Ok(t) => t,
        Err(e) => {
            error!(service = name, error = %e, "cannot build the resource tree");
            return None;
        }
    };
    let now = Instant::now();
    Some(Local {
        next_check: tree.nodes.iter().map(|n| now + n.status_interval).collect(),
        tree,
        running: false,
        window: RestartWindow::new(
            svc.recovery,
            svc.max_restarts,
            Duration::from_secs(u64::from(svc.restart_expire_time_s)),
        ),
    })
}

/// Runs the daemon until a stop is requested; `ready` is called once it serves.
pub fn run(cfg: Config, signals: &Signals, ready: impl FnOnce(&Ready)) -> Result<(), DaemonError> {
    let conf = load_conf(&cfg.conf)?;
    let mut fenced = cluster::api::Client::connect(&cfg.fenced)?;
    let st = fenced.status()?;
    drop(fenced);
    let me = st.local_nodeid;
    info!(node = me, quorate = st.quorate, "fenced reached");
    let (events_tx, events_rx) = mpsc::channel();
    let quorum = Arc::new(AtomicBool::new(st.quorate));
    spawn_subscriber(cfg.fenced.clone(), me, quorum.clone(), events_tx.clone());
    let mut store = Store::connect(&cfg.dlm, quorum.clone())?;
    info!(socket = %cfg.dlm.display(), "joined the DLM lockspace rgmanager");
    if store.announce(me)? {
        info!("holding this node's presence lock");
    } else {
        warn!("this node's presence lock is still held (the DLM has not yet released a previous rgmanager's); taking no services until it is free");
    }
    let listener = daemon::control::server::bind(&cfg.socket, Default::default())
        .map_err(|e| DaemonError::Socket { path: cfg.socket.display().to_string(), source: e })?;
    let (ctl_tx, ctl_rx) = mpsc::channel::<ControlMsg>();
    let snapshot: Arc<Mutex<Option<serde_json::Value>>> = Arc::default();
    let snap = snapshot.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let tx = ctl_tx.clone();
            let snap = snap.clone();
            std::thread::spawn(move || {
                let _ = daemon::control::server::serve_blocking(stream, |req: Request| {
                    let status = req == Request::Status;
                    let (rtx, rrx) = mpsc::channel();
                    tx.send((req, rtx)).map_err(|_| ControlError::unavailable("rgmanager is stopping"))?;
                    if status {
                        // The loop may be busy (starting a service, or waiting for the DLM
                        // during a recovery): then the state as of its last round.
                        match rrx.recv_timeout(STATUS_WAIT) {
                            Ok(r) => return r,
                            Err(mpsc::RecvTimeoutError::Timeout) => {
                                if let Some(v) = snap.lock().expect("snapshot lock").clone() {
                                    return Ok(v);
                                }
                            }
                            Err(mpsc::RecvTimeoutError::Disconnected) => {}
                        }
                    }
                    rrx.recv().map_err(|_| ControlError::unavailable("rgmanager is stopping"))?
                });
            });
        }
    });
    let rm = conf.rm.clone().unwrap_or_default();
    let nodes: Vec<(u32, String)> = conf.nodes.iter().map(|n| (n.nodeid, n.name.clone())).collect();
    let members: BTreeSet<u32> = st.nodes.iter().filter(|n| n.member).map(|n| n.nodeid).collect();
    let mut d = Daemon {
        view: View { me, quorate: st.quorate, members, eligible: BTreeSet::new(), nodes },
        local: rm.services.iter().filter_map(|s| local_for(&rm, &s.name).map(|l| (s.name.clone(), l))).collect(),
        rm,
        conf,
        cfg,
        store,
        records: BTreeMap::new(),
        env: Env::default(),
        safe: BTreeSet::new(),
        waiting: BTreeSet::new(),
        events_tx,
        locked: false,
        epoch: Instant::now(),
        quorum,
        snapshot,
    };
    ready(&Ready { node_id: me, socket: d.cfg.socket.clone() });
    info!(node = me, services = d.rm.services.len(), "rgmanager running");
    let mut seen = signals.counts();
    loop {
        let c = signals.counts();
        if c.stop > 0 {
            break;
        }
        if c.reload != seen.reload {
            let _ = daemon::log::reopen();
            d.reload();
        }
        seen = c;
        d.drain_events(&events_rx);
        if let Err(e) = d.round() {
            warn!(error = %e, "evaluation round failed");
        }
        d.publish();
        let deadline = Instant::now() + d.cfg.tick;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match ctl_rx.recv_timeout(left) {
                Ok((req, reply)) => {
                    d.drain_events(&events_rx);
                    let _ = reply.send(d.handle(req));
                    d.publish();
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if signals.stop_requested() {
                break;
            }
        }
    }
    daemon::ready::stopping();
    d.shutdown();
    Ok(())
}

fn spawn_subscriber(path: PathBuf, me: u32, quorum: Arc<AtomicBool>, tx: Sender<Input>) {
    std::thread::spawn(move || loop {
        let r = (|| -> Result<(), cluster::api::ApiError> {
            let mut c = cluster::api::Client::connect(&path)?;
            c.subscribe()?;
            loop {
                let ev = c.next_event()?;
                if let Event::Membership { quorate, members, .. } = &ev {
                    quorum.store(*quorate && members.contains(&me), Ordering::Relaxed);
                }
                if tx.send(Input::Event(ev)).is_err() {
                    return Ok(());
                }
            }
        })();
        if let Err(e) = r {
            warn!(error = %e, "lost fenced; treating this node as inquorate until it is back");
        }
        quorum.store(false, Ordering::Relaxed);
        if tx.send(Input::Lost).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_secs(1));
    });
}

impl Daemon {
    fn me(&self) -> u32 {
        self.view.me
    }

    fn name_of(&self, id: u32) -> Option<String> {
        self.view.nodes.iter().find(|(i, _)| *i == id).map(|(_, n)| n.clone())
    }

    fn reload(&mut self) {
        match load_conf(&self.cfg.conf) {
            Ok(c) => {
                info!(version = c.config_version, "cluster.conf reloaded");
                self.rm = c.rm.clone().unwrap_or_default();
                self.view.nodes = c.nodes.iter().map(|n| (n.nodeid, n.name.clone())).collect();
                for s in self.rm.services.clone() {
                    if !self.local.get(&s.name).is_some_and(|l| l.running) {
                        if let Some(l) = local_for(&self.rm, &s.name) {
                            self.local.insert(s.name.clone(), l);
                        }
                    }
                }
                self.conf = c;
            }
            Err(e) => warn!(error = %e, "cluster.conf not reloaded; keeping the one in force"),
        }
    }

    fn drain_events(&mut self, rx: &Receiver<Input>) {
        while let Ok(inp) = rx.try_recv() {
            match inp {
                Input::Event(Event::Membership { quorate, members, .. }) => {
                    let members: BTreeSet<u32> = members.into_iter().collect();
                    let quorate = quorate && members.contains(&self.me());
                    if quorate != self.view.quorate {
                        info!(quorate, "quorum changed");
                    }
                    for back in members.difference(&self.view.members) {
                        self.safe.remove(back);
                    }
                    self.view.members = members;
                    self.view.quorate = quorate;
                }
                Input::Event(Event::Fenced { nodeid, name, method }) => {
                    info!(node = %name, method = %method, "node fenced");
                    if !self.view.members.contains(&nodeid) {
                        self.safe.insert(nodeid);
                    }
                }
                Input::Event(Event::Config { .. }) => self.reload(),
                Input::Lost => self.view.quorate = false,
                Input::Safe(n) => {
                    self.waiting.remove(&n);
                    if !self.view.members.contains(&n) {
                        self.safe.insert(n);
                    }
                }
            }
        }
    }

    fn wait_fenced(&mut self, node: u32) {
        if !self.waiting.insert(node) {
            return;
        }
        let path = self.cfg.fenced.clone();
        let tx = self.events_tx.clone();
        std::thread::spawn(move || loop {
            info!(node, "waiting for fenced to report the node fenced");
            match cluster::api::Client::connect(&path).and_then(|mut c| c.wait_fenced(node)) {
                Ok(()) => {
                    let _ = tx.send(Input::Safe(node));
                    return;
                }
                Err(e) => {
                    warn!(node, error = %e, "wait_fenced failed; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        });
    }

    /// One evaluation of every service.
    fn round(&mut self) -> Result<(), DaemonError> {
        if !self.view.quorate || !self.quorum.load(Ordering::Relaxed) {
            // Without quorum the DLM may not answer; stop what runs here without it.
            for (name, l) in self.local.iter_mut().filter(|(_, l)| l.running) {
                warn!(service = %name, "no quorum: stopping");
                let _ = agent::stop_list(&self.env, &l.tree, &l.tree.stop_order());
                l.running = false;
            }
            return Ok(());
        }
        if self.store.poisoned() {
            // A DLM call was abandoned when quorum went: start afresh (closing the old
            // connection releases what it held).
            info!("quorum is back: reconnecting to dlm_controld");
            self.store = Store::connect(&self.cfg.dlm, self.quorum.clone())?;
            self.records.clear();
        }
        // Who runs rgmanager.
        if !self.locked && !self.store.announced() && self.store.announce(self.me())? {
            info!("holding this node's presence lock");
        }
        let mut eligible = BTreeSet::new();
        for &m in &self.view.members.clone() {
            if m == self.me() {
                if !self.locked && self.store.announced() {
                    eligible.insert(m);
                }
            } else if self.store.probe(m)? {
                eligible.insert(m);
            }
        }
        self.view.eligible = eligible;
        let names: Vec<String> = self.rm.services.iter().map(|s| s.name.clone()).collect();
        for name in &names {
            if let Some(r) = self.store.read(name)? {
                self.records.insert(name.clone(), r);
            } else {
                self.records.remove(name);
            }
        }
        for name in &names {
            self.evaluate(name)?;
        }
        // Services no longer in cluster.conf that still run here.
        let gone: Vec<String> = self.local.keys().filter(|k| !names.contains(k)).cloned().collect();
        for name in gone {
            if let Some(l) = self.local.remove(&name) {
                if l.running {
                    warn!(service = %name, "removed from cluster.conf: stopping");
                    let _ = agent::stop_list(&self.env, &l.tree, &l.tree.stop_order());
                }
            }
        }
        self.status_checks()?;
        Ok(())
    }

    fn running(&self, name: &str) -> bool {
        self.local.get(name).is_some_and(|l| l.running)
    }

    fn decide_fresh(&self, name: &str, fresh: Option<Record>) -> Step {
        let mut recs = self.records.clone();
        match fresh {
            Some(r) => recs.insert(name.to_owned(), r),
            None => recs.remove(name),
        };
        engine::decide(&self.rm, &self.view, &recs, name, self.running(name))
    }

    /// Writes `f(fresh)` if deciding again on the fresh record still gives `step`.
    fn transition(
        &mut self,
        name: &str,
        step: Step,
        f: impl FnOnce(&Record) -> Record,
    ) -> Result<Option<Record>, DaemonError> {
        let rm = self.rm.clone();
        let view = self.view.clone();
        let mut recs = self.records.clone();
        let running = self.running(name);
        let init = engine::initial(&rm, name);
        let written = self.store.transact(name, |fresh| {
            match fresh {
                Some(r) => recs.insert(name.to_owned(), r),
                None => recs.remove(name),
            };
            let again = engine::decide(&rm, &view, &recs, name, running);
            (again == step).then(|| f(&fresh.unwrap_or(init)))
        })?;
        if let Some(r) = written {
            self.records.insert(name.to_owned(), r);
        }
        Ok(written)
    }

    /// Writes `f(fresh)` unconditionally (the owner finishing what it started).
    fn finish(&mut self, name: &str, f: impl FnOnce(&Record) -> Record) -> Result<Record, DaemonError> {
        let init = engine::initial(&self.rm, name);
        let r = self.store.transact(name, |fresh| Some(f(&fresh.unwrap_or(init))))?.expect("always written");
        self.records.insert(name.to_owned(), r);
        Ok(r)
    }

    fn evaluate(&mut self, name: &str) -> Result<(), DaemonError> {
        let step = self.decide_fresh(name, self.records.get(name).copied());
        let me = self.me();
        match step {
            Step::Idle => {}
            Step::Init(r) => {
                self.store.transact(name, |fresh| if fresh.is_none() { Some(r) } else { None })?;
            }
            Step::Start => {
                if self.transition(name, step, |r| engine::claim(r, me))?.is_some() {
                    self.start_here(name, false)?;
                }
            }
            Step::TakeOver { dead } => {
                if self.safe.contains(&dead) {
                    if self.transition(name, step, engine::after_loss)?.is_some() {
                        info!(service = name, node = dead, "owner fenced; recovering the service");
                        // Start it now if this node is the one (decided again on the new record).
                        self.evaluate(name)?;
                    }
                } else {
                    self.wait_fenced(dead);
                }
            }
            Step::Stop(hand) => {
                if self.transition(name, step, engine::stopping)?.is_some() {
                    self.stop_here(name, hand)?;
                }
            }
            Step::Restart => {
                if self.transition(name, step, engine::stopping)?.is_some() {
                    self.restart_here(name, false)?;
                }
            }
            Step::Adopt => self.adopt(name)?,
            Step::StopLocal => {
                if let Some(l) = self.local.get_mut(name) {
                    warn!(service = name, "runs here but is not this node's: stopping it locally");
                    let _ = agent::stop_list(&self.env, &l.tree, &l.tree.stop_order());
                    l.running = false;
                }
            }
        }
        Ok(())
    }

    /// Starts the resources of a service this node claimed.
    fn start_here(&mut self, name: &str, counted: bool) -> Result<(), DaemonError> {
        let me = self.me();
        let Some(l) = self.local.get_mut(name) else {
            self.finish(name, |r| engine::start_failed(r, me))?;
            return Ok(());
        };
        info!(service = name, "starting");
        match agent::start_list(&self.env, &l.tree, &l.tree.start_order()) {
            Ok(()) => {
                l.running = true;
                let now = Instant::now();
                l.next_check = l.tree.nodes.iter().map(|n| now + n.status_interval).collect();
                self.finish(name, |r| if counted { engine::restarted(r, me, true) } else { engine::started(r, me) })?;
                info!(service = name, "started");
            }
            Err(f) => {
                l.running = false;
                error!(service = name, "start failed: {f}");
                if f.undo.is_empty() {
                    self.finish(name, |r| engine::start_failed(r, me))?;
                } else {
                    self.finish(name, |r| engine::stop_failed(r, me))?;
                }
            }
        }
        Ok(())
    }

    /// Stops a service this node owns and hands it on.
    fn stop_here(&mut self, name: &str, hand: Hand) -> Result<(), DaemonError> {
        let me = self.me();
        let Some(l) = self.local.get_mut(name) else { return Ok(()) };
        info!(service = name, ?hand, "stopping");
        let res = agent::stop_list(&self.env, &l.tree, &l.tree.stop_order());
        l.running = false;
        l.window.reset();
        match res {
            Ok(()) => {
                self.finish(name, |r| engine::handed(r, me, hand))?;
            }
            Err(errs) => {
                for e in &errs {
                    error!(service = name, "{e}");
                }
                self.finish(name, |r| engine::stop_failed(r, me))?;
            }
        }
        Ok(())
    }

    /// Stops and starts a service in place.
    fn restart_here(&mut self, name: &str, counted: bool) -> Result<(), DaemonError> {
        let me = self.me();
        let Some(l) = self.local.get_mut(name) else { return Ok(()) };
        info!(service = name, "restarting");
        let res = agent::stop_list(&self.env, &l.tree, &l.tree.stop_order());
        l.running = false;
        if let Err(errs) = res {
            for e in &errs {
                error!(service = name, "{e}");
            }
            self.finish(name, |r| engine::stop_failed(r, me))?;
            return Ok(());
        }
        self.start_here(name, counted)
    }

    /// The record says this node runs it but this daemon did not start it (a restart of the
    /// daemon): running resources are adopted; otherwise it is a failure.
    fn adopt(&mut self, name: &str) -> Result<(), DaemonError> {
        let Some(l) = self.local.get_mut(name) else { return Ok(()) };
        let state = self.records.get(name).map(|r| r.state);
        match agent::status_all(&self.env, &l.tree) {
            Ok(()) if state == Some(State::Started) => {
                info!(service = name, "running here already: adopted");
                l.running = true;
                let now = Instant::now();
                l.next_check = l.tree.nodes.iter().map(|n| now + n.status_interval).collect();
            }
            Ok(()) | Err(_) => {
                info!(service = name, ?state, "owned here but not (fully) running: recovering");
                l.running = true;
                self.failure(name)?;
            }
        }
        Ok(())
    }

    /// A failure of a service this node runs: the recovery policy decides.
    fn failure(&mut self, name: &str) -> Result<(), DaemonError> {
        let now = self.epoch.elapsed();
        let Some(l) = self.local.get_mut(name) else { return Ok(()) };
        let action = l.window.on_failure(now);
        warn!(service = name, ?action, "service failed; recovering");
        match action {
            Recover::Restart => {
                self.finish(name, engine::stopping)?;
                self.restart_here(name, true)
            }
            Recover::Relocate => {
                self.finish(name, engine::stopping)?;
                self.stop_here(name, Hand::Relocate(0))
            }
            Recover::Disable => {
                self.finish(name, engine::stopping)?;
                self.stop_here(name, Hand::Disable)
            }
        }
    }

    fn status_checks(&mut self) -> Result<(), DaemonError> {
        let names: Vec<String> = self.local.iter().filter(|(_, l)| l.running).map(|(k, _)| k.clone()).collect();
        for name in names {
            let Some(r) = self.records.get(&name).copied() else { continue };
            if r.state != State::Started || r.owner != self.me() || r.frozen() {
                continue;
            }
            let now = Instant::now();
            let Some(l) = self.local.get_mut(&name) else { continue };
            let due: Vec<usize> = l.tree.start_order().into_iter().filter(|&i| l.next_check[i] <= now).collect();
            let mut failed = None;
            for i in due {
                l.next_check[i] = now + l.tree.nodes[i].status_interval;
                if let Err(f) = agent::status_one(&self.env, &l.tree, i) {
                    warn!(service = %name, "{f}");
                    failed = Some(i);
                    break;
                }
            }
            let Some(i) = failed else { continue };
            if let Some(sub) = l.tree.recovery_scope(i) {
                let order = l.tree.subtree_start_order(sub);
                let mut rev = order.clone();
                rev.reverse();
                info!(service = %name, subtree = %l.tree.nodes[sub].label(), "restarting the independent subtree");
                if agent::stop_list(&self.env, &l.tree, &rev).is_ok()
                    && agent::start_list(&self.env, &l.tree, &order).is_ok()
                {
                    continue;
                }
            }
            self.failure(&name)?;
        }
        Ok(())
    }

    /// SIGTERM: stop taking services, stop the ones here and hand them on.
    fn shutdown(&mut self) {
        if let Err(e) = self.store.withdraw() {
            warn!(error = %e, "releasing this node's lock");
        }
        let names: Vec<String> = self.local.iter().filter(|(_, l)| l.running).map(|(k, _)| k.clone()).collect();
        for name in names {
            info!(service = %name, "rgmanager stopping: stopping the service here");
            if self.view.quorate {
                let r = self.finish(&name, engine::stopping).and_then(|_| self.stop_here(&name, Hand::Release));
                if let Err(e) = r {
                    warn!(service = %name, error = %e, "could not hand the service on");
                }
            } else if let Some(l) = self.local.get_mut(&name) {
                let _ = agent::stop_list(&self.env, &l.tree, &l.tree.stop_order());
                l.running = false;
            }
        }
    }
}
