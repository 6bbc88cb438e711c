//! Virtual services and their real servers: the parameters `ipvsadm` sets (`-A`/`-E`,
//! `-a`/`-e`), the operations on them (`-A -E -D -C -a -e -d -Z`, quiescing by weight),
//! firewall marks and the kernel's service lookup. A deleted server with connections waits
//! in the trash until its last one is gone.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Director, RateEstimator};
use crate::model::{Dest, Forward, Protocol, SchedFlags, SchedKind, ServiceKey, Stats};
use crate::sched::Scheduler;

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
    pub(super) sched: Scheduler,
    /// Counters (all servers together, including deleted ones).
    pub stats: Stats,
    /// Rate estimator.
    pub rate: RateEstimator,
}

impl Director {
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
    use crate::table::test_support::{counts, sa, setup};

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
