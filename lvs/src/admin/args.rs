//! Parsing an ipvsadm command line (getopt style: `-Ln`, `-t10.0.0.1:80`,
//! `--tcp-service=...`) into a [`Command`].

use super::*;

fn long_to_short(name: &str) -> Option<&'static str> {
    Some(match name {
        "add-service" => "A",
        "edit-service" => "E",
        "delete-service" => "D",
        "clear" => "C",
        "restore" => "R",
        "save" => "S",
        "add-server" => "a",
        "edit-server" => "e",
        "delete-server" => "d",
        "list" => "L",
        "zero" => "Z",
        "help" => "h",
        "version" => "v",
        "tcp-service" => "t",
        "udp-service" => "u",
        "fwmark-service" => "f",
        "scheduler" => "s",
        "persistent" => "p",
        "netmask" => "M",
        "real-server" => "r",
        "gatewaying" => "g",
        "ipip" => "i",
        "masquerading" => "m",
        "weight" => "w",
        "u-threshold" => "x",
        "l-threshold" => "y",
        "numeric" => "n",
        "connection" => "c",
        "sched-flags" => "b",
        _ => return None,
    })
}

/// Short options that take a value.
const WITH_VALUE: &str = "tufsMrwxyb";
/// Short options without a value.
const NO_VALUE: &str = "AEDCRSaedLlZhvngimcp";

/// Expands `-Ln` into `-L -n`, `-t1.2.3.4:80` into `-t 1.2.3.4:80`, `--x=y` into `--x y`.
fn normalize(args: &[String]) -> Result<Vec<String>, ArgError> {
    let mut out = Vec::new();
    for a in args {
        if let Some(long) = a.strip_prefix("--") {
            let (name, val) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            out.push(format!("--{name}"));
            if let Some(v) = val {
                out.push(v.to_string());
            }
        } else if a.len() > 2 && a.starts_with('-') && !a[1..].starts_with(|c: char| c.is_ascii_digit()) {
            let body = &a[1..];
            let first = body.chars().next().expect("len > 2");
            if WITH_VALUE.contains(first) {
                out.push(format!("-{first}"));
                out.push(body[first.len_utf8()..].to_string());
            } else if body.chars().all(|c| NO_VALUE.contains(c)) {
                out.extend(body.chars().map(|c| format!("-{c}")));
            } else {
                return bad(format!("invalid option {a}"));
            }
        } else {
            out.push(a.clone());
        }
    }
    Ok(out)
}

fn parse_service(opt: &str, v: &str) -> Result<ServiceKey, ArgError> {
    match opt {
        "t" | "u" => {
            let addr = parse_sockaddr(v, None)
                .ok_or_else(|| ArgError(format!("illegal virtual server address[:port] specified: {v}")))?;
            Ok(if opt == "t" { ServiceKey::tcp(addr) } else { ServiceKey::udp(addr) })
        }
        _ => match v.parse::<u32>() {
            Ok(m) if m > 0 => Ok(ServiceKey::FwMark(m)),
            _ => bad(format!("illegal fwmark specified: {v}")),
        },
    }
}

/// Parses an ipvsadm argument list (without the program name).
pub fn parse_args(raw: &[String]) -> Result<Command, ArgError> {
    let args = normalize(raw)?;
    let mut cmd: Option<Cmd> = None;
    let mut key: Option<ServiceKey> = None;
    let mut sched: Option<SchedKind> = None;
    let mut persistent: Option<u32> = None;
    let mut netmask: Option<String> = None;
    let mut flags: Option<SchedFlags> = None;
    let mut real: Option<String> = None;
    let mut fwd: Option<Forward> = None;
    let mut weight: Option<i32> = None;
    let mut ux: Option<u32> = None;
    let mut ly: Option<u32> = None;
    let mut mode = ListMode::Plain;
    let mut exact = false;
    let mut set_vals: Vec<u32> = Vec::new();
    let mut map_mark: Option<u32> = None;
    let mut i = 0;
    let set_cmd = |cmd: &mut Option<Cmd>, c: Cmd| -> Result<(), ArgError> {
        if cmd.is_some_and(|old| old != c) {
            return bad("only one command at a time (-A, -E, -D, -C, -R, -S, -a, -e, -d, -L, -Z, --set)");
        }
        *cmd = Some(c);
        Ok(())
    };
    while i < args.len() {
        let a = args[i].as_str();
        i += 1;
        let opt: String = if let Some(long) = a.strip_prefix("--") {
            match long {
                "stats" => {
                    mode = ListMode::Stats;
                    continue;
                }
                "rate" => {
                    mode = ListMode::Rate;
                    continue;
                }
                "thresholds" => {
                    mode = ListMode::Thresholds;
                    continue;
                }
                "persistent-conn" => {
                    mode = ListMode::Persistent;
                    continue;
                }
                "timeout" => {
                    mode = ListMode::Timeout;
                    continue;
                }
                "exact" => {
                    exact = true;
                    continue;
                }
                "sort" | "nosort" => continue,
                "set" => {
                    set_cmd(&mut cmd, Cmd::Set)?;
                    for _ in 0..3 {
                        let v =
                            args.get(i).ok_or_else(|| ArgError("--set needs three values: tcp tcpfin udp".into()))?;
                        set_vals.push(v.parse().map_err(|_| ArgError(format!("illegal timeout value: {v}")))?);
                        i += 1;
                    }
                    continue;
                }
                "fwmark-map" => {
                    set_cmd(&mut cmd, Cmd::Map)?;
                    let v = args.get(i).ok_or_else(|| ArgError("--fwmark-map needs a mark".into()))?;
                    map_mark = Some(v.parse().map_err(|_| ArgError(format!("illegal fwmark specified: {v}")))?);
                    i += 1;
                    continue;
                }
                other => {
                    long_to_short(other).ok_or_else(|| ArgError(format!("unrecognized option --{other}")))?.to_string()
                }
            }
        } else if let Some(s) = a.strip_prefix('-') {
            if s.len() != 1 {
                return bad(format!("invalid option {a}"));
            }
            s.to_string()
        } else {
            // A positional service after -L/-Z is not ipvsadm syntax; refuse it clearly.
            return bad(format!("unexpected argument `{a}`"));
        };
        let value = |i: &mut usize| -> Result<String, ArgError> {
            let v = args.get(*i).ok_or_else(|| ArgError(format!("option -{opt} needs a value")))?;
            *i += 1;
            Ok(v.clone())
        };
        match opt.as_str() {
            "A" => set_cmd(&mut cmd, Cmd::A)?,
            "E" => set_cmd(&mut cmd, Cmd::E)?,
            "D" => set_cmd(&mut cmd, Cmd::D)?,
            "C" => set_cmd(&mut cmd, Cmd::C)?,
            "R" => set_cmd(&mut cmd, Cmd::R)?,
            "S" => set_cmd(&mut cmd, Cmd::S)?,
            "a" => set_cmd(&mut cmd, Cmd::Ad)?,
            "e" => set_cmd(&mut cmd, Cmd::Ed)?,
            "d" => set_cmd(&mut cmd, Cmd::Dd)?,
            "L" | "l" => set_cmd(&mut cmd, Cmd::L)?,
            "Z" => set_cmd(&mut cmd, Cmd::Z)?,
            "h" => set_cmd(&mut cmd, Cmd::H)?,
            "v" => set_cmd(&mut cmd, Cmd::V)?,
            "t" | "u" | "f" => {
                if key.is_some() {
                    return bad("only one service (-t, -u or -f) at a time");
                }
                let v = value(&mut i)?;
                key = Some(parse_service(&opt, &v)?);
            }
            "s" => {
                let v = value(&mut i)?;
                sched = Some(v.parse().map_err(|e| ArgError(format!("{e}")))?);
            }
            "p" => {
                let t = match args.get(i).and_then(|v| v.parse::<u32>().ok()) {
                    Some(t) => {
                        i += 1;
                        t
                    }
                    None => DEFAULT_PERSISTENCE_S,
                };
                if t == 0 {
                    return bad("illegal timeout value for persistent service: 0");
                }
                persistent = Some(t);
            }
            "M" => netmask = Some(value(&mut i)?),
            "b" => {
                let v = value(&mut i)?;
                let mut f = SchedFlags::default();
                for part in v.split(',') {
                    match part {
                        "sh-fallback" | "mh-fallback" | "flag-1" => f.fallback = true,
                        "sh-port" | "mh-port" | "flag-2" => f.port = true,
                        _ => return bad(format!("invalid scheduler flag: {part}")),
                    }
                }
                flags = Some(f);
            }
            "r" => real = Some(value(&mut i)?),
            "g" => fwd = Some(Forward::Route),
            "i" => fwd = Some(Forward::Tunnel),
            "m" => fwd = Some(Forward::Masq),
            "w" => {
                let v = value(&mut i)?;
                match v.parse::<i32>() {
                    Ok(w) if (0..=65535).contains(&w) => weight = Some(w),
                    _ => return bad(format!("illegal weight specified: {v}")),
                }
            }
            "x" => {
                let v = value(&mut i)?;
                ux = Some(v.parse().map_err(|_| ArgError(format!("illegal upper threshold specified: {v}")))?);
            }
            "y" => {
                let v = value(&mut i)?;
                ly = Some(v.parse().map_err(|_| ArgError(format!("illegal lower threshold specified: {v}")))?);
            }
            "n" => {}
            "c" => mode = ListMode::Conns,
            other => return bad(format!("invalid option -{other}")),
        }
    }
    let Some(cmd) = cmd else { return bad("no command given (try lvsadm -h)") };
    let need_key = |k: Option<ServiceKey>| k.ok_or_else(|| ArgError("a service is needed: -t, -u or -f".into()));
    let service_spec = |k: ServiceKey| -> Result<ServiceSpec, ArgError> {
        let mut spec = ServiceSpec::new(k);
        spec.sched = sched.unwrap_or_default();
        spec.flags = flags.unwrap_or_default();
        spec.persistent_s = persistent;
        if let Some(m) = &netmask {
            if persistent.is_none() {
                return bad("-M netmask needs -p (persistence)");
            }
            spec.netmask = match (m.parse::<std::net::Ipv4Addr>(), m.parse::<u8>()) {
                (Ok(mask), _) if { u32::from(mask).leading_ones() + u32::from(mask).trailing_zeros() == 32 } => {
                    NetMask::V4(mask)
                }
                (_, Ok(p)) if p <= 128 => NetMask::V6(p),
                _ => return bad(format!("illegal netmask specified: {m}")),
            };
        }
        Ok(spec)
    };
    let dest_spec = |k: ServiceKey| -> Result<DestSpec, ArgError> {
        let r = real.as_deref().ok_or_else(|| ArgError("a real server is needed: -r ADDR[:PORT]".into()))?;
        let default_port = match k {
            ServiceKey::Addr { addr, .. } => addr.port(),
            ServiceKey::FwMark(_) => 0,
        };
        let addr = parse_sockaddr(r, Some(default_port))
            .ok_or_else(|| ArgError(format!("illegal real server address[:port] specified: {r}")))?;
        let mut d = DestSpec::new(addr);
        d.weight = weight.unwrap_or(1);
        d.u_threshold = ux.unwrap_or(0);
        d.l_threshold = ly.unwrap_or(0);
        d.fwd = fwd.unwrap_or_default();
        Ok(d)
    };
    Ok(match cmd {
        Cmd::A => Command::AddService(service_spec(need_key(key)?)?),
        Cmd::E => Command::EditService(service_spec(need_key(key)?)?),
        Cmd::D => Command::DeleteService(need_key(key)?),
        Cmd::C => Command::Clear,
        Cmd::R => Command::Restore,
        Cmd::S => Command::Save,
        Cmd::Ad => {
            let k = need_key(key)?;
            Command::AddDest(k, dest_spec(k)?)
        }
        Cmd::Ed => {
            let k = need_key(key)?;
            Command::EditDest(k, dest_spec(k)?)
        }
        Cmd::Dd => {
            let k = need_key(key)?;
            Command::DeleteDest(k, dest_spec(k)?.addr)
        }
        Cmd::L => Command::List { key, mode, exact },
        Cmd::Z => Command::Zero(key),
        Cmd::Set => Command::SetTimeouts(Timeouts { tcp_s: set_vals[0], tcpfin_s: set_vals[1], udp_s: set_vals[2] }),
        Cmd::H => Command::Help,
        Cmd::V => Command::Version,
        Cmd::Map => match key {
            Some(ServiceKey::Addr { proto, addr }) => Command::MapMark(proto, addr, map_mark.filter(|m| *m != 0)),
            _ => return bad("--fwmark-map MARK needs -t or -u ADDR:PORT"),
        },
    })
}
