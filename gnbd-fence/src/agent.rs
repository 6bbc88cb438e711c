//! `fence_gnbd`: the fence agent for gnbd exports. It speaks the standard fence agent
//! interface (key=value lines on stdin, `action=off|on|reboot|status|monitor|list|metadata`)
//! and sends signed orders to every gnbd server named in `servers=` through their network
//! control channel ([`crate::proto`], [`crate::client`]).

use std::path::PathBuf;

use gnbd_net::CertDir;

use crate::client;
use crate::key::{ClusterKey, DEFAULT_KEY};
use crate::proto::{Order, Reply, DEFAULT_CONTROL_PORT};

/// What the agent was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentArgs {
    pub action: String,
    pub node: Option<String>,
    pub servers: Vec<String>,
    pub key: PathBuf,
    /// Certificate directory (ca-cert.pem, client-cert.pem, client-key.pem): send the orders
    /// over TLS, authenticated by this node's certificate, instead of signing them with `key`.
    pub tls: Option<PathBuf>,
}

/// Parses the agent's stdin: `key=value` lines; `#` comments and unknown keys (fenced passes
/// `agent=` and device attributes it does not know about) are ignored.
pub fn parse(text: &str) -> Result<AgentArgs, String> {
    let mut a =
        AgentArgs { action: "reboot".into(), node: None, servers: Vec::new(), key: DEFAULT_KEY.into(), tls: None };
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("line '{line}' is not key=value"));
        };
        let v = v.trim();
        match k.trim() {
            "action" | "option" => a.action = v.to_string(),
            "nodename" | "port" | "plug" => a.node = Some(v.to_string()),
            "servers" | "ipaddr" => a.servers = split_servers(v),
            "cluster_key" | "key" => a.key = v.into(),
            "tls_certificates" | "tls-certificates" => a.tls = Some(v.into()),
            _ => {}
        }
    }
    Ok(a)
}

fn split_servers(v: &str) -> Vec<String> {
    v.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// `HOST` or `HOST:PORT` (IPv6 literals in brackets, or bare) with the default control port
/// added: the address to connect to.
pub fn control_addr(server: &str) -> Result<String, gnbd_net::AddrError> {
    gnbd_net::addr::with_default_port(server, DEFAULT_CONTROL_PORT)
}

/// The agent's XML self-description (`action=metadata`).
pub fn metadata() -> String {
    format!(
        r#"<?xml version="1.0" ?>
<resource-agent name="fence_gnbd" shortdesc="Fence agent for gnbd exports">
<longdesc>fence_gnbd cuts a cluster node off the gnbd servers' exports: each server persists a ban on the node, cuts its connections and answers only once none of the node's I/O can reach an export any more. The node's new connections are refused until it is unfenced (action=on). Orders are signed with the cluster key.</longdesc>
<parameters>
	<parameter name="action" unique="0" required="1">
		<getopt mixed="-o, --action=[action]" />
		<content type="string" default="reboot" />
		<shortdesc lang="en">Fencing action (off and reboot fence, on unfences)</shortdesc>
	</parameter>
	<parameter name="nodename" unique="0" required="0">
		<getopt mixed="-n, --nodename=[node]" />
		<content type="string" />
		<shortdesc lang="en">Cluster node to fence (as in the servers' node tables)</shortdesc>
	</parameter>
	<parameter name="servers" unique="0" required="1">
		<getopt mixed="-s, --servers=[host[:port] ...]" />
		<content type="string" />
		<shortdesc lang="en">gnbd servers, space or comma separated (control port {DEFAULT_CONTROL_PORT} by default)</shortdesc>
	</parameter>
	<parameter name="cluster_key" unique="0" required="0">
		<getopt mixed="-k, --cluster-key=[file]" />
		<content type="string" default="{DEFAULT_KEY}" />
		<shortdesc lang="en">File holding the cluster key shared with the servers</shortdesc>
	</parameter>
	<parameter name="tls_certificates" unique="0" required="0">
		<getopt mixed="--tls-certificates=[dir]" />
		<content type="string" />
		<shortdesc lang="en">Directory with ca-cert.pem, client-cert.pem and client-key.pem: send orders over TLS, authenticated by this node's certificate, instead of signing them with the cluster key</shortdesc>
	</parameter>
</parameters>
<actions>
	<action name="on" />
	<action name="off" />
	<action name="reboot" />
	<action name="status" />
	<action name="monitor" />
	<action name="list" />
	<action name="metadata" />
</actions>
</resource-agent>
"#
    )
}

/// Outcome of one agent run: exit status (0 success; for `status` 0 = on, 2 = off; 1 failure)
/// and what to print on stdout and stderr.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// How the agent authenticates its orders.
enum Auth {
    Key(ClusterKey),
    Tls(std::sync::Arc<rustls::ClientConfig>),
}

/// Runs the agent.
pub fn run(a: &AgentArgs) -> Outcome {
    let mut out = Outcome::default();
    let fail = |out: &mut Outcome, msg: String| {
        out.stderr.push_str(&format!("fence_gnbd: {msg}\n"));
        out.code = 1;
    };
    if a.action == "metadata" {
        out.stdout = metadata();
        return out;
    }
    if a.servers.is_empty() {
        fail(&mut out, "no servers given (servers=HOST[:PORT] ...)".into());
        return out;
    }
    let auth = match &a.tls {
        Some(dir) => CertDir::with_identity(dir).client_config().map(Auth::Tls).map_err(|e| e.to_string()),
        None => ClusterKey::load(&a.key).map(Auth::Key).map_err(|e| e.to_string()),
    };
    let auth = match auth {
        Ok(x) => x,
        Err(e) => {
            fail(&mut out, e);
            return out;
        }
    };
    let node = || a.node.clone().filter(|n| !n.is_empty());
    let req = match a.action.as_str() {
        "off" | "reboot" | "on" | "status" => {
            let Some(node) = node() else {
                fail(&mut out, format!("action={} needs nodename=", a.action));
                return out;
            };
            match a.action.as_str() {
                "on" => Order::Unfence { node },
                "status" => Order::Bans,
                _ => Order::Fence { node },
            }
        }
        "monitor" | "list" => Order::Bans,
        other => {
            fail(&mut out, format!("unknown action '{other}' (off, on, reboot, status, monitor, list, metadata)"));
            return out;
        }
    };
    let mut fenced_anywhere = false;
    let mut banned = std::collections::BTreeSet::new();
    for server in &a.servers {
        let addr = match control_addr(server) {
            Ok(a) => a,
            Err(e) => {
                fail(&mut out, e.to_string());
                continue;
            }
        };
        let reply = match &auth {
            Auth::Key(key) => client::call(&addr, key, &req),
            Auth::Tls(config) => client::call_tls(&addr, config.clone(), &req),
        };
        match reply {
            Ok(Reply::Ok { message }) => out.stderr.push_str(&format!("fence_gnbd: {server}: {message}\n")),
            Ok(Reply::Bans { nodes }) => {
                if let Some(n) = node() {
                    fenced_anywhere |= nodes.contains(&n);
                }
                banned.extend(nodes);
            }
            Ok(Reply::Error { message }) => fail(&mut out, format!("{server}: {message}")),
            Ok(other) => fail(&mut out, format!("{server}: unexpected reply {other:?}")),
            Err(e) => fail(&mut out, format!("{server}: {e}")),
        }
    }
    if out.code == 0 {
        match a.action.as_str() {
            "status" => {
                out.stdout = if fenced_anywhere { "Status: OFF\n".into() } else { "Status: ON\n".into() };
                out.code = if fenced_anywhere { 2 } else { 0 };
            }
            "list" => {
                for n in banned {
                    out.stdout.push_str(&format!("{n},fenced\n"));
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_follows_the_agent_interface() {
        let a = parse("# from fenced\nagent=fence_gnbd\naction=off\nnodename=node2\nservers=srv1 srv2:9000, [::1]:7\nsomething=else\n").unwrap();
        assert_eq!(a.action, "off");
        assert_eq!(a.node.as_deref(), Some("node2"));
        assert_eq!(a.servers, ["srv1", "srv2:9000", "[::1]:7"]);
        assert_eq!(a.key, PathBuf::from(DEFAULT_KEY));
        assert_eq!(a.tls, None);
        assert_eq!(parse("tls_certificates=/etc/gnbd/node1\n").unwrap().tls, Some(PathBuf::from("/etc/gnbd/node1")));
        assert!(parse("garbage\n").is_err());
        let b = parse("option=on\nport=n1\nipaddr=s\n").unwrap();
        assert_eq!((b.action.as_str(), b.node.as_deref()), ("on", Some("n1")));
    }

    #[test]
    fn control_addresses_get_the_default_port() {
        assert_eq!(control_addr("srv1").unwrap(), "srv1:10810");
        assert_eq!(control_addr("srv1:9000").unwrap(), "srv1:9000");
        assert_eq!(control_addr("::1").unwrap(), "[::1]:10810");
        assert_eq!(control_addr("[::1]").unwrap(), "[::1]:10810");
        assert_eq!(control_addr("[::1]:7").unwrap(), "[::1]:7");
        assert!(control_addr("srv1:notaport").is_err());
    }

    #[test]
    fn metadata_is_xml_naming_the_agent() {
        assert!(metadata().contains(r#"<resource-agent name="fence_gnbd""#));
        let out = run(&AgentArgs {
            action: "metadata".into(),
            node: None,
            servers: vec![],
            key: "/nonexistent".into(),
            tls: None,
        });
        assert_eq!(out.code, 0);
    }
}
