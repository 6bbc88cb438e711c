//! `HOST[:PORT]` as operators write server addresses: `host`, `host:port`, `1.2.3.4:5`,
//! `[v6]`, `[v6]:port`, and a bare IPv6 literal (`::1`: the host, with the default port).

use thiserror::Error;

/// Why a `HOST[:PORT]` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AddrError {
    #[error("empty server address (expected HOST[:PORT])")]
    Empty,
    #[error("'{addr}' has no host (expected HOST[:PORT])")]
    NoHost { addr: String },
    #[error("'{addr}' opens '[' without closing it (expected [IPV6] or [IPV6]:PORT)")]
    Unclosed { addr: String },
    #[error("'{addr}' has '{rest}' after ']' (expected [IPV6] or [IPV6]:PORT)")]
    Trailing { addr: String, rest: String },
    #[error("'{port}' in '{addr}' is not a port number (0-65535)")]
    BadPort { addr: String, port: String },
    #[error("'{addr}' is not HOST[:PORT] (put IPv6 addresses in brackets: [IPV6]:PORT)")]
    Invalid { addr: String },
}

/// A parsed `HOST[:PORT]`. The host is without brackets (`::1` for `[::1]:99`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort<'a> {
    pub host: &'a str,
    pub port: Option<u16>,
}

impl<'a> HostPort<'a> {
    /// Parses `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 literal.
    pub fn parse(addr: &'a str) -> Result<HostPort<'a>, AddrError> {
        let owned = || addr.to_string();
        if addr.is_empty() {
            return Err(AddrError::Empty);
        }
        if let Some(inner) = addr.strip_prefix('[') {
            let Some((host, rest)) = inner.split_once(']') else {
                return Err(AddrError::Unclosed { addr: owned() });
            };
            if host.is_empty() {
                return Err(AddrError::NoHost { addr: owned() });
            }
            if !valid_host(host) {
                return Err(AddrError::Invalid { addr: owned() });
            }
            let port = match rest {
                "" => None,
                _ => match rest.strip_prefix(':') {
                    Some(p) => Some(port(addr, p)?),
                    None => return Err(AddrError::Trailing { addr: owned(), rest: rest.to_string() }),
                },
            };
            return Ok(HostPort { host, port });
        }
        if !valid_host(addr) {
            return Err(AddrError::Invalid { addr: owned() });
        }
        match addr.matches(':').count() {
            0 => Ok(HostPort { host: addr, port: None }),
            1 => {
                let (host, p) = addr.split_once(':').expect("one colon");
                if host.is_empty() {
                    return Err(AddrError::NoHost { addr: owned() });
                }
                Ok(HostPort { host, port: Some(port(addr, p)?) })
            }
            // A bare IPv6 literal: all of it is the host.
            _ if addr.parse::<std::net::Ipv6Addr>().is_ok() => Ok(HostPort { host: addr, port: None }),
            _ => Err(AddrError::Invalid { addr: owned() }),
        }
    }

    /// `host:port` (`[host]:port` for IPv6) with `default` when no port was given: what
    /// `TcpStream::connect` takes.
    pub fn with_default_port(&self, default: u16) -> String {
        let port = self.port.unwrap_or(default);
        if self.host.contains(':') {
            format!("[{}]:{port}", self.host)
        } else {
            format!("{}:{port}", self.host)
        }
    }
}

/// `addr` as `host:port` with `default` added when it names no port.
pub fn with_default_port(addr: &str, default: u16) -> Result<String, AddrError> {
    Ok(HostPort::parse(addr)?.with_default_port(default))
}

/// The host part of `addr` (without brackets), or all of `addr` when it does not parse.
pub fn host_of(addr: &str) -> &str {
    HostPort::parse(addr).map_or(addr, |hp| hp.host)
}

fn valid_host(host: &str) -> bool {
    !host.chars().any(|c| c.is_whitespace() || c == '[' || c == ']' || c == '/')
}

fn port(addr: &str, p: &str) -> Result<u16, AddrError> {
    // u16::from_str takes a leading '+'; a port is digits only.
    match p.parse::<u16>() {
        Ok(n) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(AddrError::BadPort { addr: addr.to_string(), port: p.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hp(host: &str, port: Option<u16>) -> HostPort<'_> {
        HostPort { host, port }
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(HostPort::parse("host"), Ok(hp("host", None)));
        assert_eq!(HostPort::parse("host:99"), Ok(hp("host", Some(99))));
        assert_eq!(HostPort::parse("1.2.3.4:5"), Ok(hp("1.2.3.4", Some(5))));
        assert_eq!(HostPort::parse("[::1]"), Ok(hp("::1", None)));
        assert_eq!(HostPort::parse("[::1]:99"), Ok(hp("::1", Some(99))));
        assert_eq!(HostPort::parse("::1"), Ok(hp("::1", None)));
        assert_eq!(HostPort::parse("fe80::1:2"), Ok(hp("fe80::1:2", None)));
    }

    #[test]
    fn default_ports_and_brackets() {
        assert_eq!(with_default_port("srv1", 10810).unwrap(), "srv1:10810");
        assert_eq!(with_default_port("srv1:9000", 10810).unwrap(), "srv1:9000");
        assert_eq!(with_default_port("::1", 10810).unwrap(), "[::1]:10810");
        assert_eq!(with_default_port("[::1]", 10810).unwrap(), "[::1]:10810");
        assert_eq!(with_default_port("[::1]:7", 10810).unwrap(), "[::1]:7");
    }

    #[test]
    fn rejected_forms() {
        assert_eq!(HostPort::parse(""), Err(AddrError::Empty));
        assert!(matches!(HostPort::parse("[::1"), Err(AddrError::Unclosed { .. })));
        assert!(matches!(HostPort::parse("host:notaport"), Err(AddrError::BadPort { .. })));
        assert!(matches!(HostPort::parse("host:"), Err(AddrError::BadPort { .. })));
        assert!(matches!(HostPort::parse("host:+5"), Err(AddrError::BadPort { .. })));
        assert!(matches!(HostPort::parse("host:70000"), Err(AddrError::BadPort { .. })));
        assert!(matches!(HostPort::parse(":99"), Err(AddrError::NoHost { .. })));
        assert!(matches!(HostPort::parse("[]:99"), Err(AddrError::NoHost { .. })));
        assert!(matches!(HostPort::parse("[::1]x"), Err(AddrError::Trailing { .. })));
        assert!(matches!(HostPort::parse("[::1]:x"), Err(AddrError::BadPort { .. })));
        assert!(matches!(HostPort::parse("a:b:c"), Err(AddrError::Invalid { .. })));
        assert!(matches!(HostPort::parse("a b"), Err(AddrError::Invalid { .. })));
    }

    #[test]
    fn host_parts() {
        assert_eq!(host_of("127.0.0.1:10809"), "127.0.0.1");
        assert_eq!(host_of("server.example:1"), "server.example");
        assert_eq!(host_of("[::1]:10809"), "::1");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }

    fn host() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z][a-z0-9.-]{0,20}",
            any::<std::net::Ipv4Addr>().prop_map(|a| a.to_string()),
            any::<std::net::Ipv6Addr>().prop_map(|a| a.to_string()),
        ]
    }

    proptest! {
        /// Formatting a host and port and parsing the result gives them back.
        #[test]
        fn format_then_parse_round_trips(h in host(), port in any::<Option<u16>>(), default in any::<u16>()) {
            let given = match port {
                Some(p) => HostPort { host: &h, port: Some(p) }.with_default_port(0),
                None if h.contains(':') => format!("[{h}]"),
                None => h.clone(),
            };
            let parsed = HostPort::parse(&given).unwrap();
            prop_assert_eq!(parsed, HostPort { host: &h, port });
            let full = parsed.with_default_port(default);
            prop_assert_eq!(HostPort::parse(&full).unwrap(), HostPort { host: &h, port: Some(port.unwrap_or(default)) });
            prop_assert_eq!(full.parse::<std::net::SocketAddr>().is_ok(), h.parse::<std::net::IpAddr>().is_ok());
        }

        /// Anything else is parsed or refused, never a panic, and never double brackets.
        #[test]
        fn arbitrary_input_never_panics(s in "[\\[\\]:a-z0-9.]{0,24}") {
            if let Ok(hp) = HostPort::parse(&s) {
                prop_assert!(!hp.with_default_port(1).starts_with("[["));
            }
        }
    }
}
