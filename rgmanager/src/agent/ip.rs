//! `ip`: a floating address. It goes on the interface that already holds an address of its
//! subnet (the prefix given, or that address's prefix when none is), is announced with a
//! gratuitous ARP (IPv4; `arping -U`, best effort), and is removed on stop. With
//! `monitor_link="1"` the status check also fails when the interface's link is down.

use std::net::IpAddr;

use cluster::conf::Resource;

use super::exec::{must, run};
use super::{flag, Action, AgentError, Env};

/// One address configured on an interface, from `ip -o addr show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IfAddr {
    pub ifname: String,
    pub addr: IpAddr,
    pub prefix: u8,
}

/// Parses `ip -o addr show` output.
pub(crate) fn parse_addrs(text: &str) -> Vec<IfAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        // "2: eth0    inet 198.18.0.1/16 brd 198.18.255.255 scope global eth0\   valid_lft ..."
        let mut w = line.split_whitespace();
        let (Some(_idx), Some(ifname)) = (w.next(), w.next()) else { continue };
        let Some(fam) = w.next() else { continue };
        if fam != "inet" && fam != "inet6" {
            continue;
        }
        let Some(cidr) = w.next() else { continue };
        let Some((a, p)) = cidr.split_once('/') else { continue };
        let (Ok(addr), Ok(prefix)) = (a.parse::<IpAddr>(), p.parse::<u8>()) else { continue };
        out.push(IfAddr {
            ifname: ifname.trim_end_matches(':').split('@').next().unwrap_or("").to_owned(),
            addr,
            prefix,
        });
    }
    out
}

fn in_subnet(a: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (a, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let p = u32::from(prefix.min(32));
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let p = u32::from(prefix.min(128));
            let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The resource's address and optional prefix.
pub(crate) fn parse_key(key: &str) -> Result<(IpAddr, Option<u8>), AgentError> {
    let bad = |p: String| AgentError::Config { attr: "address", problem: p };
    let (a, p) = match key.split_once('/') {
        Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad(format!("\"{p}\" is not a prefix length")))?)),
        None => (key, None),
    };
    let addr: IpAddr = a.parse().map_err(|_| bad(format!("\"{a}\" is not an IP address")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if p.is_some_and(|p| p > max) {
        return Err(bad(format!("prefix /{} is longer than {max}", p.unwrap_or(0))));
    }
    Ok((addr, p))
}

/// Where the address goes: the interface holding its subnet, and the prefix to use.
pub(crate) fn choose(addrs: &[IfAddr], addr: IpAddr, prefix: Option<u8>) -> Option<(String, u8)> {
    addrs
        .iter()
        .filter(|x| x.addr != addr && x.ifname != "lo")
        .find(|x| in_subnet(addr, x.addr, prefix.unwrap_or(x.prefix).min(x.prefix)))
        .map(|x| (x.ifname.clone(), prefix.unwrap_or(x.prefix)))
}

fn addrs(env: &Env) -> Result<Vec<IfAddr>, AgentError> {
    Ok(parse_addrs(&must("ip", &["-o", "addr", "show"], env.status_timeout)?.output))
}

fn link_up(env: &Env, ifname: &str) -> Result<bool, AgentError> {
    let o = must("ip", &["-o", "link", "show", "dev", ifname], env.status_timeout)?;
    Ok(o.output.contains("LOWER_UP") || o.output.contains("state UP"))
}

pub(super) fn act(env: &Env, res: &Resource, action: Action) -> Result<(), AgentError> {
    let (addr, prefix) = parse_key(&res.key)?;
    let all = addrs(env)?;
    let present = all.iter().find(|x| x.addr == addr).cloned();
    match action {
        Action::Start => {
            let ifname = match &present {
                Some(p) => p.ifname.clone(),
                None => {
                    let (ifname, p) = choose(&all, addr, prefix).ok_or_else(|| {
                        AgentError::Down(format!("no interface holds an address in the subnet of {}", res.key))
                    })?;
                    if flag(res, "monitor_link") && !link_up(env, &ifname)? {
                        return Err(AgentError::Down(format!("link of {ifname} is down (monitor_link)")));
                    }
                    let cidr = format!("{addr}/{p}");
                    must("ip", &["addr", "add", &cidr, "dev", &ifname], env.start_stop_timeout)?;
                    ifname
                }
            };
            if addr.is_ipv4() {
                // Tell the neighbours the address moved here (best effort: arping may be absent).
                // arping waits about a second for answers nobody sends to an unsolicited ARP,
                // so it runs on its own thread and the next resource starts at once.
                let a = addr.to_string();
                let t = env.status_timeout;
                std::thread::spawn(move || {
                    let _ = run("arping", &["-U", "-c", "1", "-i", &ifname, "-S", &a, &a], t);
                });
            }
            Ok(())
        }
        Action::Stop => {
            if let Some(p) = present {
                let cidr = format!("{addr}/{}", p.prefix);
                must("ip", &["addr", "del", &cidr, "dev", &p.ifname], env.start_stop_timeout)?;
            }
            Ok(())
        }
        Action::Status => match present {
            None => Err(AgentError::Down(format!("address {addr} is not configured"))),
            Some(p) if flag(res, "monitor_link") && !link_up(env, &p.ifname)? => {
                Err(AgentError::Down(format!("link of {} is down (monitor_link)", p.ifname)))
            }
            Some(_) => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
1: lo    inet6 ::1/128 scope host noprefixroute \\       valid_lft forever preferred_lft forever
2: eth0    inet 198.18.0.1/16 brd 198.18.255.255 scope global eth0\\       valid_lft forever preferred_lft forever
3: veth1@if4    inet 10.1.0.5/24 scope global veth1\\       valid_lft forever
3: veth1@if4    inet6 fe80::1/64 scope link \\       valid_lft forever preferred_lft forever
";

    #[test]
    fn picks_the_interface_of_the_subnet() {
        let a = parse_addrs(SHOW);
        assert_eq!(a.len(), 5);
        assert_eq!(a[3], IfAddr { ifname: "veth1".into(), addr: "10.1.0.5".parse().unwrap(), prefix: 24 });
        let (ip, p) = parse_key("198.18.10.1").unwrap();
        assert_eq!(choose(&a, ip, p), Some(("eth0".into(), 16)));
        let (ip, p) = parse_key("198.18.10.1/24").unwrap();
        assert_eq!(choose(&a, ip, p), Some(("eth0".into(), 24)));
        let (ip, p) = parse_key("10.1.0.77").unwrap();
        assert_eq!(choose(&a, ip, p), Some(("veth1".into(), 24)));
        let (ip, p) = parse_key("192.0.2.1").unwrap();
        assert_eq!(choose(&a, ip, p), None);
        assert!(parse_key("1.2.3.4/33").is_err());
        assert!(parse_key("nope").is_err());
    }
}
