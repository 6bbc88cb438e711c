//! fenced: the node daemon. It joins the corosync process group `fenced`, tracks quorum,
//! drives the [`FenceDomain`] state machine, runs fence agents, propagates cluster.conf
//! updates, and serves the local API ([`crate::api`]).
//!
//! One thread owns corosync: it polls the cpg and quorum libraries (dispatching whatever is
//! pending every [`POLL`]), feeds the state machine and performs its actions, and looks at
//! the signals ([`::daemon::signals`]): SIGTERM/SIGINT make it leave the fence group cleanly
//! and exit, SIGHUP makes it reread cluster.conf ([`Options::conf`]) and, when the file's
//! config_version is newer than the one in force, propagate it to every member as
//! `cman_tool version -r` does. Fence agents run on worker threads; each API client has a
//! thread that hands requests to the main thread over a channel.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::daemon::control::{self, ControlError, SocketAccess};
use ::daemon::Signals;
use rust_corosync as cs;
use serde::Serialize;
use tracing::{error, info, warn};

use crate::api::{self, DomainStatus, Event, NodeEntry, Request};
use crate::conf::ClusterConf;
use crate::fence::{Action, FenceDomain, Input, LeaveReason};
use crate::msg::Msg;

/// How often pending corosync callbacks are dispatched.
pub const POLL: Duration = Duration::from_millis(50);
/// The process group name.
pub const GROUP: &str = "fenced";
/// Where fence_manual waits for acknowledgements.
pub const MANUAL_DIR: &str = "/run/cluster/fence_manual";

/// Options of the daemon.
#[derive(Debug, Clone)]
pub struct Options {
    /// cluster.conf (rewritten atomically when a newer version arrives).
    pub conf: PathBuf,
    /// API socket.
    pub socket: PathBuf,
    /// Fence agent directory.
    pub agent_dir: PathBuf,
}

/// Fatal daemon errors.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// cluster.conf is invalid.
    #[error("{0}")]
    Conf(#[from] crate::cman::CmanError),
    /// Corosync trouble.
    #[error("{0}")]
    Corosync(#[from] crate::corosync::CorosyncError),
    /// The API socket.
    #[error("{path}: {error}")]
    Socket { path: String, error: std::io::Error },
}

enum CsEvent {
    Quorum { quorate: bool, members: BTreeSet<u32>, ring_seq: u64 },
    Confchg { members: BTreeSet<u32>, left: Vec<(u32, LeaveReason)> },
    Deliver { nodeid: u32, data: Vec<u8> },
}

/// Callbacks run while the bindings hold their handle table lock: they only queue events.
static EVENTS: Mutex<Vec<CsEvent>> = Mutex::new(Vec::new());

fn push(ev: CsEvent) {
    EVENTS.lock().unwrap_or_else(|p| p.into_inner()).push(ev);
}

fn on_deliver(_h: &cs::cpg::Handle, _group: String, nodeid: cs::NodeId, _pid: u32, msg: &[u8], len: usize) {
    push(CsEvent::Deliver { nodeid: nodeid.into(), data: msg[..len.min(msg.len())].to_vec() });
}

fn on_confchg(
    _h: &cs::cpg::Handle,
    _group: &str,
    members: Vec<cs::cpg::Address>,
    left: Vec<cs::cpg::Address>,
    _joined: Vec<cs::cpg::Address>,
) {
    let members = members.iter().map(|a| u32::from(a.nodeid)).collect();
    let left = left
        .iter()
        .map(|a| {
            let r = match a.reason {
                cs::cpg::Reason::NodeDown => LeaveReason::NodeDown,
                cs::cpg::Reason::ProcDown => LeaveReason::ProcDown,
                _ => LeaveReason::Leave,
            };
            (u32::from(a.nodeid), r)
        })
        .collect();
    push(CsEvent::Confchg { members, left });
}

fn on_quorum(_h: &cs::quorum::Handle, quorate: bool, ring: cs::quorum::RingId, members: Vec<cs::NodeId>) {
    push(CsEvent::Quorum { quorate, members: members.into_iter().map(u32::from).collect(), ring_seq: ring.seq });
}

/// One reply line for an API client: its `ok` value or its error.
type Reply = Result<serde_json::Value, ControlError>;

/// A request from an API client with the channel for its reply lines.
struct ClientReq {
    req: Request,
    reply: Sender<Reply>,
}

enum Work {
    Agent { victim: u32, method: usize, ok: bool },
    ManualFence { victim: u32, result: Result<String, String> },
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// An `ok` reply carrying `v`.
fn ok<T: Serialize>(v: T) -> Reply {
    serde_json::to_value(v).map_err(|e| ControlError::failed(format!("cannot encode the reply: {e}")))
}

struct Daemon {
    opts: Options,
    conf: ClusterConf,
    local: u32,
    dom: FenceDomain,
    cpg: cs::cpg::Handle,
    start: Instant,
    work_tx: Sender<Work>,
    subscribers: Vec<Sender<Reply>>,
    /// fence_node callers waiting for a victim's announcement.
    fence_waiters: BTreeMap<u32, Vec<Sender<Reply>>>,
    /// wait_fenced callers.
    pending_waiters: BTreeMap<u32, Vec<Sender<Reply>>>,
    /// config_update callers waiting for their version to come back.
    config_waiters: Vec<(u64, Sender<Reply>)>,
    shutdown: Option<Sender<Reply>>,
    /// Sequence number of corosync's current ring (from the quorum callback).
    ring_seq: Option<u64>,
}

impl Daemon {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn name(&self, id: u32) -> String {
        self.conf.node_by_id(id).map(|n| n.name.clone()).unwrap_or_else(|| format!("nodeid{id}"))
    }

    fn mcast(&self, m: &Msg) {
        let data = m.encode();
        for _ in 0..200 {
            match cs::cpg::mcast_joined(self.cpg, cs::cpg::Guarantee::TypeAgreed, &data) {
                Ok(()) => return,
                Err(cs::CsError::CsErrTryAgain) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => {
                    error!(error = %e, "cannot multicast to the fence group");
                    return;
                }
            }
        }
        error!("fence group multicast still refused after retries");
    }

    fn broadcast(&mut self, ev: &Event) {
        let line = ok(ev);
        self.subscribers.retain(|s| s.send(line.clone()).is_ok());
    }

    fn step(&mut self, input: Input) {
        let now = self.now();
        let actions = self.dom.step(input, now);
        self.perform(actions);
        let safe: Vec<u32> = self.pending_waiters.keys().copied().filter(|id| self.dom.is_safe(*id)).collect();
        for id in safe {
            for w in self.pending_waiters.remove(&id).unwrap_or_default() {
                let _ = w.send(ok(()));
            }
        }
    }

    fn perform(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Log(line) => info!("{line}"),
                Action::RunMethod { victim, method } => {
                    let conf = self.conf.clone();
                    let tx = self.work_tx.clone();
                    let agent_dir = self.opts.agent_dir.clone();
                    let name = self.name(victim);
                    info!(victim = %name, method, "fencing");
                    std::thread::spawn(move || {
                        let ok = match conf.node(&name).and_then(|n| n.fence.get(method)) {
                            Some(m) => match crate::agent::run_method(&conf, &name, m, &agent_dir) {
                                Ok(()) => {
                                    info!(victim = %name, method = %m.name, "fence method succeeded");
                                    true
                                }
                                Err(e) => {
                                    warn!(victim = %name, method = %m.name, error = %e, "fence method failed");
                                    false
                                }
                            },
                            None => false,
                        };
                        let _ = tx.send(Work::Agent { victim, method, ok });
                    });
                }
                Action::Announce { victim, method } => {
                    self.mcast(&Msg::Fenced { victim, by: self.local, method, at_unix_ms: unix_ms() });
                }
                Action::NotifyFenced { victim } => {
                    let rec = self.dom.last_fences().get(&victim).cloned();
                    let method = rec.as_ref().map(|r| r.method.clone()).unwrap_or_default();
                    info!(victim = %self.name(victim), method = %method, "node fenced");
                    let ev = Event::Fenced { nodeid: victim, name: self.name(victim), method: method.clone() };
                    self.broadcast(&ev);
                    for w in self.fence_waiters.remove(&victim).unwrap_or_default() {
                        let _ = w.send(ok(api::FenceDone { method: method.clone() }));
                    }
                }
            }
        }
    }

    fn status(&self) -> DomainStatus {
        let pending = self.dom.pending();
        let nodes = self
            .conf
            .nodes
            .iter()
            .map(|n| NodeEntry {
                nodeid: n.nodeid,
                name: n.name.clone(),
                member: self.dom.members().contains(&n.nodeid),
                in_domain: self.dom.group().contains(&n.nodeid),
                pending: !self.dom.is_safe(n.nodeid),
                failures: api::failures_of(&pending, n.nodeid).unwrap_or(0),
                last_fence: self.dom.last_fences().get(&n.nodeid).map(|r| api::last_fence(r, |id| self.name(id))),
            })
            .collect();
        DomainStatus {
            cluster: self.conf.name.clone(),
            config_version: self.conf.config_version,
            local_nodeid: self.local,
            quorate: self.dom.quorate(),
            master: self.dom.master(),
            nodes,
            ring_seq: self.ring_seq,
        }
    }

    fn deliver(&mut self, from: u32, data: &[u8]) {
        let msg = match Msg::decode(data) {
            Ok(m) => m,
            Err(e) => {
                warn!(from, error = %e, "ignoring a bad fence group message");
                return;
            }
        };
        match msg {
            Msg::Fenced { victim, by, method, at_unix_ms } => {
                if by != from {
                    warn!(from, by, "fence announcement names another sender; ignored");
                    return;
                }
                self.step(Input::Fenced { victim, by, method, at_unix_ms });
            }
            Msg::AckManual { victim } => {
                let name = self.name(victim);
                let _ = std::fs::create_dir_all(MANUAL_DIR);
                if let Err(e) = std::fs::write(Path::new(MANUAL_DIR).join(format!("{name}.ack")), b"ack\n") {
                    warn!(error = %e, "cannot record the manual acknowledgement");
                }
                info!(victim = %name, from = %self.name(from), "manual fence acknowledged by the operator");
            }
            Msg::Config { version, xml } => self.install_config(from, version, &xml),
        }
    }

    fn install_config(&mut self, from: u32, version: u64, xml: &str) {
        let result = (|| {
            let new = crate::conf::parse(xml).map_err(|e| format!("invalid cluster.conf: {e}"))?;
            if new.config_version != version {
                return Err("message version does not match the file".to_owned());
            }
            if new.config_version <= self.conf.config_version {
                return Err(format!(
                    "config_version {} is not newer than {} in force; refused",
                    new.config_version, self.conf.config_version
                ));
            }
            if new.name != self.conf.name {
                return Err(format!("cluster name \"{}\" differs from \"{}\"; refused", new.name, self.conf.name));
            }
            ::daemon::write_atomic(&self.opts.conf, xml.as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", self.opts.conf.display()))?;
            Ok(new)
        })();
        match result {
            Ok(new) => {
                info!(version, from = %self.name(from), "installed a new cluster.conf");
                reload_corosync(&new);
                self.dom.set_nodes(&new);
                self.conf = new;
                self.broadcast(&Event::Config { version });
            }
            // The configuration sent to newcomers reaches those already up to date too.
            Err(_) if version == self.conf.config_version => {}
            Err(e) => warn!(version, from = %self.name(from), "{e}"),
        }
        let conf_version = self.conf.config_version;
        let mut keep = Vec::new();
        for (v, w) in self.config_waiters.drain(..) {
            if v == version {
                let reply = if conf_version >= v {
                    ok(api::ConfigVersion { version: conf_version })
                } else {
                    Err(ControlError::failed("the new configuration was not installed; see the fenced log"))
                };
                let _ = w.send(reply);
            } else {
                keep.push((v, w));
            }
        }
        self.config_waiters = keep;
    }

    /// When members join the group, the lowest-numbered member that was already in it sends
    /// the cluster.conf in force, so a node that starts with an older file catches up.
    fn sync_config_to_newcomers(&mut self, members: &BTreeSet<u32>) {
        let old: Vec<u32> = self.dom.group().intersection(members).copied().collect();
        let newcomers = members.iter().any(|m| !self.dom.group().contains(m));
        if newcomers && old.first() == Some(&self.local) {
            match std::fs::read_to_string(&self.opts.conf) {
                Ok(xml) if crate::conf::parse(&xml).is_ok_and(|c| c.config_version == self.conf.config_version) => {
                    self.mcast(&Msg::Config { version: self.conf.config_version, xml });
                }
                _ => warn!("cluster.conf on disk differs from the one in force; not sending it to new members"),
            }
        }
    }

    /// Validates a new cluster.conf offered to this node (config_update, SIGHUP): it must
    /// parse, be newer than the one in force and name the same cluster.
    fn check_update(&self, xml: &str) -> Result<ClusterConf, ControlError> {
        let new =
            crate::conf::parse(xml).map_err(|e| ControlError::bad_request(format!("invalid cluster.conf:\n{e}")))?;
        if new.config_version <= self.conf.config_version {
            return Err(ControlError::refused(format!(
                "config_version {} is not newer than {} in force; refused",
                new.config_version, self.conf.config_version
            )));
        }
        if new.name != self.conf.name {
            return Err(ControlError::refused(format!(
                "cluster name \"{}\" differs from \"{}\"; refused",
                new.name, self.conf.name
            )));
        }
        Ok(new)
    }

    /// SIGHUP: rereads cluster.conf and, when its config_version is newer than the one in
    /// force, propagates it to every member (this one included) as a config_update does.
    fn reload(&mut self) {
        let path = self.opts.conf.display().to_string();
        let xml = match std::fs::read_to_string(&self.opts.conf) {
            Ok(x) => x,
            Err(e) => {
                warn!("SIGHUP: cannot read {path}: {e}; config_version {} stays in force", self.conf.config_version);
                return;
            }
        };
        if let Ok(c) = crate::conf::parse(&xml) {
            if c.config_version <= self.conf.config_version {
                info!(
                    "SIGHUP: {path} has config_version {}, not newer than {} in force; nothing changed",
                    c.config_version, self.conf.config_version
                );
                return;
            }
        }
        match self.check_update(&xml) {
            Ok(new) => {
                info!(
                    "SIGHUP: {path} has config_version {} (in force: {}); propagating it to the fence group",
                    new.config_version, self.conf.config_version
                );
                self.mcast(&Msg::Config { version: new.config_version, xml });
            }
            Err(e) => {
                warn!("SIGHUP: {path} not applied, config_version {} stays in force: {e}", self.conf.config_version)
            }
        }
    }

    fn request(&mut self, r: ClientReq) {
        match r.req {
            Request::Status => {
                let _ = r.reply.send(ok(self.status()));
            }
            Request::Subscribe => {
                let _ = r.reply.send(ok(()));
                let ev = Event::Membership {
                    quorate: self.dom.quorate(),
                    members: self.dom.members().iter().copied().collect(),
                    ring_seq: self.ring_seq,
                };
                let _ = r.reply.send(ok(&ev));
                self.subscribers.push(r.reply);
            }
            Request::Fence { node } => {
                let Some(n) = self.conf.node(&node).cloned() else {
                    let _ = r.reply.send(Err(no_such_node(&node)));
                    return;
                };
                if n.nodeid == self.local {
                    let _ = r.reply.send(Err(ControlError::refused("refusing to fence this node itself")));
                    return;
                }
                self.fence_waiters.entry(n.nodeid).or_default().push(r.reply);
                let conf = self.conf.clone();
                let tx = self.work_tx.clone();
                let agent_dir = self.opts.agent_dir.clone();
                std::thread::spawn(move || {
                    let mut errors = Vec::new();
                    let mut result = Err(format!("node {} has no fence methods in cluster.conf", n.name));
                    for m in &n.fence {
                        match crate::agent::run_method(&conf, &n.name, m, &agent_dir) {
                            Ok(()) => {
                                result = Ok(m.name.clone());
                                break;
                            }
                            Err(e) => errors.push(format!("method {}: {e}", m.name)),
                        }
                    }
                    if result.is_err() && !errors.is_empty() {
                        result = Err(errors.join("; "));
                    }
                    let _ = tx.send(Work::ManualFence { victim: n.nodeid, result });
                });
            }
            Request::AckManual { node } => match self.conf.node(&node) {
                Some(n) => {
                    let victim = n.nodeid;
                    self.mcast(&Msg::AckManual { victim });
                    let _ = r.reply.send(ok(()));
                }
                None => {
                    let _ = r.reply.send(Err(no_such_node(&node)));
                }
            },
            Request::WaitFenced { nodeid } => {
                if !self.dom.is_safe(nodeid) {
                    self.pending_waiters.entry(nodeid).or_default().push(r.reply);
                } else {
                    let _ = r.reply.send(ok(()));
                }
            }
            Request::ConfigUpdate { xml } => match self.check_update(&xml) {
                Err(e) => {
                    let _ = r.reply.send(Err(e));
                }
                Ok(new) => {
                    self.config_waiters.push((new.config_version, r.reply));
                    self.mcast(&Msg::Config { version: new.config_version, xml });
                }
            },
            Request::Shutdown => self.shutdown = Some(r.reply),
        }
    }

    fn work(&mut self, w: Work) {
        match w {
            Work::Agent { victim, method, ok } => self.step(Input::AgentDone { victim, method, ok }),
            Work::ManualFence { victim, result } => match result {
                Ok(method) => {
                    self.mcast(&Msg::Fenced { victim, by: self.local, method, at_unix_ms: unix_ms() });
                }
                Err(e) => {
                    for w in self.fence_waiters.remove(&victim).unwrap_or_default() {
                        let _ = w.send(Err(ControlError::failed(format!("fencing {} failed: {e}", self.name(victim)))));
                    }
                }
            },
        }
    }
}

/// Rewrites the corosync configuration `cman_tool join` generated (if it is the default one)
/// and asks corosync to reload it, so votes and expected votes follow cluster.conf. Every
/// member does this after writing its own file; the reload is cluster-wide, so the last one
/// happens after every file is written.
fn reload_corosync(conf: &ClusterConf) {
    let path = Path::new(crate::cman::RUN_DIR).join("corosync.conf");
    if !path.exists() {
        return;
    }
    let text = match crate::corosync_conf::generate(conf) {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %e, "cannot generate the corosync configuration; corosync keeps the old one");
            return;
        }
    };
    if let Err(e) = ::daemon::write_atomic(&path, text.as_bytes()) {
        warn!(error = %e, path = %path.display(), "cannot write the corosync configuration");
        return;
    }
    match std::process::Command::new("corosync-cfgtool")
        .arg("-R")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
    {
        Ok(o) if o.status.success() => info!("corosync reloaded its configuration"),
        Ok(o) => warn!(stderr = %String::from_utf8_lossy(&o.stderr).trim(), "corosync-cfgtool -R failed"),
        Err(e) => warn!(error = %e, "cannot run corosync-cfgtool -R"),
    }
}

fn no_such_node(node: &str) -> ControlError {
    ControlError::not_found(format!("no node named \"{node}\" in cluster.conf"))
}

/// One API client: requests go to the main thread, replies (and a subscription's events)
/// come back over a channel and are written as control-protocol lines.
fn serve_client(stream: UnixStream, tx: Sender<ClientReq>) {
    let Ok(mut conn) = control::Conn::new(stream) else { return };
    loop {
        let req: Request = match conn.next_request() {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => return,
        };
        let streaming = matches!(req, Request::Subscribe);
        let (rtx, rrx) = mpsc::channel();
        if tx.send(ClientReq { req, reply: rtx }).is_err() {
            return;
        }
        loop {
            let Ok(out) = rrx.recv() else { return };
            if conn.reply(out).is_err() {
                return;
            }
            if !streaming {
                break;
            }
        }
    }
}

/// Runs the daemon until asked to shut down (the `shutdown` request, SIGTERM or SIGINT: it
/// leaves the fence group cleanly) or corosync goes away. `signals` must have been installed
/// before any thread was started. Prints the ready line once the socket serves and the group
/// is joined.
pub fn run(opts: Options, signals: &Signals) -> Result<(), DaemonError> {
    let conf = crate::cman::load(&opts.conf)?;
    let local = crate::corosync::local_nodeid()?;
    let cs_err =
        |call: &'static str| move |e: cs::CsError| crate::corosync::CorosyncError::Call { call, error: e.to_string() };

    let model = cs::cpg::ModelData::ModelV1(cs::cpg::Model1Data {
        flags: cs::cpg::Model1Flags::None,
        deliver_fn: Some(on_deliver),
        confchg_fn: Some(on_confchg),
        totem_confchg_fn: None,
    });
    let cpg = cs::cpg::initialize(&model, 0).map_err(cs_err("cpg_initialize"))?;
    let qmodel = cs::quorum::ModelData::ModelV1(cs::quorum::Model1Data {
        flags: cs::quorum::Model1Flags::None,
        quorum_notification_fn: Some(on_quorum),
        nodelist_notification_fn: None,
    });
    let (quorum, _) = cs::quorum::initialize(&qmodel, 0).map_err(cs_err("quorum_initialize"))?;
    cs::quorum::trackstart(quorum, cs::TrackFlags::Changes).map_err(cs_err("quorum_trackstart"))?;

    let listener = control::bind(&opts.socket, SocketAccess::Owner)
        .map_err(|error| DaemonError::Socket { path: opts.socket.display().to_string(), error })?;
    let (req_tx, req_rx): (Sender<ClientReq>, Receiver<ClientReq>) = mpsc::channel();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let tx = req_tx.clone();
            std::thread::spawn(move || serve_client(s, tx));
        }
    });

    let (work_tx, work_rx) = mpsc::channel();
    let dom = FenceDomain::from_conf(local, &conf);
    let mut d = Daemon {
        opts,
        conf,
        local,
        dom,
        cpg,
        start: Instant::now(),
        work_tx,
        subscribers: Vec::new(),
        fence_waiters: BTreeMap::new(),
        pending_waiters: BTreeMap::new(),
        config_waiters: Vec::new(),
        shutdown: None,
        ring_seq: None,
    };
    // Join the group only once the API socket is up: cman_tool join waits on the socket.
    cs::cpg::join(cpg, GROUP).map_err(cs_err("cpg_join"))?;
    info!(nodeid = local, cluster = %d.conf.name, "fenced started; joined the fence group");
    ::daemon::ready::ready(&format!("fenced: ready (node {local})"));

    let mut last_membership: Option<(bool, BTreeSet<u32>, u64)> = None;
    let mut reloads = signals.counts().reload;
    loop {
        if let Err(e) = cs::cpg::dispatch(cpg, cs::DispatchFlags::All) {
            error!(error = %e, "lost corosync (cpg); exiting");
            break;
        }
        if let Err(e) = cs::quorum::dispatch(quorum, cs::DispatchFlags::All) {
            error!(error = %e, "lost corosync (quorum); exiting");
            break;
        }
        let events: Vec<CsEvent> = std::mem::take(&mut *EVENTS.lock().unwrap_or_else(|p| p.into_inner()));
        for ev in events {
            match ev {
                CsEvent::Quorum { quorate, members, ring_seq } => {
                    info!(quorate, members = ?members, ring_seq, "membership");
                    d.ring_seq = Some(ring_seq);
                    if last_membership.as_ref() != Some(&(quorate, members.clone(), ring_seq)) {
                        last_membership = Some((quorate, members.clone(), ring_seq));
                        let ev = Event::Membership {
                            quorate,
                            members: members.iter().copied().collect(),
                            ring_seq: Some(ring_seq),
                        };
                        d.broadcast(&ev);
                    }
                    d.step(Input::Quorum { quorate, members });
                }
                CsEvent::Confchg { members, left } => {
                    info!(members = ?members, left = ?left, "fence group changed");
                    d.sync_config_to_newcomers(&members);
                    d.step(Input::Group { members, left });
                }
                CsEvent::Deliver { nodeid, data } => d.deliver(nodeid, &data),
            }
        }
        while let Ok(w) = work_rx.try_recv() {
            d.work(w);
        }
        while let Ok(r) = req_rx.try_recv() {
            d.request(r);
        }
        let counts = signals.counts();
        if counts.reload > reloads {
            reloads = counts.reload;
            ::daemon::ready::reloading();
            d.reload();
            ::daemon::ready::reloaded();
        }
        if d.shutdown.is_some() || counts.stop > 0 {
            ::daemon::ready::stopping();
            let _ = cs::cpg::leave(cpg, GROUP);
            // Let the leave reach the group before we disappear.
            let _ = cs::cpg::dispatch(cpg, cs::DispatchFlags::All);
            info!("left the fence group; exiting");
            if let Some(reply) = d.shutdown.take() {
                let _ = reply.send(ok(()));
            }
            std::thread::sleep(Duration::from_millis(100));
            break;
        }
        d.step(Input::Tick);
        std::thread::sleep(POLL);
    }
    let _ = std::fs::remove_file(&d.opts.socket);
    let _ = cs::quorum::finalize(quorum);
    let _ = cs::cpg::finalize(cpg);
    Ok(())
}
