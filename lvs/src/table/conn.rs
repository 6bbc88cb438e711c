//! Connection entries and persistence templates: scheduling a new connection (template
//! first, then the scheduler), the active/inactive accounting with the thresholds that set
//! and clear overload, lingering closed connections and UDP sessions on an expiry queue,
//! templates that live while they control connections, traffic counters.

use std::cmp::Reverse;
use std::net::{IpAddr, SocketAddr};

use super::{Director, Service};
use crate::model::{Dest, DestId, Protocol, ServiceKey, Stats};
use crate::sched::{Millis, Packet};

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
    pub(super) template: Option<(ServiceKey, IpAddr)>,
}

#[derive(Debug, Clone)]
pub(super) struct Template {
    pub(super) dest: DestId,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SchedKind;
    use crate::table::test_support::{counts, sa, setup};
    use crate::table::{DestSpec, NetMask, ServiceSpec};

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
}
