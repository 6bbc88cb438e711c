//! The director's table (what IPVS keeps in the kernel): virtual services, their real
//! servers, connection entries with active/inactive accounting, persistence templates,
//! thresholds, statistics. Sans-IO: the data plane reports connection events with a `now`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::model::{Dest, DestId, Forward, Protocol, SchedFlags, SchedKind, ServiceKey, Stats};
use crate::sched::{Millis, Packet, Scheduler};

/// Default persistence timeout (`-p` without a value), seconds.
pub const DEFAULT_PERSISTENCE_S: u32 = 300;

/// Errors of table operations, worded like ipvsadm's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// `-A` of an existing service.
    #[error("Service already exists: {key}")]
    ServiceExists {
        /// The service.
        key: ServiceKey,
    },
    /// A service that is not there.
    #[error("No such service: {key}")]
    NoService {
        /// The service.
        key: ServiceKey,
    },
    /// `-a` of a server already in the service.
    #[error("Destination already exists: {addr} in {key}")]
    DestExists {
        /// The service.
        key: ServiceKey,
        /// The real server.
        addr: SocketAddr,
    },
    /// A server not in the service.
    #[error("No such destination: {addr} in {key}")]
    NoDest {
        /// The service.
        key: ServiceKey,
        /// The real server.
        addr: SocketAddr,
    },
    /// Out-of-range value.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// Which parameter.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

/// Parameters of a virtual service (`-A`/`-E`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Which service.
    pub key: ServiceKey,
    /// Scheduler (`-s`).
    pub sched: SchedKind,
    /// Scheduler flags (`-b`).
    pub flags: SchedFlags,
    /// Persistence timeout in seconds (`-p`), None = not persistent.
    pub persistent_s: Option<u32>,
    /// Persistence netmask (`-M`): IPv4 mask or IPv6 prefix length.
    pub netmask: NetMask,
}

impl ServiceSpec {
    /// A service with the defaults (wlc, not persistent).
    pub fn new(key: ServiceKey) -> ServiceSpec {
        let netmask = match key {
            ServiceKey::Addr { addr: SocketAddr::V6(_), .. } => NetMask::V6(128),
            _ => NetMask::V4(Ipv4Addr::BROADCAST),
        };
        ServiceSpec { key, sched: SchedKind::Wlc, flags: SchedFlags::default(), persistent_s: None, netmask }
    }
}

/// Persistence granularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetMask {
    /// IPv4 netmask (`255.255.255.0`).
    V4(Ipv4Addr),
    /// IPv6 prefix length.
    V6(u8),
}

impl NetMask {
    /// The client network of `addr` under this mask.
    pub fn apply(self, addr: IpAddr) -> IpAddr {
        match (self, addr) {
            (NetMask::V4(m), IpAddr::V4(a)) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & u32::from(m))),
            (NetMask::V6(p), IpAddr::V6(a)) => {
                let bits = u128::from(a);
                let mask = if p == 0 { 0 } else { u128::MAX << (128 - p.min(128) as u32) };
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
            (NetMask::V4(m), IpAddr::V6(a)) => {
                let p = u32::from(m).count_ones() as u8;
                NetMask::V6(p + 96).apply(IpAddr::V6(a))
            }
            (NetMask::V6(_), a) => a,
        }
    }
}

impl std::fmt::Display for NetMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetMask::V4(m) => write!(f, "{m}"),
            NetMask::V6(p) => write!(f, "{p}"),
        }
    }
}

/// Parameters of a real server (`-a`/`-e`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestSpec {
    /// Address and port.
    pub addr: SocketAddr,
    /// Weight (`-w`), 0..=65535.
    pub weight: i32,
    /// Upper threshold (`-x`).
    pub u_threshold: u32,
    /// Lower threshold (`-y`).
    pub l_threshold: u32,
    /// Forwarding method.
    pub fwd: Forward,
}

impl DestSpec {
    /// A server with weight 1 and no thresholds.
    pub fn new(addr: SocketAddr) -> DestSpec {
        DestSpec { addr, weight: 1, u_threshold: 0, l_threshold: 0, fwd: Forward::Masq }
    }
}

/// One virtual service.
#[derive(Debug, Clone)]
pub struct Service {
    /// Its parameters.
    pub spec: ServiceSpec,
    /// Its real servers, in the order they were added.
    pub dests: Vec<Dest>,
    sched: Scheduler,
    /// Counters (all servers together, including deleted ones).
    pub stats: Stats,
    /// Rate estimator.
    pub rate: RateEstimator,
}

/// State of a connection entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Connecting to the real server (TCP `SYN_SENT`): inactive.
    SynSent,
    /// Both sides connected: active.
    Established,
    /// Closed, lingering for the FIN timeout (`TIME_WAIT`): inactive.
    TimeWait,
    /// A UDP session: inactive, as the kernel counts it.
    Udp,
}

impl ConnState {
    /// Name as `ipvsadm -L -c` shows it.
    pub fn name(self) -> &'static str {
        match self {
            ConnState::SynSent => "SYN_SENT",
            ConnState::Established => "ESTABLISHED",
            ConnState::TimeWait => "TIME_WAIT",
            ConnState::Udp => "UDP",
        }
    }
}

/// Identity of a connection entry.
pub type ConnId = u64;

/// One connection (or UDP session) through the director.
#[derive(Debug, Clone)]
pub struct Conn {
    /// TCP or UDP.
    pub proto: Protocol,
    /// Client address.
    pub client: SocketAddr,
    /// Address the client reached (VIP:port).
    pub vaddr: SocketAddr,
    /// The real server's address.
    pub daddr: SocketAddr,
    /// The real server.
    pub dest: DestId,
    /// The service it belongs to.
    pub service: ServiceKey,
    /// Its state.
    pub state: ConnState,
    /// When a lingering entry goes away.
    pub expires_ms: Millis,
    template: Option<(ServiceKey, IpAddr)>,
}

#[derive(Debug, Clone)]
struct Template {
    dest: DestId,
    last_use_ms: Millis,
    timeout_ms: Millis,
    n_control: u32,
}

/// Timeouts (`--set tcp tcpfin udp`), seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Established TCP idle timeout (shown; the proxy keeps connections until they close).
    pub tcp_s: u32,
    /// How long a closed TCP connection lingers (counted inactive).
    pub tcpfin_s: u32,
    /// UDP session idle timeout.
    pub udp_s: u32,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts { tcp_s: 900, tcpfin_s: 120, udp_s: 300 }
    }
}

/// The kernel's rate estimator (`ip_vs_est.c`): every 2 s, rates move a quarter of the
/// way to the last period's rate.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateEstimator {
    last: Stats,
    last_ms: Option<Millis>,
    /// Connections per second.
    pub cps: f64,
    /// Inbound packets per second.
    pub inpps: f64,
    /// Outbound packets per second.
    pub outpps: f64,
    /// Inbound bytes per second.
    pub inbps: f64,
    /// Outbound bytes per second.
    pub outbps: f64,
}

impl RateEstimator {
    /// Feeds the counters at `now_ms`; updates once per 2 s period.
    pub fn tick(&mut self, stats: &Stats, now_ms: Millis) {
        let Some(last_ms) = self.last_ms else {
            self.last = *stats;
            self.last_ms = Some(now_ms);
            return;
        };
        let dt = now_ms.saturating_sub(last_ms);
        if dt < 2000 {
            return;
        }
        let secs = dt as f64 / 1000.0;
        let r = |now: u64, before: u64| now.saturating_sub(before) as f64 / secs;
        let ewma = |avg: &mut f64, rate: f64| *avg += (rate - *avg) / 4.0;
        ewma(&mut self.cps, r(stats.conns, self.last.conns));
        ewma(&mut self.inpps, r(stats.inpkts, self.last.inpkts));
        ewma(&mut self.outpps, r(stats.outpkts, self.last.outpkts));
        ewma(&mut self.inbps, r(stats.inbytes, self.last.inbytes));
        ewma(&mut self.outbps, r(stats.outbytes, self.last.outbytes));
        self.last = *stats;
        self.last_ms = Some(now_ms);
    }

    /// Forgets the rates (`-Z`).
    pub fn zero(&mut self) {
        *self = RateEstimator::default();
    }
}

/// Why a new connection got no real server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// No virtual service matches.
    #[error("no virtual service for {proto:?} {vaddr}")]
    NoService {
        /// Protocol.
        proto: Protocol,
        /// Address reached.
        vaddr: SocketAddr,
    },
    /// The scheduler found no usable real server.
    #[error("{key}: no destination available")]
    NoDest {
        /// Service.
        key: ServiceKey,
    },
}

/// A scheduled connection: where to send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    /// The connection entry.
    pub conn: ConnId,
    /// Real server address to connect to (port 0 in the server: the client's port).
    pub daddr: SocketAddr,
    /// The real server.
    pub dest: DestId,
}

/// The whole table.
#[derive(Debug, Default)]
pub struct Director {
    services: Vec<Service>,
    conns: HashMap<ConnId, Conn>,
    /// Expiry queue of lingering entries and UDP sessions: `(expires, id)`, earliest
    /// first. An entry whose expiry moved later is pushed again when it comes up.
    expiry: BinaryHeap<Reverse<(Millis, ConnId)>>,
    templates: HashMap<(ServiceKey, IpAddr), Template>,
    /// Deleted servers that still have connections (the kernel's trash).
    trash: HashMap<DestId, Dest>,
    /// `(proto, addr:port) → fwmark`: what the mangle table would mark.
    marks: BTreeMap<(Protocol, SocketAddr), u32>,
    next_id: u64,
    /// Bumped by every change of services or real servers (the nftables path re-syncs).
    version: u64,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// The kernel's `expire_quiescent_template` sysctl: a template pointing at a server of
    /// weight 0 is dropped, so persistent clients move on.
    pub expire_quiescent_template: bool,
}

fn bind_dest(d: &mut Dest, active: bool) {
    if active {
        d.active += 1;
    } else {
        d.inactive += 1;
    }
    if d.u_threshold != 0 && d.total_conns() >= d.u_threshold {
        d.overloaded = true;
    }
}

fn unbind_dest(d: &mut Dest, active: bool) {
    if active {
        d.active = d.active.saturating_sub(1);
    } else {
        d.inactive = d.inactive.saturating_sub(1);
    }
    if d.l_threshold != 0 {
        if d.total_conns() < d.l_threshold {
            d.overloaded = false;
        }
    } else if d.u_threshold != 0 {
        if (d.total_conns() as u64) * 4 < (d.u_threshold as u64) * 3 {
            d.overloaded = false;
        }
    } else {
        d.overloaded = false;
    }
}

impl Director {
    /// An empty table.
    pub fn new() -> Director {
        Director { next_id: 1, ..Director::default() }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Changes so far to services and real servers.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The services, in the order they were added.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// One service.
    pub fn service(&self, key: &ServiceKey) -> Option<&Service> {
        self.services.iter().find(|s| s.spec.key == *key)
    }

    fn service_mut(&mut self, key: &ServiceKey) -> Result<&mut Service, TableError> {
        self.services.iter_mut().find(|s| s.spec.key == *key).ok_or(TableError::NoService { key: *key })
    }

    /// The connection entries.
    pub fn conns(&self) -> impl Iterator<Item = (&ConnId, &Conn)> {
        self.conns.iter()
    }

    /// Number of persistence templates.
    pub fn template_count(&self) -> usize {
        self.templates.len()
    }

    /// `-A`.
    pub fn add_service(&mut self, spec: ServiceSpec) -> Result<(), TableError> {
        self.version += 1;
        if self.service(&spec.key).is_some() {
            return Err(TableError::ServiceExists { key: spec.key });
        }
        let sched = Scheduler::new(spec.sched, spec.flags, &[]);
        self.services.push(Service {
            spec,
            dests: Vec::new(),
            sched,
            stats: Stats::default(),
            rate: Default::default(),
        });
        Ok(())
    }

    /// `-E`: changes scheduler, flags, persistence; servers and connections stay.
    pub fn edit_service(&mut self, spec: ServiceSpec) -> Result<(), TableError> {
        self.version += 1;
        let svc = self.service_mut(&spec.key)?;
        if svc.sched.kind() != spec.sched || svc.sched.flags() != spec.flags {
            svc.sched = Scheduler::new(spec.sched, spec.flags, &svc.dests);
        }
        svc.spec = spec;
        Ok(())
    }

    /// `-D`: the service goes; its connections continue to their servers.
    pub fn delete_service(&mut self, key: &ServiceKey) -> Result<(), TableError> {
        self.version += 1;
        let pos = self.services.iter().position(|s| s.spec.key == *key).ok_or(TableError::NoService { key: *key })?;
        let svc = self.services.remove(pos);
        for mut d in svc.dests {
            d.available = false;
            if d.active + d.inactive > 0 {
                self.trash.insert(d.id, d);
            }
        }
        self.templates.retain(|(k, _), _| k != key);
        for c in self.conns.values_mut() {
            if c.service == *key {
                c.template = None;
            }
        }
        Ok(())
    }

    /// `-C`.
    pub fn clear(&mut self) {
        let keys: Vec<ServiceKey> = self.services.iter().map(|s| s.spec.key).collect();
        for k in keys {
            let _ = self.delete_service(&k);
        }
    }

    /// `-a`. A server deleted earlier that still has connections comes back with them.
    pub fn add_dest(&mut self, key: &ServiceKey, spec: DestSpec) -> Result<(), TableError> {
        self.version += 1;
        check_dest_spec(&spec)?;
        let svc = self.service(key).ok_or(TableError::NoService { key: *key })?;
        if svc.dests.iter().any(|d| d.addr == spec.addr) {
            return Err(TableError::DestExists { key: *key, addr: spec.addr });
        }
        let revived = self
            .trash
            .iter()
            .find(|(_, d)| d.addr == spec.addr && self.conns.values().any(|c| c.dest == d.id && c.service == *key))
            .map(|(id, _)| *id);
        let mut d = match revived.and_then(|id| self.trash.remove(&id)) {
            Some(d) => d,
            None => {
                let id = self.id();
                Dest::new(id, spec.addr, spec.weight)
            }
        };
        d.weight = spec.weight;
        d.last_weight = spec.weight;
        d.u_threshold = spec.u_threshold;
        d.l_threshold = spec.l_threshold;
        d.fwd = spec.fwd;
        d.available = true;
        d.overloaded = spec.u_threshold != 0 && d.total_conns() >= spec.u_threshold;
        let svc = self.service_mut(key)?;
        svc.dests.push(d);
        let Service { sched, dests, .. } = svc;
        sched.dests_changed(dests, None, false);
        Ok(())
    }

    /// `-e`: weight, thresholds, method. Connections stay.
    pub fn edit_dest(&mut self, key: &ServiceKey, spec: DestSpec) -> Result<(), TableError> {
        self.version += 1;
        check_dest_spec(&spec)?;
        let svc = self.service_mut(key)?;
        let d = svc
            .dests
            .iter_mut()
            .find(|d| d.addr == spec.addr)
            .ok_or(TableError::NoDest { key: *key, addr: spec.addr })?;
        if spec.u_threshold == 0 || spec.u_threshold > d.u_threshold {
            d.overloaded = false;
        }
        d.weight = spec.weight;
        if spec.weight > 0 {
            d.last_weight = spec.weight;
        }
        d.u_threshold = spec.u_threshold;
        d.l_threshold = spec.l_threshold;
        d.fwd = spec.fwd;
        let Service { sched, dests, .. } = svc;
        sched.dests_changed(dests, None, true);
        Ok(())
    }

    /// Sets only the weight (health checks quiescing and restoring).
    pub fn set_weight(&mut self, key: &ServiceKey, addr: SocketAddr, weight: i32) -> Result<(), TableError> {
        let svc = self.service(key).ok_or(TableError::NoService { key: *key })?;
        let d = svc.dests.iter().find(|d| d.addr == addr).ok_or(TableError::NoDest { key: *key, addr })?;
        let spec = DestSpec { addr, weight, u_threshold: d.u_threshold, l_threshold: d.l_threshold, fwd: d.fwd };
        self.edit_dest(key, spec)
    }

    /// `-d`: no new connections; established ones continue (the server waits in the trash
    /// until its last connection is gone).
    pub fn delete_dest(&mut self, key: &ServiceKey, addr: SocketAddr) -> Result<(), TableError> {
        self.version += 1;
        let svc = self.service_mut(key)?;
        let idx = svc.dests.iter().position(|d| d.addr == addr).ok_or(TableError::NoDest { key: *key, addr })?;
        let mut d = svc.dests.remove(idx);
        let Service { sched, dests, .. } = svc;
        sched.dests_changed(dests, Some((idx, d.id)), false);
        d.available = false;
        let id = d.id;
        if d.active + d.inactive > 0 {
            self.trash.insert(id, d);
        }
        self.templates.retain(|_, t| t.dest != id);
        for c in self.conns.values_mut() {
            if c.dest == id {
                c.template = None;
            }
        }
        Ok(())
    }

    /// `-Z`: zero the counters of one service or all.
    pub fn zero(&mut self, key: Option<&ServiceKey>) -> Result<(), TableError> {
        if let Some(k) = key {
            self.service_mut(k)?;
        }
        for s in self.services.iter_mut().filter(|s| key.is_none_or_eq(&s.spec.key)) {
            s.stats = Stats::default();
            s.rate.zero();
            for d in &mut s.dests {
                d.stats = Stats::default();
            }
        }
        Ok(())
    }

    /// Declares that connections to `addr` (of `proto`) carry firewall mark `mark`
    /// (what an iptables/nftables mangle rule does for IPVS); None removes it.
    pub fn set_mark(&mut self, proto: Protocol, addr: SocketAddr, mark: Option<u32>) {
        match mark {
            Some(m) => {
                self.version += 1;
                self.marks.insert((proto, addr), m)
            }
            None => self.marks.remove(&(proto, addr)),
        };
    }

    /// The marks.
    pub fn marks(&self) -> &BTreeMap<(Protocol, SocketAddr), u32> {
        &self.marks
    }

    /// Every address the data plane must listen on, with its protocol.
    pub fn listen_set(&self) -> Vec<(Protocol, SocketAddr)> {
        let mut v: Vec<(Protocol, SocketAddr)> = self
            .services
            .iter()
            .filter_map(|s| match s.spec.key {
                ServiceKey::Addr { proto, addr } if addr.port() != 0 => Some((proto, addr)),
                _ => None,
            })
            .collect();
        for ((proto, addr), mark) in &self.marks {
            if self.service(&ServiceKey::FwMark(*mark)).is_some() {
                v.push((*proto, *addr));
            }
        }
        v.sort();
        v.dedup();
        v
    }

    /// The kernel's `ip_vs_service_find`: the fwmark service first, then address:port, then
    /// address with port 0.
    pub fn find_service(&self, proto: Protocol, vaddr: SocketAddr) -> Option<ServiceKey> {
        if let Some(m) = self.marks.get(&(proto, vaddr)) {
            if self.service(&ServiceKey::FwMark(*m)).is_some() {
                return Some(ServiceKey::FwMark(*m));
            }
        }
        let exact = ServiceKey::Addr { proto, addr: vaddr };
        if self.service(&exact).is_some() {
            return Some(exact);
        }
        let any = ServiceKey::Addr { proto, addr: SocketAddr::new(vaddr.ip(), 0) };
        self.service(&any).map(|_| any)
    }

    fn dest_mut(&mut self, svc: &ServiceKey, id: DestId) -> Option<&mut Dest> {
        if let Some(s) = self.services.iter_mut().find(|s| s.spec.key == *svc) {
            if let Some(d) = s.dests.iter_mut().find(|d| d.id == id) {
                return Some(d);
            }
        }
        self.trash.get_mut(&id)
    }

    /// Schedules a new connection from `client` to `vaddr`: persistence template first,
    /// then the scheduler. The entry starts inactive (connecting; UDP sessions stay so).
    pub fn connect(
        &mut self,
        proto: Protocol,
        client: SocketAddr,
        vaddr: SocketAddr,
        now_ms: Millis,
    ) -> Result<Scheduled, ScheduleError> {
        let key = self.find_service(proto, vaddr).ok_or(ScheduleError::NoService { proto, vaddr })?;
        let eqt = self.expire_quiescent_template;
        let idx = self.services.iter().position(|s| s.spec.key == key).expect("found above");
        let pkt = Packet { saddr: client.ip(), sport: client.port(), daddr: vaddr.ip(), dport: vaddr.port() };
        let svc = &mut self.services[idx];
        let mut template_key = None;
        let mut chosen: Option<usize> = None;
        if let Some(timeout_s) = svc.spec.persistent_s {
            let tk = (key, svc.spec.netmask.apply(client.ip()));
            template_key = Some(tk);
            if let Some(t) = self.templates.get(&tk) {
                // ip_vs_check_template
                match svc.dests.iter().position(|d| d.id == t.dest) {
                    Some(i) if svc.dests[i].available && !(eqt && svc.dests[i].weight == 0) => chosen = Some(i),
                    _ => {
                        let t = self.templates.remove(&tk).expect("present");
                        if let Some(d) = svc.dests.iter_mut().find(|d| d.id == t.dest) {
                            d.persist = d.persist.saturating_sub(1);
                        }
                        for c in self.conns.values_mut() {
                            if c.template == Some(tk) {
                                c.template = None;
                            }
                        }
                    }
                }
            }
            if chosen.is_none() {
                let Service { sched, dests, .. } = svc;
                let i = sched.schedule(dests, &pkt, now_ms).ok_or(ScheduleError::NoDest { key })?;
                dests[i].persist += 1;
                self.templates.insert(
                    tk,
                    Template {
                        dest: dests[i].id,
                        last_use_ms: now_ms,
                        timeout_ms: timeout_s as u64 * 1000,
                        n_control: 0,
                    },
                );
                chosen = Some(i);
            }
            let t = self.templates.get_mut(&tk).expect("present");
            t.last_use_ms = now_ms;
            t.timeout_ms = timeout_s as u64 * 1000;
            t.n_control += 1;
        }
        let i = match chosen {
            Some(i) => i,
            None => {
                let Service { sched, dests, .. } = svc;
                sched.schedule(dests, &pkt, now_ms).ok_or(ScheduleError::NoDest { key })?
            }
        };
        let d = &mut svc.dests[i];
        bind_dest(d, false);
        d.stats.conns += 1;
        svc.stats.conns += 1;
        let daddr = if d.addr.port() == 0 { SocketAddr::new(d.addr.ip(), vaddr.port()) } else { d.addr };
        let dest = d.id;
        let state = if proto == Protocol::Udp { ConnState::Udp } else { ConnState::SynSent };
        let expires_ms = now_ms + self.timeouts.udp_s as u64 * 1000;
        let id = self.id();
        self.conns.insert(
            id,
            Conn { proto, client, vaddr, daddr, dest, service: key, state, expires_ms, template: template_key },
        );
        if state == ConnState::Udp {
            self.expiry.push(Reverse((expires_ms, id)));
        }
        Ok(Scheduled { conn: id, daddr, dest })
    }

    /// The connection to the real server is up: inactive → active.
    pub fn established(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        if c.state != ConnState::SynSent {
            return;
        }
        c.state = ConnState::Established;
        let (svc, dest) = (c.service, c.dest);
        if let Some(d) = self.dest_mut(&svc, dest) {
            d.inactive = d.inactive.saturating_sub(1);
            d.active += 1;
        }
    }

    /// The connection closed: active → inactive, lingering `tcpfin` seconds. A UDP session
    /// or a connection that never got up is removed at once.
    pub fn closed(&mut self, id: ConnId, now_ms: Millis) {
        let linger = self.timeouts.tcpfin_s as u64 * 1000;
        let Some(c) = self.conns.get_mut(&id) else { return };
        match c.state {
            ConnState::Established if linger > 0 => {
                c.state = ConnState::TimeWait;
                c.expires_ms = now_ms + linger;
                self.expiry.push(Reverse((c.expires_ms, id)));
                let (svc, dest) = (c.service, c.dest);
                if let Some(d) = self.dest_mut(&svc, dest) {
                    d.active = d.active.saturating_sub(1);
                    d.inactive += 1;
                }
            }
            ConnState::TimeWait => {}
            _ => self.remove_conn(id),
        }
    }

    /// A UDP session saw traffic: push its expiry.
    pub fn touch(&mut self, id: ConnId, now_ms: Millis) {
        let udp = self.timeouts.udp_s as u64 * 1000;
        if let Some(c) = self.conns.get_mut(&id) {
            if c.state == ConnState::Udp {
                c.expires_ms = now_ms + udp;
            }
        }
    }

    fn remove_conn(&mut self, id: ConnId) {
        let Some(c) = self.conns.remove(&id) else { return };
        let active = c.state == ConnState::Established;
        if let Some(d) = self.dest_mut(&c.service, c.dest) {
            unbind_dest(d, active);
        }
        if self.trash.get(&c.dest).is_some_and(|d| d.active + d.inactive == 0) {
            self.trash.remove(&c.dest);
        }
        if let Some(tk) = c.template {
            if let Some(t) = self.templates.get_mut(&tk) {
                t.n_control = t.n_control.saturating_sub(1);
            }
        }
    }

    /// Adds traffic counters of a connection (bytes and reads each way).
    pub fn account(&mut self, id: ConnId, delta: &Stats) {
        let Some(c) = self.conns.get(&id) else { return };
        let (svc, dest) = (c.service, c.dest);
        if let Some(s) = self.services.iter_mut().find(|s| s.spec.key == svc) {
            s.stats.add(delta);
        }
        if let Some(d) = self.dest_mut(&svc, dest) {
            d.stats.add(delta);
        }
    }

    /// Expires lingering connections, UDP sessions, persistence templates (not while they
    /// still control connections) and locality entries; updates the rate estimators.
    pub fn tick(&mut self, now_ms: Millis) {
        while let Some(Reverse((at, id))) = self.expiry.peek().copied() {
            if at > now_ms {
                break;
            }
            self.expiry.pop();
            let Some(c) = self.conns.get(&id) else { continue };
            if !matches!(c.state, ConnState::TimeWait | ConnState::Udp) {
                continue;
            }
            if c.expires_ms > now_ms {
                // Touched since (UDP traffic, or a later close): look again then.
                self.expiry.push(Reverse((c.expires_ms, id)));
            } else {
                self.remove_conn(id);
            }
        }
        let mut gone = Vec::new();
        self.templates.retain(|_, t| {
            let keep = t.n_control > 0 || now_ms < t.last_use_ms + t.timeout_ms;
            if !keep {
                gone.push(t.dest);
            }
            keep
        });
        for s in &mut self.services {
            for d in &mut s.dests {
                let n = gone.iter().filter(|g| **g == d.id).count() as u32;
                d.persist = d.persist.saturating_sub(n);
            }
            s.sched.expire(now_ms);
            s.rate.tick(&s.stats, now_ms);
        }
    }

    /// Seconds left before a connection entry expires, for `-L -c`.
    pub fn expires_in_s(&self, c: &Conn, now_ms: Millis) -> u64 {
        match c.state {
            ConnState::Established | ConnState::SynSent => self.timeouts.tcp_s as u64,
            _ => c.expires_ms.saturating_sub(now_ms) / 1000,
        }
    }
}

trait OptEq<T> {
    fn is_none_or_eq(&self, v: &T) -> bool;
}

impl<T: PartialEq> OptEq<T> for Option<&T> {
    fn is_none_or_eq(&self, v: &T) -> bool {
        self.is_none_or(|x| x == v)
    }
}

fn check_dest_spec(spec: &DestSpec) -> Result<(), TableError> {
    if !(0..=65535).contains(&spec.weight) {
        return Err(TableError::Invalid { what: "weight", detail: format!("{} is not in 0..=65535", spec.weight) });
    }
    if spec.l_threshold > spec.u_threshold && spec.u_threshold != 0 {
        return Err(TableError::Invalid {
            what: "thresholds",
            detail: format!("lower threshold {} above upper threshold {}", spec.l_threshold, spec.u_threshold),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn setup(sched: SchedKind, weights: &[i32]) -> (Director, ServiceKey) {
        let mut d = Director::new();
        let key = ServiceKey::tcp(sa("10.0.0.100:80"));
        let mut spec = ServiceSpec::new(key);
        spec.sched = sched;
        d.add_service(spec).unwrap();
        for (i, w) in weights.iter().enumerate() {
            let mut ds = DestSpec::new(sa(&format!("10.0.1.{}:8080", i + 1)));
            ds.weight = *w;
            d.add_dest(&key, ds).unwrap();
        }
        (d, key)
    }

    fn counts(d: &Director, key: &ServiceKey) -> Vec<(u32, u32)> {
        d.service(key).unwrap().dests.iter().map(|x| (x.active, x.inactive)).collect()
    }

    #[test]
    fn connection_accounting() {
        let (mut d, key) = setup(SchedKind::Rr, &[1, 1]);
        let c1 = d.connect(Protocol::Tcp, sa("192.0.2.1:1000"), sa("10.0.0.100:80"), 0).unwrap();
        assert_eq!(c1.daddr, sa("10.0.1.1:8080"));
        assert_eq!(counts(&d, &key), vec![(0, 1), (0, 0)]);
        d.established(c1.conn);
        assert_eq!(counts(&d, &key), vec![(1, 0), (0, 0)]);
        d.closed(c1.conn, 1000);
        assert_eq!(counts(&d, &key), vec![(0, 1), (0, 0)]);
        d.tick(1000 + 119_000);
        assert_eq!(counts(&d, &key), vec![(0, 1), (0, 0)]);
        d.tick(1000 + 120_000);
        assert_eq!(counts(&d, &key), vec![(0, 0), (0, 0)]);
        // A failed connect is forgotten at once.
        let c2 = d.connect(Protocol::Tcp, sa("192.0.2.1:1001"), sa("10.0.0.100:80"), 0).unwrap();
        d.closed(c2.conn, 0);
        assert_eq!(counts(&d, &key), vec![(0, 0), (0, 0)]);
        assert_eq!(d.service(&key).unwrap().stats.conns, 2);
    }

    #[test]
    fn udp_sessions_expire_after_idle_time() {
        let mut d = Director::new();
        let key = ServiceKey::udp(sa("10.0.0.100:53"));
        d.add_service(ServiceSpec::new(key)).unwrap();
        d.add_dest(&key, DestSpec::new(sa("10.0.1.1:53"))).unwrap();
        let c = d.connect(Protocol::Udp, sa("192.0.2.1:1000"), sa("10.0.0.100:53"), 0).unwrap();
        assert_eq!(counts(&d, &key), vec![(0, 1)]);
        d.touch(c.conn, 200_000);
        d.tick(300_000);
        assert_eq!(d.conns().count(), 1, "traffic at 200 s keeps the session until 500 s");
        d.tick(499_999);
        assert_eq!(d.conns().count(), 1);
        d.tick(500_000);
        assert_eq!(d.conns().count(), 0);
        assert_eq!(counts(&d, &key), vec![(0, 0)]);
    }

    #[test]
    fn quiesce_keeps_connections_and_stops_new_ones() {
        let (mut d, key) = setup(SchedKind::Wlc, &[1, 1]);
        let c = d.connect(Protocol::Tcp, sa("192.0.2.1:1000"), sa("10.0.0.100:80"), 0).unwrap();
        d.established(c.conn);
        d.set_weight(&key, c.daddr, 0).unwrap();
        for p in 0..5 {
            let n = d.connect(Protocol::Tcp, sa(&format!("192.0.2.1:{}", 2000 + p)), sa("10.0.0.100:80"), 0).unwrap();
            assert_ne!(n.daddr, c.daddr);
        }
        assert_eq!(counts(&d, &key)[0], (1, 0));
        d.closed(c.conn, 0);
        assert_eq!(counts(&d, &key)[0], (0, 1));
    }

    #[test]
    fn delete_dest_keeps_connection_until_closed() {
        let (mut d, key) = setup(SchedKind::Rr, &[1, 1]);
        let c = d.connect(Protocol::Tcp, sa("192.0.2.1:1000"), sa("10.0.0.100:80"), 0).unwrap();
        d.established(c.conn);
        d.delete_dest(&key, c.daddr).unwrap();
        assert_eq!(d.service(&key).unwrap().dests.len(), 1);
        assert_eq!(d.trash.len(), 1);
        d.closed(c.conn, 0);
        d.tick(200_000);
        assert!(d.trash.is_empty());
        assert_eq!(d.conns().count(), 0);
    }

    #[test]
    fn thresholds_set_and_clear_overload() {
        let (mut d, key) = setup(SchedKind::Rr, &[1, 1]);
        let mut ds = DestSpec::new(sa("10.0.1.1:8080"));
        ds.u_threshold = 2;
        d.edit_dest(&key, ds).unwrap();
        let mut on_a = Vec::new();
        for p in 0..6 {
            let c = d.connect(Protocol::Tcp, sa(&format!("192.0.2.1:{}", 1000 + p)), sa("10.0.0.100:80"), 0).unwrap();
            d.established(c.conn);
            if c.daddr == sa("10.0.1.1:8080") {
                on_a.push(c.conn);
            }
        }
        // A took 2 then became overloaded: B got the other 4.
        assert_eq!(on_a.len(), 2);
        assert!(d.service(&key).unwrap().dests[0].overloaded);
        // Without a lower threshold, overload clears below 3/4 of the upper one: 1*4 < 2*3.
        d.closed(on_a[0], 0);
        // closed → TIME_WAIT: still 2 total (1 active + 1 inactive).
        assert!(d.service(&key).unwrap().dests[0].overloaded);
        d.tick(500_000);
        assert!(!d.service(&key).unwrap().dests[0].overloaded);
    }

    #[test]
    fn persistence_with_netmask() {
        let (mut d, key) = setup(SchedKind::Rr, &[1, 1, 1]);
        let mut spec = ServiceSpec::new(key);
        spec.sched = SchedKind::Rr;
        spec.persistent_s = Some(10);
        spec.netmask = NetMask::V4("255.255.255.0".parse().unwrap());
        d.edit_service(spec).unwrap();
        let a = d.connect(Protocol::Tcp, sa("192.0.2.1:1000"), sa("10.0.0.100:80"), 0).unwrap();
        // Same /24: same server, although rr would move on.
        let b = d.connect(Protocol::Tcp, sa("192.0.2.200:1000"), sa("10.0.0.100:80"), 100).unwrap();
        assert_eq!(a.daddr, b.daddr);
        // Another /24 is scheduled.
        let c = d.connect(Protocol::Tcp, sa("198.51.100.1:1000"), sa("10.0.0.100:80"), 100).unwrap();
        assert_ne!(c.daddr, a.daddr);
        assert_eq!(d.template_count(), 2);
        // Templates survive while they control connections, then expire after the timeout.
        for x in [a, b, c] {
            d.closed(x.conn, 200);
        }
        d.tick(9_000);
        assert_eq!(d.template_count(), 2);
        d.tick(10_101);
        assert_eq!(d.template_count(), 0);
        assert!(d.service(&key).unwrap().dests.iter().all(|x| x.persist == 0));
    }

    #[test]
    fn persistence_moves_off_a_deleted_server() {
        let (mut d, key) = setup(SchedKind::Rr, &[1, 1]);
        let mut spec = ServiceSpec::new(key);
        spec.sched = SchedKind::Rr;
        spec.persistent_s = Some(300);
        d.edit_service(spec).unwrap();
        let a = d.connect(Protocol::Tcp, sa("192.0.2.1:1000"), sa("10.0.0.100:80"), 0).unwrap();
        d.delete_dest(&key, a.daddr).unwrap();
        let b = d.connect(Protocol::Tcp, sa("192.0.2.1:1001"), sa("10.0.0.100:80"), 0).unwrap();
        assert_ne!(a.daddr, b.daddr);
        // Quiesced server: kept unless expire_quiescent_template.
        d.set_weight(&key, b.daddr, 0).unwrap();
        let c = d.connect(Protocol::Tcp, sa("192.0.2.1:1002"), sa("10.0.0.100:80"), 0).unwrap();
        assert_eq!(c.daddr, b.daddr);
        d.expire_quiescent_template = true;
        assert!(matches!(
            d.connect(Protocol::Tcp, sa("192.0.2.1:1003"), sa("10.0.0.100:80"), 0),
            Err(ScheduleError::NoDest { .. })
        ));
    }

    #[test]
    fn fwmark_groups_ports_and_persists_per_mark() {
        let mut d = Director::new();
        let key = ServiceKey::FwMark(7);
        let mut spec = ServiceSpec::new(key);
        spec.sched = SchedKind::Rr;
        spec.persistent_s = Some(60);
        d.add_service(spec).unwrap();
        d.add_dest(&key, DestSpec::new(sa("10.0.1.1:0"))).unwrap();
        d.add_dest(&key, DestSpec::new(sa("10.0.1.2:0"))).unwrap();
        d.set_mark(Protocol::Tcp, sa("10.0.0.100:80"), Some(7));
        d.set_mark(Protocol::Tcp, sa("10.0.0.100:443"), Some(7));
        assert_eq!(d.listen_set().len(), 2);
        let a = d.connect(Protocol::Tcp, sa("192.0.2.1:1000"), sa("10.0.0.100:80"), 0).unwrap();
        let b = d.connect(Protocol::Tcp, sa("192.0.2.1:1001"), sa("10.0.0.100:443"), 0).unwrap();
        // One template for the mark: both ports on one server, each keeping its port.
        assert_eq!(a.daddr, sa("10.0.1.1:80"));
        assert_eq!(b.daddr, sa("10.0.1.1:443"));
        assert_eq!(d.template_count(), 1);
        assert!(d.connect(Protocol::Udp, sa("192.0.2.1:1000"), sa("10.0.0.100:80"), 0).is_err());
    }

    #[test]
    fn wlc_through_the_table_follows_counts() {
        let (mut d, key) = setup(SchedKind::Wlc, &[3, 1]);
        let mut got = Vec::new();
        for p in 0..8 {
            let c = d.connect(Protocol::Tcp, sa(&format!("192.0.2.1:{}", 1000 + p)), sa("10.0.0.100:80"), 0).unwrap();
            d.established(c.conn);
            got.push(if c.daddr.ip().to_string() == "10.0.1.1" { 'A' } else { 'B' });
        }
        // overhead/weight: A 0/3 → A; A 256/3 vs B 0 → B; A 256/3 vs B 256 → A; ...
        assert_eq!(got.iter().collect::<String>(), "ABAAABAA");
        assert_eq!(counts(&d, &key), vec![(6, 0), (2, 0)]);
    }

    #[test]
    fn edit_service_keeps_dests_and_errors_are_clear() {
        let (mut d, key) = setup(SchedKind::Wlc, &[1]);
        let mut spec = ServiceSpec::new(key);
        spec.sched = SchedKind::Sh;
        d.edit_service(spec.clone()).unwrap();
        assert_eq!(d.service(&key).unwrap().dests.len(), 1);
        assert_eq!(d.add_service(spec).unwrap_err().to_string(), "Service already exists: TCP  10.0.0.100:80");
        let e = d.add_dest(&key, DestSpec::new(sa("10.0.1.1:8080"))).unwrap_err();
        assert!(e.to_string().contains("already exists"));
        let mut bad = DestSpec::new(sa("10.0.1.9:1"));
        bad.weight = 70000;
        assert!(d.add_dest(&key, bad).is_err());
    }
}
