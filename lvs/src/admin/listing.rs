//! What ipvsadm prints: `-L` listings (plain, `--stats`, `--rate`, `--exact`), the
//! `ipvsadm-save` rules that `-R` reads back, and a parser of `-L -n` output for scripts.

use super::*;

/// The scheduler flags as ipvsadm names them (`sh-fallback,sh-port`), if any are set.
fn sched_flag_names(sp: &crate::table::ServiceSpec) -> Option<String> {
    if sp.flags == SchedFlags::default() {
        return None;
    }
    let prefix = if sp.sched == SchedKind::Mh { "mh" } else { "sh" };
    let mut f = Vec::new();
    if sp.flags.fallback {
        f.push(format!("{prefix}-fallback"));
    }
    if sp.flags.port {
        f.push(format!("{prefix}-port"));
    }
    Some(f.join(","))
}

/// The persistence netmask, unless it is the full mask (which ipvsadm leaves out).
fn mask_text(netmask: NetMask) -> Option<String> {
    match netmask {
        NetMask::V4(m) if u32::from(m) != u32::MAX => Some(m.to_string()),
        NetMask::V6(p) if p != 128 => Some(p.to_string()),
        _ => None,
    }
}

fn service_line_rule(s: &crate::table::Service) -> String {
    let sp = &s.spec;
    let mut l = format!("-A {} -s {}", sp.key.to_option(), sp.sched);
    if let Some(f) = sched_flag_names(sp) {
        let _ = write!(l, " -b {f}");
    }
    if let Some(p) = sp.persistent_s {
        let _ = write!(l, " -p {p}");
        if let Some(m) = mask_text(sp.netmask) {
            let _ = write!(l, " -M {m}");
        }
    }
    l
}

/// The table in `ipvsadm-save -n` format (read back by `-R`).
pub fn save(d: &Director) -> String {
    let mut out = String::new();
    for s in d.services() {
        let _ = writeln!(out, "{}", service_line_rule(s));
        for x in &s.dests {
            let _ = write!(out, "-a {} -r {} {} -w {}", s.spec.key.to_option(), x.addr, x.fwd.flag(), x.weight);
            if x.u_threshold != 0 {
                let _ = write!(out, " -x {}", x.u_threshold);
            }
            if x.l_threshold != 0 {
                let _ = write!(out, " -y {}", x.l_threshold);
            }
            out.push('\n');
        }
    }
    out
}

/// ipvsadm's `print_largenum`.
fn largenum(out: &mut String, n: u64, exact: bool) {
    let _ = if exact {
        let len = n.to_string().len();
        write!(out, "{n:>w$}", w = if len <= 8 { 9 } else { len + 1 })
    } else if n < 100_000_000 {
        write!(out, "{n:>9}")
    } else if n < 1_000_000_000 {
        write!(out, "{:>8}K", n / 1000)
    } else if n < 100_000_000_000 {
        write!(out, "{:>8}M", n / 1_000_000)
    } else if n < 100_000_000_000_000 {
        write!(out, "{:>8}G", n / 1_000_000_000)
    } else {
        write!(out, "{:>8}T", n / 1_000_000_000_000)
    };
}

fn plain_service_line(s: &crate::table::Service) -> String {
    let sp = &s.spec;
    let mut l = format!("{} {}", sp.key, sp.sched);
    if let Some(f) = sched_flag_names(sp) {
        let _ = write!(l, " ({f})");
    }
    if let Some(p) = sp.persistent_s {
        let _ = write!(l, " persistent {p}");
        if let Some(m) = mask_text(sp.netmask) {
            let _ = write!(l, " mask {m}");
        }
    }
    l
}

/// `-L -n` in its modes, in ipvsadm's layout.
pub fn list(
    d: &Director,
    key: Option<&ServiceKey>,
    mode: ListMode,
    exact: bool,
    now_ms: Millis,
) -> Result<String, crate::table::TableError> {
    if let Some(k) = key {
        if d.service(k).is_none() {
            return Err(crate::table::TableError::NoService { key: *k });
        }
    }
    let mut out = String::new();
    if mode == ListMode::Timeout {
        let t = d.timeouts;
        let _ = writeln!(out, "Timeout (tcp tcpfin udp): {} {} {}", t.tcp_s, t.tcpfin_s, t.udp_s);
        return Ok(out);
    }
    if mode == ListMode::Conns {
        out.push_str(
            "IPVS connection entries\npro expire state       source             virtual            destination\n",
        );
        let mut conns: Vec<_> = d.conns().filter(|(_, c)| key.is_none_or(|k| *k == c.service)).collect();
        conns.sort_by_key(|(id, _)| **id);
        for (_, c) in conns {
            let e = d.expires_in_s(c, now_ms);
            let _ = writeln!(
                out,
                "{:<3} {:02}:{:02}  {:<11} {:<18} {:<18} {}",
                c.proto.upper(),
                e / 60,
                e % 60,
                c.state.name(),
                c.client.to_string(),
                c.vaddr.to_string(),
                c.daddr
            );
        }
        return Ok(out);
    }
    let _ = writeln!(out, "{VERSION_LINE}");
    out.push_str(match mode {
        ListMode::Stats => {
            "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n  -> RemoteAddress:Port\n"
        }
        ListMode::Rate => {
            "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS\n  -> RemoteAddress:Port\n"
        }
        ListMode::Thresholds => {
            "Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn\n  -> RemoteAddress:Port\n"
        }
        ListMode::Persistent => {
            "Prot LocalAddress:Port            Weight    PersistConn ActiveConn InActConn\n  -> RemoteAddress:Port\n"
        }
        _ => {
            "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        }
    });
    for s in d.services().iter().filter(|s| key.is_none_or(|k| *k == s.spec.key)) {
        let name = s.spec.key.to_string();
        match mode {
            ListMode::Stats => {
                let _ = write!(out, "{name:<33}");
                let st = &s.stats;
                for n in [st.conns, st.inpkts, st.outpkts, st.inbytes, st.outbytes] {
                    largenum(&mut out, n, exact);
                }
                out.push('\n');
            }
            ListMode::Rate => {
                let _ = write!(out, "{name:<33}");
                let r = &s.rate;
                for n in [r.cps, r.inpps, r.outpps, r.inbps, r.outbps] {
                    largenum(&mut out, n.round() as u64, exact);
                }
                out.push('\n');
            }
            _ => {
                let _ = writeln!(out, "{}", plain_service_line(s));
            }
        }
        for x in &s.dests {
            let dn = x.addr.to_string();
            match mode {
                ListMode::Stats => {
                    let _ = write!(out, "  -> {dn:<28}");
                    let st = &x.stats;
                    for n in [st.conns, st.inpkts, st.outpkts, st.inbytes, st.outbytes] {
                        largenum(&mut out, n, exact);
                    }
                    out.push('\n');
                }
                ListMode::Rate => {
                    // Per-server rates are not estimated; ipvsadm shows zeros for idle ones.
                    let _ = write!(out, "  -> {dn:<28}");
                    for _ in 0..5 {
                        largenum(&mut out, 0, exact);
                    }
                    out.push('\n');
                }
                ListMode::Thresholds => {
                    let _ = writeln!(
                        out,
                        "  -> {dn:<28} {:<10} {:<10} {:<10} {:<10}",
                        x.u_threshold, x.l_threshold, x.active, x.inactive
                    );
                }
                ListMode::Persistent => {
                    let _ = writeln!(
                        out,
                        "  -> {dn:<28} {:<9} {:<11} {:<10} {:<10}",
                        x.weight, x.persist, x.active, x.inactive
                    );
                }
                _ => {
                    let _ = writeln!(
                        out,
                        "  -> {dn:<28} {:<7} {:<6} {:<10} {:<10}",
                        x.fwd.name(),
                        x.weight,
                        x.active,
                        x.inactive
                    );
                }
            }
        }
    }
    Ok(out)
}

/// One real-server row of `-L -n`: address, weight, active and inactive connections.
pub type ListingRow = (SocketAddr, i32, u32, u32);

/// Parsed `-L -n` listing (for tests and scripts): per service, its rows.
pub fn parse_listing(text: &str) -> Vec<(String, Vec<ListingRow>)> {
    let mut out: Vec<(String, Vec<ListingRow>)> = Vec::new();
    for line in text.lines().skip(3) {
        if let Some(rest) = line.strip_prefix("  -> ") {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if let (Some(cur), [a, _, w, ac, ina]) = (out.last_mut(), f.as_slice()) {
                if let (Ok(a), Ok(w), Ok(ac), Ok(ina)) = (a.parse(), w.parse(), ac.parse(), ina.parse()) {
                    cur.1.push((a, w, ac, ina));
                }
            }
        } else if !line.trim().is_empty() {
            let mut f = line.split_whitespace();
            let name = format!("{}  {}", f.next().unwrap_or(""), f.next().unwrap_or(""));
            out.push((name, Vec::new()));
        }
    }
    out
}
