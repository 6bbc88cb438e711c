//! The kernel fast path: services whose scheduler nftables can express are DNATed by the
//! kernel (table `ip lvs`), so their packets never reach the userspace proxy.
//!
//! - `rr`: `numgen inc mod N` over the usable servers;
//! - `wrr`: `numgen inc` over one full cycle of the kernel's wrr sequence (weights 4,3,2 →
//!   the 9-entry map A A B A B C A B C);
//! - `sh` / `dh`: `jhash ip saddr` / `jhash ip daddr` into our 256-bucket table (the same
//!   buckets as the userspace scheduler; the hash is jhash, not the kernel's hash_32).
//!
//! Persistent, firewall-mark, IPv6 and other-scheduler services stay on the proxy. DNATed
//! connections get a conntrack mark and are masqueraded on the way to a remote real server,
//! so real servers see the director as with the proxy (not on loopback, where masquerading
//! a local destination breaks the connection). The whole table is replaced in one
//! `nft -f` transaction, so a change is atomic. Connections on this path are counted by
//! conntrack, not by the table (`lvsadm -L` shows 0 for them).

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::model::{Protocol, SchedFlags, SchedKind, ServiceKey};
use crate::sched::{Packet, Scheduler};
use crate::table::{Director, Service};

/// The nftables table name (family ip).
pub const TABLE: &str = "lvs";
/// Conntrack mark set on DNATed connections ("LV").
pub const CT_MARK: u32 = 0x4c56;

/// Whether `svc` can run on the kernel path.
pub fn expressible(svc: &Service) -> bool {
    let v4 = matches!(svc.spec.key, ServiceKey::Addr { addr: SocketAddr::V4(_), .. });
    v4 && svc.spec.persistent_s.is_none()
        && matches!(svc.spec.sched, SchedKind::Rr | SchedKind::Wrr | SchedKind::Sh | SchedKind::Dh)
        && svc.dests.iter().all(|d| d.addr.is_ipv4() && d.addr.port() != 0)
}

fn target(svc: &Service, i: usize) -> String {
    let a = svc.dests[i].addr;
    format!("{} . {}", a.ip(), a.port())
}

/// The `dnat` rule of one service, or None (no usable server: left to the proxy).
pub fn service_rule(svc: &Service) -> Option<String> {
    let ServiceKey::Addr { proto, addr } = svc.spec.key else { return None };
    let usable: Vec<usize> = (0..svc.dests.len()).filter(|&i| svc.dests[i].weight > 0).collect();
    if usable.is_empty() {
        return None;
    }
    let entries: Vec<String> = match svc.spec.sched {
        SchedKind::Rr => usable.iter().enumerate().map(|(k, &i)| format!("{k} : {}", target(svc, i))).collect(),
        SchedKind::Wrr => {
            let mut s = Scheduler::new(SchedKind::Wrr, SchedFlags::default(), &svc.dests);
            let g = usable.iter().map(|&i| svc.dests[i].weight).fold(0, gcd);
            let cycle: i32 = usable.iter().map(|&i| svc.dests[i].weight / g.max(1)).sum();
            let p = Packet { saddr: addr.ip(), sport: 0, daddr: addr.ip(), dport: addr.port() };
            (0..cycle)
                .filter_map(|_| s.schedule(&svc.dests, &p, 0))
                .enumerate()
                .map(|(k, i)| format!("{k} : {}", target(svc, i)))
                .collect()
        }
        SchedKind::Sh | SchedKind::Dh => {
            let s = Scheduler::new(svc.spec.sched, SchedFlags::default(), &svc.dests);
            let table = s.mh_table().expect("bucket scheduler");
            table
                .iter()
                .enumerate()
                .filter_map(|(b, i)| {
                    i.filter(|&i| svc.dests[i].weight > 0).map(|i| format!("{b} : {}", target(svc, i)))
                })
                .collect()
        }
        _ => return None,
    };
    let selector = match svc.spec.sched {
        SchedKind::Sh => "jhash ip saddr mod 256".to_string(),
        SchedKind::Dh => "jhash ip daddr mod 256".to_string(),
        _ => format!("numgen inc mod {}", entries.len()),
    };
    let l4 = match proto {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    Some(format!(
        "ip daddr {} {l4} dport {} ct mark set {CT_MARK:#x} dnat ip addr . port to {selector} map {{ {} }}",
        addr.ip(),
        addr.port(),
        entries.join(", ")
    ))
}

fn gcd(a: i32, b: i32) -> i32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The whole table as an `nft -f` script that replaces it atomically (an empty table when
/// no service is expressible).
pub fn ruleset(d: &Director) -> String {
    let rules: Vec<String> = d.services().iter().filter(|s| expressible(s)).filter_map(service_rule).collect();
    let mut out = format!("table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n");
    for (chain, hook, prio) in [("prerouting", "prerouting", -100), ("output", "output", -100)] {
        let _ = writeln!(out, "  chain {chain} {{\n    type nat hook {hook} priority {prio}; policy accept;");
        for r in &rules {
            let _ = writeln!(out, "    {r}");
        }
        out.push_str("  }\n");
    }
    let _ = writeln!(
        out,
        "  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n    \
         ct mark {CT_MARK:#x} oifname != \"lo\" masquerade\n  }}"
    );
    out.push_str("}\n");
    out
}

/// Script that removes the table.
pub fn teardown() -> String {
    format!("table ip {TABLE}\ndelete table ip {TABLE}\n")
}

/// Services on the kernel path (for logs).
pub fn fast_services(d: &Director) -> Vec<ServiceKey> {
    d.services().iter().filter(|s| expressible(s) && service_rule(s).is_some()).map(|s| s.spec.key).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{execute, parse_args};

    fn table(cmds: &[&str]) -> Director {
        let mut d = Director::new();
        for c in cmds {
            let argv: Vec<String> = c.split_whitespace().map(str::to_string).collect();
            assert_eq!(execute(&mut d, parse_args(&argv).unwrap(), "", 0).code, 0, "{c}");
        }
        d
    }

    #[test]
    fn rr_and_wrr_maps() {
        let d = table(&[
            "-A -t 10.0.0.1:80 -s rr",
            "-a -t 10.0.0.1:80 -r 10.0.1.1:8080",
            "-a -t 10.0.0.1:80 -r 10.0.1.2:8080 -w 0",
            "-a -t 10.0.0.1:80 -r 10.0.1.3:8080",
            "-A -u 10.0.0.1:53 -s wrr",
            "-a -u 10.0.0.1:53 -r 10.0.1.1:53 -w 4",
            "-a -u 10.0.0.1:53 -r 10.0.1.2:53 -w 3",
            "-a -u 10.0.0.1:53 -r 10.0.1.3:53 -w 2",
            "-A -t 10.0.0.1:443 -s wlc",
            "-a -t 10.0.0.1:443 -r 10.0.1.1:443",
        ]);
        let r = ruleset(&d);
        assert!(
            r.contains(
                "ip daddr 10.0.0.1 tcp dport 80 ct mark set 0x4c56 dnat ip addr . port to numgen inc mod 2 map \
             { 0 : 10.0.1.1 . 8080, 1 : 10.0.1.3 . 8080 }"
            ),
            "{r}"
        );
        let (a, b, c) = ("10.0.1.1 . 53", "10.0.1.2 . 53", "10.0.1.3 . 53");
        let seq = [a, a, b, a, b, c, a, b, c];
        let map: Vec<String> = seq.iter().enumerate().map(|(k, t)| format!("{k} : {t}")).collect();
        assert!(
            r.contains(&format!(
                "udp dport 53 ct mark set 0x4c56 dnat ip addr . port to numgen inc mod 9 map {{ {} }}",
                map.join(", ")
            )),
            "{r}"
        );
        assert!(!r.contains("dport 443"), "wlc stays on the proxy");
        assert_eq!(fast_services(&d).len(), 2);
        assert!(r.starts_with("table ip lvs\ndelete table ip lvs\n"));
    }

    #[test]
    fn sh_buckets_follow_the_scheduler_table() {
        let d = table(&[
            "-A -t 10.0.0.1:80 -s sh",
            "-a -t 10.0.0.1:80 -r 10.0.1.1:80 -w 2",
            "-a -t 10.0.0.1:80 -r 10.0.1.2:80",
        ]);
        let rule = service_rule(&d.services()[0]).unwrap();
        assert!(
            rule.contains("jhash ip saddr mod 256 map { 0 : 10.0.1.1 . 80, 1 : 10.0.1.1 . 80, 2 : 10.0.1.2 . 80,"),
            "{rule}"
        );
        assert_eq!(rule.matches(" : ").count(), 256);
        let d = table(&["-A -t 10.0.0.1:80 -s sh -p 60", "-a -t 10.0.0.1:80 -r 10.0.1.1:80"]);
        assert!(!expressible(&d.services()[0]), "persistence stays on the proxy");
    }
}
