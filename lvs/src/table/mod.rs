//! The director's table (what IPVS keeps in the kernel): virtual services, their real
//! servers, connection entries with active/inactive accounting, persistence templates,
//! thresholds, statistics. Sans-IO: the data plane reports connection events with a `now`.
//!
//! Where things are: this file holds the [`Director`] and its lookups; `service.rs` the
//! virtual services and real servers with the operations `ipvsadm` drives (`-A -E -D -C -a -e
//! -d -Z`, firewall marks, the service lookup); `conn.rs` the connection entries with their
//! active/inactive accounting, thresholds, persistence templates and expiry; `stats.rs` the
//! rate estimator.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};

use crate::model::{Dest, DestId, Protocol, ServiceKey};
use crate::sched::Millis;

mod conn;
mod service;
mod stats;

use conn::Template;
pub use conn::{Conn, ConnId, ConnState, ScheduleError, Scheduled, Timeouts};
pub use service::{DestSpec, NetMask, Service, ServiceSpec, TableError, DEFAULT_PERSISTENCE_S};
pub use stats::RateEstimator;

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

    fn dest_mut(&mut self, svc: &ServiceKey, id: DestId) -> Option<&mut Dest> {
        if let Some(s) = self.services.iter_mut().find(|s| s.spec.key == *svc) {
            if let Some(d) = s.dests.iter_mut().find(|d| d.id == id) {
                return Some(d);
            }
        }
        self.trash.get_mut(&id)
    }
}

/// A director with services and real servers, shared by the table's tests.
#[cfg(test)]
mod test_support {
    use super::*;
    use crate::model::SchedKind;

    pub(super) fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    pub(super) fn setup(sched: SchedKind, weights: &[i32]) -> (Director, ServiceKey) {
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

    pub(super) fn counts(d: &Director, key: &ServiceKey) -> Vec<(u32, u32)> {
        d.service(key).unwrap().dests.iter().map(|x| (x.active, x.inactive)).collect()
    }
}
