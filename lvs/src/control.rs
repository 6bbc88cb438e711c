//! lvsd's control protocol on its Unix socket (`/run/lvsd/lvsd.sock`): the suite's JSON-lines
//! protocol (`daemon::control`), one [`Request`] enum tagged `op`, its reply values, the one
//! mapping of command failures onto the protocol's error kinds, and the client call lvsadm
//! and pulse make.
//!
//! ```text
//! → {"op":"ipvsadm","args":["-a","-t","10.0.0.1:80","-r","192.168.1.2","-w","3"],"input":""}
//! ← {"ok":{"output":"","warnings":[]}}
//! → {"op":"ipvsadm","args":["-d","-t","10.0.0.9:80","-r","192.168.1.2"]}
//! ← {"error":{"kind":"not_found","message":"No such service: TCP  10.0.0.9:80"}}
//! → {"op":"status"}
//! ← {"ok":{"services":1,"real_servers":1,"connections":0,"listening":["TCP 10.0.0.1:80"],...}}
//! → {"op":"reload"}
//! ← {"ok":{"changes":["added real server 192.168.1.3:80 to TCP  10.0.0.1:80"],"warnings":[]}}
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use daemon::control::{CallError, ControlError};
use serde::{Deserialize, Serialize};

use crate::admin::{AdminError, AdminErrorKind};

/// Default control socket.
pub const DEFAULT_SOCKET: &str = "/run/lvsd/lvsd.sock";

/// How long a client waits for lvsd's reply.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One request to lvsd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// One command of ipvsadm's language (lvsadm's interface): its argument list, without
    /// the program name, and for `-R` the rules (what lvsadm read on standard input).
    Ipvsadm {
        /// The arguments (`["-L", "-n"]`).
        args: Vec<String>,
        /// Standard input of the command (`-R` only).
        #[serde(default)]
        input: String,
    },
    /// What the director runs: table size, listeners, its files. (Written `Status {}` so
    /// that unknown fields are refused here too, as serde only checks struct variants.)
    Status {},
    /// Reread `--config` and `--rules` and apply the difference to the running table (what
    /// SIGHUP does).
    Reload {},
}

/// The reply to [`Request::Ipvsadm`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpvsadmReply {
    /// What ipvsadm prints on standard output (listings, `-S` rules; empty for changes).
    pub output: String,
    /// Parts of a change that were applied to the table but not (yet) to the data plane,
    /// such as a virtual address that cannot be bound.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// The reply to [`Request::Status`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// lvsd's process id.
    pub pid: u32,
    /// The lvs.cf it loads (`--config`).
    pub config: Option<PathBuf>,
    /// The ipvsadm-save rules it loads (`--rules`).
    pub rules: Option<PathBuf>,
    /// Virtual services in the table.
    pub services: usize,
    /// Real servers, all services together.
    pub real_servers: usize,
    /// Connection entries (persistence templates not counted).
    pub connections: usize,
    /// The addresses the data plane listens on (`TCP 10.0.0.1:80`).
    pub listening: Vec<String>,
    /// Whether the nftables fast path is on (`--nft`).
    pub nft: bool,
    /// Health checks running.
    pub health_checks: usize,
    /// SIGHUP or `reload` requests handled so far.
    pub reloads: u64,
}

/// The reply to [`Request::Reload`] (also what lvsd logs after a SIGHUP).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReply {
    /// The changes applied to the running table, one line each (empty: nothing changed).
    pub changes: Vec<String>,
    /// Parts that could not be applied; the rest of the table runs on.
    pub warnings: Vec<String>,
}

/// The control protocol's error for a failed command (the one place this mapping lives).
pub fn admin_error(e: &AdminError) -> ControlError {
    let message = e.message.clone();
    match e.kind {
        AdminErrorKind::Usage => ControlError::bad_request(message),
        AdminErrorKind::NotFound => ControlError::not_found(message),
        AdminErrorKind::Exists => ControlError::exists(message),
        AdminErrorKind::Failed => ControlError::failed(message),
    }
}

/// Sends one request to the lvsd listening on `socket` and returns its reply value.
pub fn call<T: serde::de::DeserializeOwned>(socket: &Path, req: &Request) -> Result<T, CallError> {
    daemon::control::call("lvsd", socket, req, Some(CALL_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shapes() {
        let r = Request::Ipvsadm { args: vec!["-L".into(), "-n".into()], input: String::new() };
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"op":"ipvsadm","args":["-L","-n"],"input":""}"#);
        let r: Request = serde_json::from_str(r#"{"op":"ipvsadm","args":["-C"]}"#).unwrap();
        assert_eq!(r, Request::Ipvsadm { args: vec!["-C".into()], input: String::new() });
        assert_eq!(serde_json::from_str::<Request>(r#"{"op":"reload"}"#).unwrap(), Request::Reload {});
        assert_eq!(serde_json::to_string(&Request::Status {}).unwrap(), r#"{"op":"status"}"#);
        assert!(serde_json::from_str::<Request>(r#"{"op":"status","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"argv":["-L"],"stdin":""}"#).is_err());
    }

    #[test]
    fn command_failures_map_to_kinds() {
        use daemon::control::ErrorKind;
        let mut d = crate::Director::new();
        let mut kind = |args: &str| {
            let argv: Vec<String> = args.split_whitespace().map(str::to_string).collect();
            let e = crate::admin::parse_args(&argv)
                .map_err(AdminError::from)
                .and_then(|c| crate::admin::run(&mut d, c, "", 0))
                .unwrap_err();
            admin_error(&e).kind
        };
        assert_eq!(kind("-A -t 10.0.0.1"), ErrorKind::BadRequest);
        assert_eq!(kind("-d -t 10.0.0.1:80 -r 1.2.3.4"), ErrorKind::NotFound);
        let mut d = crate::Director::new();
        let a = crate::admin::parse_args(&["-A".into(), "-t".into(), "10.0.0.1:80".into()]).unwrap();
        crate::admin::run(&mut d, a.clone(), "", 0).unwrap();
        let e = crate::admin::run(&mut d, a, "", 0).unwrap_err();
        assert_eq!(admin_error(&e).kind, ErrorKind::Exists);
        assert_eq!(e.code(), 1);
        let e =
            crate::admin::run(&mut d, crate::admin::Command::Restore, "-a -t 10.0.0.9:80 -r 1.1.1.1\n", 0).unwrap_err();
        assert_eq!((e.kind, e.message.starts_with("line 1: ")), (AdminErrorKind::NotFound, true));
    }
}
