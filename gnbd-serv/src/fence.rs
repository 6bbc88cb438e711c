//! Node identity and fencing: which cluster node a connection belongs to (by its address,
//! from the node table), and the persisted set of fenced (banned) nodes.
//!
//! A fence order is acknowledged only once (1) the ban is on stable storage, (2) every
//! connection of the node has been cut and (3) each of them has finished every operation it
//! had in the kernel: after the acknowledgement not one more byte from that node reaches an
//! export. New handshakes from the node are refused with `NBD_REP_ERR_POLICY` until it is
//! unfenced; the ban survives restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::state::{read_json, write_atomically, StateError};

/// File in the state directory holding the fenced nodes.
pub const BANS_FILE: &str = "bans.json";

/// Maps client addresses to cluster node names (the addresses cluster.conf gives the nodes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeTable {
    by_addr: BTreeMap<IpAddr, String>,
}

#[derive(Debug, Error)]
pub enum NodeTableError {
    #[error("cannot read node table {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {why}")]
    Bad { path: PathBuf, line: usize, why: String },
}

impl NodeTable {
    /// Parses lines `NODE ADDRESS [ADDRESS...]`; `#` starts a comment.
    pub fn parse(text: &str, path: &Path) -> Result<NodeTable, NodeTableError> {
        let mut by_addr = BTreeMap::new();
        let mut names = BTreeSet::new();
        for (i, raw) in text.lines().enumerate() {
            let bad = |why: String| NodeTableError::Bad { path: path.to_path_buf(), line: i + 1, why };
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let name = words.next().expect("line is not empty");
            valid_node_name(name).map_err(|w| bad(w.into()))?;
            if !names.insert(name.to_string()) {
                return Err(bad(format!("node '{name}' is listed twice")));
            }
            let mut any = false;
            for w in words {
                let addr: IpAddr = w.parse().map_err(|_| bad(format!("'{w}' is not an IP address")))?;
                if let Some(other) = by_addr.insert(addr, name.to_string()) {
                    return Err(bad(format!("address {addr} belongs to both '{other}' and '{name}'")));
                }
                any = true;
            }
            if !any {
                return Err(bad(format!("node '{name}' has no address")));
            }
        }
        Ok(NodeTable { by_addr })
    }

    pub fn load(path: &Path) -> Result<NodeTable, NodeTableError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| NodeTableError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// The node a client address belongs to (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn node_of(&self, addr: IpAddr) -> Option<&str> {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        self.by_addr.get(&addr).map(String::as_str)
    }

    /// Whether `name` is a node of the table.
    pub fn has_node(&self, name: &str) -> bool {
        self.by_addr.values().any(|n| n == name)
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    /// How many nodes the table names.
    pub fn len(&self) -> usize {
        self.by_addr.values().collect::<std::collections::BTreeSet<_>>().len()
    }
}

/// Node names: what cluster.conf allows in practice (host names).
pub fn valid_node_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 255 {
        return Err("node names are 1 to 255 characters long");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err("node names use letters, digits, '-', '_' and '.' only");
    }
    Ok(())
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BansFile {
    /// Format version of this file.
    version: u32,
    /// Fenced node names.
    nodes: BTreeSet<String>,
}

/// Loads the fenced nodes of a state directory (none when the file does not exist yet).
pub fn load_bans(dir: &Path) -> Result<BTreeSet<String>, StateError> {
    Ok(read_json::<BansFile>(dir, BANS_FILE, |f| f.version)?.map_or_else(BTreeSet::new, |f| f.nodes))
}

/// Replaces the bans file atomically and durably (fsync of file and directory).
pub fn save_bans(dir: &Path, nodes: &BTreeSet<String>) -> Result<(), StateError> {
    let text = serde_json::to_string_pretty(&BansFile { version: 1, nodes: nodes.clone() })
        .expect("ban lists always serialise");
    write_atomically(dir, BANS_FILE, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_table_parses_and_rejects_with_line_numbers() {
        let p = Path::new("nodes");
        let t = NodeTable::parse("# cluster\nnode1 198.18.0.1 127.0.0.2\n\nnode2 198.18.0.2 # second\n", p).unwrap();
        assert_eq!(t.node_of("127.0.0.2".parse().unwrap()), Some("node1"));
        assert_eq!(t.node_of("::ffff:198.18.0.2".parse().unwrap()), Some("node2"));
        assert_eq!(t.node_of("127.0.0.9".parse().unwrap()), None);
        for (text, want) in [
            ("n1 1.2.3.4\nn1 1.2.3.5\n", ":2: node 'n1' is listed twice"),
            ("n1 1.2.3.4\nn2 1.2.3.4\n", ":2: address 1.2.3.4 belongs to both"),
            ("n1 banana\n", ":1: 'banana' is not an IP address"),
            ("n1\n", ":1: node 'n1' has no address"),
            ("n/1 1.2.3.4\n", ":1: node names use"),
        ] {
            let e = NodeTable::parse(text, p).unwrap_err().to_string();
            assert!(e.contains(want), "{e} does not contain {want}");
        }
    }

    #[test]
    fn bans_round_trip() {
        let dir = std::env::temp_dir().join(format!("gnbd-bans-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(load_bans(&dir).unwrap().is_empty());
        let set: BTreeSet<String> = ["node1".to_string(), "node3".to_string()].into();
        save_bans(&dir, &set).unwrap();
        assert_eq!(load_bans(&dir).unwrap(), set);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
