//! lvs: an LVS-style director for a kernel without IPVS.
//!
//! What it owns:
//!
//! - the model ([`ServiceKey`], [`Dest`], [`SchedKind`]) and the director's table
//!   ([`Director`]): virtual services, real servers, connection entries counted active or
//!   inactive, persistence templates with a netmask, thresholds, statistics;
//! - the schedulers ([`Scheduler`]) with the kernel's exact semantics;
//! - Piranha's `lvs.cf` ([`LvsConfig`]) with line-numbered errors;
//! - `ipvsadm`'s command language ([`admin`]): argument parsing, `-L` listings and the
//!   `ipvsadm-save` format;
//! - the userspace data plane ([`proxy`]: TCP proxy with splice for bulk, UDP forwarder),
//!   the daemon ([`daemon`], `lvsd`) with its control socket ([`control`], spoken by
//!   `lvsadm`), reloads of its files into the running table ([`reload`]), the health checks
//!   ([`nanny`]) and the nftables fast path ([`nft`]);
//! - director failover ([`pulse`]): heartbeats, takeover, VIPs with gratuitous ARP.
//!
//! The table is sans-IO: the data plane reports connection events with a `now`.
//!
//! ```
//! use lvs::{Director, DestSpec, Protocol, SchedKind, ServiceKey, ServiceSpec};
//! let mut d = Director::new();
//! let key = ServiceKey::tcp("10.0.0.1:80".parse().unwrap());
//! let mut spec = ServiceSpec::new(key);
//! spec.sched = SchedKind::Rr;
//! d.add_service(spec).unwrap();
//! d.add_dest(&key, DestSpec::new("192.168.1.1:80".parse().unwrap())).unwrap();
//! let c = d.connect(Protocol::Tcp, "198.51.100.7:40000".parse().unwrap(), "10.0.0.1:80".parse().unwrap(), 0).unwrap();
//! assert_eq!(c.daddr, "192.168.1.1:80".parse().unwrap());
//! ```
// `unsafe` only in `sys` (pipe2 and splice for the zero-copy data path).
#![deny(unsafe_code)]

pub mod admin;
mod config;
pub mod control;
pub mod daemon;
mod model;
pub mod nanny;
pub mod nft;
pub mod proxy;
pub mod pulse;
pub mod reload;
mod sched;
mod sys;
mod table;

pub use config::{unescape, ConfigError, LvsConfig, Network, RealServerConf, VirtualConf};
pub use model::{parse_sockaddr, Dest, DestId, Forward, Protocol, SchedFlags, SchedKind, ServiceKey, Stats};
pub use sched::{Millis, Packet, Scheduler, HASH_TAB_SIZE, MH_TAB_SIZE};
pub use table::{
    Conn, ConnId, ConnState, DestSpec, Director, NetMask, RateEstimator, ScheduleError, Scheduled, Service,
    ServiceSpec, TableError, Timeouts, DEFAULT_PERSISTENCE_S,
};
