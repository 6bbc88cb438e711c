//! The director's vocabulary: protocols, service keys, forwarding methods, scheduler names,
//! real servers (destinations) and their counters.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Transport protocol of a virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP (`-t`).
    Tcp,
    /// UDP (`-u`).
    Udp,
}

impl Protocol {
    /// `TCP` / `UDP`, as `ipvsadm -L` prints it.
    pub fn upper(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

/// What identifies a virtual service: an address:port of a protocol, or a firewall mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ServiceKey {
    /// `-t`/`-u ADDR:PORT`; port 0 means every port of the address (persistent services).
    Addr {
        /// TCP or UDP.
        proto: Protocol,
        /// The virtual address and port.
        addr: SocketAddr,
    },
    /// `-f MARK`: every address:port carrying that mark (see [`crate::Director::set_mark`]).
    FwMark(u32),
}

impl ServiceKey {
    /// A TCP service.
    pub fn tcp(addr: SocketAddr) -> ServiceKey {
        ServiceKey::Addr { proto: Protocol::Tcp, addr }
    }

    /// A UDP service.
    pub fn udp(addr: SocketAddr) -> ServiceKey {
        ServiceKey::Addr { proto: Protocol::Udp, addr }
    }

    /// The ipvsadm option selecting this service (`-t 10.0.0.1:80`, `-f 5`).
    pub fn to_option(&self) -> String {
        match self {
            ServiceKey::Addr { proto: Protocol::Tcp, addr } => format!("-t {addr}"),
            ServiceKey::Addr { proto: Protocol::Udp, addr } => format!("-u {addr}"),
            ServiceKey::FwMark(m) => format!("-f {m}"),
        }
    }
}

impl fmt::Display for ServiceKey {
    /// As `ipvsadm -L -n` prints it: `TCP  10.0.0.1:80`, `FWM  5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceKey::Addr { proto, addr } => write!(f, "{}  {}", proto.upper(), addr),
            ServiceKey::FwMark(m) => write!(f, "FWM  {m}"),
        }
    }
}

/// Packet forwarding method of a real server. The userspace data plane always proxies
/// (NAT-style: real servers see the director); the method is kept and shown so that
/// configurations written for IPVS round-trip through `-S`/`-R` unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Forward {
    /// `-m`, masquerading (NAT). The default here, since it is what the proxy does.
    #[default]
    Masq,
    /// `-g`, direct routing ("gatewaying").
    Route,
    /// `-i`, IP-in-IP tunnelling.
    Tunnel,
}

impl Forward {
    /// `Masq` / `Route` / `Tunnel`, as `ipvsadm -L` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Forward::Masq => "Masq",
            Forward::Route => "Route",
            Forward::Tunnel => "Tunnel",
        }
    }

    /// `-m` / `-g` / `-i`.
    pub fn flag(self) -> &'static str {
        match self {
            Forward::Masq => "-m",
            Forward::Route => "-g",
            Forward::Tunnel => "-i",
        }
    }
}

/// The scheduling algorithms, named as ipvsadm names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum SchedKind {
    /// Round robin.
    Rr,
    /// Weighted round robin (gcd stepping).
    Wrr,
    /// Least connection.
    Lc,
    /// Weighted least connection (the default).
    #[default]
    Wlc,
    /// Shortest expected delay.
    Sed,
    /// Never queue.
    Nq,
    /// Locality-based least connection.
    Lblc,
    /// Locality-based least connection with replication.
    Lblcr,
    /// Destination hashing.
    Dh,
    /// Source hashing.
    Sh,
    /// Maglev hashing.
    Mh,
}

impl SchedKind {
    /// Every scheduler, in ipvsadm's documentation order.
    pub const ALL: [SchedKind; 11] = [
        SchedKind::Rr,
        SchedKind::Wrr,
        SchedKind::Lc,
        SchedKind::Wlc,
        SchedKind::Lblc,
        SchedKind::Lblcr,
        SchedKind::Dh,
        SchedKind::Sh,
        SchedKind::Sed,
        SchedKind::Nq,
        SchedKind::Mh,
    ];

    /// The ipvsadm name (`wlc`).
    pub fn name(self) -> &'static str {
        match self {
            SchedKind::Rr => "rr",
            SchedKind::Wrr => "wrr",
            SchedKind::Lc => "lc",
            SchedKind::Wlc => "wlc",
            SchedKind::Sed => "sed",
            SchedKind::Nq => "nq",
            SchedKind::Lblc => "lblc",
            SchedKind::Lblcr => "lblcr",
            SchedKind::Dh => "dh",
            SchedKind::Sh => "sh",
            SchedKind::Mh => "mh",
        }
    }
}

impl fmt::Display for SchedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown scheduler name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scheduler `{name}` (known: rr, wrr, lc, wlc, sed, nq, lblc, lblcr, dh, sh, mh)")]
pub struct UnknownScheduler {
    /// What was given.
    pub name: String,
}

impl FromStr for SchedKind {
    type Err = UnknownScheduler;

    fn from_str(s: &str) -> Result<SchedKind, UnknownScheduler> {
        SchedKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| UnknownScheduler { name: s.to_string() })
    }
}

/// Scheduler flags (`-b`): sh-fallback, sh-port, mh-fallback, mh-port; and persistence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SchedFlags {
    /// `sh-fallback` / `mh-fallback` (the kernel's flag-1): when the hashed server is
    /// unavailable, look for another one instead of dropping.
    pub fallback: bool,
    /// `sh-port` / `mh-port` (flag-2): hash the source port as well.
    pub port: bool,
}

/// Opaque identity of a real server inside a director (stable across list changes).
pub type DestId = u64;

/// Byte, packet and connection counters, as `ipvsadm -L --stats` shows them. The
/// userspace proxy counts one "packet" per read it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Connections scheduled.
    pub conns: u64,
    /// Packets (reads) from clients.
    pub inpkts: u64,
    /// Packets (reads) from real servers.
    pub outpkts: u64,
    /// Bytes from clients.
    pub inbytes: u64,
    /// Bytes from real servers.
    pub outbytes: u64,
}

impl Stats {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Stats) {
        self.conns += other.conns;
        self.inpkts += other.inpkts;
        self.outpkts += other.outpkts;
        self.inbytes += other.inbytes;
        self.outbytes += other.outbytes;
    }
}

/// A real server of one virtual service, with the state the schedulers read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dest {
    /// Identity inside the director.
    pub id: DestId,
    /// Address and port of the real server (port 0: the client's port is kept).
    pub addr: SocketAddr,
    /// Current weight; 0 quiesces (no new connections, existing ones continue).
    pub weight: i32,
    /// The last weight that was set above zero (Maglev keeps its table across quiescing).
    pub last_weight: i32,
    /// Upper connection threshold (`-x`); 0 = none.
    pub u_threshold: u32,
    /// Lower connection threshold (`-y`); 0 = none.
    pub l_threshold: u32,
    /// Forwarding method (shown only; the proxy always does NAT).
    pub fwd: Forward,
    /// Connections in the established state.
    pub active: u32,
    /// Connections in any other state (connecting, closing, lingering; UDP sessions).
    pub inactive: u32,
    /// Persistence templates pointing at this server.
    pub persist: u32,
    /// `IP_VS_DEST_F_OVERLOAD`: the upper threshold was reached.
    pub overloaded: bool,
    /// `IP_VS_DEST_F_AVAILABLE`: the server is in the service (false once deleted).
    pub available: bool,
    /// Counters.
    pub stats: Stats,
}

impl Dest {
    /// A fresh destination.
    pub fn new(id: DestId, addr: SocketAddr, weight: i32) -> Dest {
        Dest {
            id,
            addr,
            weight,
            last_weight: weight,
            u_threshold: 0,
            l_threshold: 0,
            fwd: Forward::Masq,
            active: 0,
            inactive: 0,
            persist: 0,
            overloaded: false,
            available: true,
            stats: Stats::default(),
        }
    }

    /// The kernel's `ip_vs_dest_conn_overhead`: an active connection weighs 256 inactive ones.
    pub fn overhead(&self) -> i64 {
        ((self.active as i64) << 8) + self.inactive as i64
    }

    /// Active plus inactive connections (what the thresholds compare against).
    pub fn total_conns(&self) -> u32 {
        self.active + self.inactive
    }

    /// Whether a new connection may go to this server (weight above 0, not overloaded).
    pub fn usable(&self) -> bool {
        self.weight > 0 && !self.overloaded
    }
}

/// Parses `ADDR:PORT`, `[V6]:PORT`, or a bare address (port `default_port`).
pub fn parse_sockaddr(s: &str, default_port: Option<u16>) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let port = default_port?;
    let bare = s.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_names_round_trip() {
        for k in SchedKind::ALL {
            assert_eq!(k.name().parse::<SchedKind>(), Ok(k));
        }
        assert!("wlcx".parse::<SchedKind>().is_err());
    }

    #[test]
    fn sockaddr_forms() {
        assert_eq!(parse_sockaddr("10.0.0.1:80", None), Some("10.0.0.1:80".parse().unwrap()));
        assert_eq!(parse_sockaddr("10.0.0.1", Some(0)), Some("10.0.0.1:0".parse().unwrap()));
        assert_eq!(parse_sockaddr("[::1]:80", None), Some("[::1]:80".parse().unwrap()));
        assert_eq!(parse_sockaddr("10.0.0.1", None), None);
        assert_eq!(parse_sockaddr("nonsense:80", Some(0)), None);
    }

    #[test]
    fn overhead_is_kernel_formula() {
        let mut d = Dest::new(1, "10.0.0.1:80".parse().unwrap(), 1);
        d.active = 3;
        d.inactive = 7;
        assert_eq!(d.overhead(), 3 * 256 + 7);
    }
}
