//! Exports: what is served (the persisted [`ExportSpec`]), the open backing files, the
//! connected clients, and the [`Registry`] that the handshake, the control socket and the
//! data path share.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use nbd_proto::consts::*;
use nbd_proto::{ExportCatalog, ExportInfo, Refusal, ServerEntry};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::warn;

use crate::fence::NodeTable;
use crate::sys;

/// Largest READ or WRITE payload accepted, and the maximum block size advertised.
pub const MAX_PAYLOAD: u32 = 64 * 1024 * 1024;
/// Preferred block size advertised to clients.
pub const PREFERRED_BLOCK: u32 = 4096;
/// Requests aligned to this go straight to the O_DIRECT descriptor; others through the page cache.
pub const DIRECT_ALIGN: u64 = 4096;

/// An export as the operator defined it; this is what the state file keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSpec {
    /// NBD export name (`nbd://host/NAME`).
    pub name: String,
    /// Backing regular file or block device (absolute path).
    pub path: PathBuf,
    /// Serve through the page cache instead of O_DIRECT.
    #[serde(default)]
    pub cached: bool,
    /// Refuse writes.
    #[serde(default)]
    pub readonly: bool,
    /// Free text shown by `nbdinfo --list` and friends.
    #[serde(default)]
    pub description: String,
    /// Served only over TLS (`NBD_REP_ERR_TLS_REQD` for plain-text clients): with
    /// `gnbd_serv --tls selective`, some exports need TLS and others do not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
}

/// Why an export cannot be created.
#[derive(Debug, Error)]
pub enum ExportError {
    #[error("export name '{name}' is invalid: {why}")]
    BadName { name: String, why: &'static str },
    #[error("an export named '{name}' already exists")]
    NameTaken { name: String },
    #[error("export '{name}' does not exist")]
    UnknownExport { name: String },
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{path} is neither a regular file nor a block device")]
    NotABlockStore { path: PathBuf },
    #[error("export '{name}' has {clients} connected client(s); disconnect them first or force the removal (-O)")]
    InUse { name: String, clients: usize },
}

impl ExportSpec {
    pub fn validate(&self) -> Result<(), ExportError> {
        let bad = |why| Err(ExportError::BadName { name: self.name.clone(), why });
        if self.name.is_empty() {
            return bad("it is empty (the empty name is how clients ask for the default export)");
        }
        if self.name.len() > 256 {
            return bad("it is longer than 256 bytes");
        }
        if self.name.chars().any(|c| c.is_control()) {
            return bad("it contains control characters");
        }
        if self.description.len() > NBD_MAX_STRING {
            return bad("its description is longer than 4096 bytes");
        }
        Ok(())
    }
}

/// One connected client, as listed by `gnbd_export -l`.
#[derive(Debug, Clone)]
pub struct ClientEntry {
    pub id: u64,
    pub peer: String,
    /// Cluster node of the client (by address, or by certificate over TLS), if any.
    pub node: Option<String>,
    /// The connection runs over TLS.
    pub tls: bool,
    /// Socket descriptor, owned by a worker thread; used only to shut the connection down.
    fd: RawFd,
    /// Set when the node is fenced: the data path starts no more I/O for this connection.
    fenced: Arc<AtomicBool>,
}

/// An open export.
#[derive(Debug)]
pub struct Export {
    pub spec: ExportSpec,
    pub size: u64,
    /// Descriptor for aligned I/O: O_DIRECT for uncached exports when the filesystem allows it.
    pub file: File,
    /// Page-cache descriptor for unaligned requests on an O_DIRECT export.
    pub buffered: Option<File>,
    pub block_device: bool,
    clients: Mutex<Vec<ClientEntry>>,
    next_client: AtomicU64,
}

impl Export {
    /// Opens the backing store.
    pub fn open(spec: ExportSpec) -> Result<Export, ExportError> {
        spec.validate()?;
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(!spec.readonly);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(&spec.path).map_err(|source| ExportError::Open { path: spec.path.clone(), source })
        };
        let mut file = open(false)?;
        let ft = file.metadata().map_err(|source| ExportError::Open { path: spec.path.clone(), source })?.file_type();
        let block_device = ft.is_block_device();
        if !ft.is_file() && !block_device {
            return Err(ExportError::NotABlockStore { path: spec.path.clone() });
        }
        let size =
            file.seek(SeekFrom::End(0)).map_err(|source| ExportError::Open { path: spec.path.clone(), source })?;
        let mut buffered = None;
        if !spec.cached {
            match open(true) {
                Ok(direct) => buffered = Some(std::mem::replace(&mut file, direct)),
                Err(ExportError::Open { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                    warn!(
                        export = %spec.name,
                        path = %spec.path.display(),
                        "the filesystem refuses O_DIRECT (tmpfs?); serving this uncached export through the page cache"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Export {
            spec,
            size,
            file,
            buffered,
            block_device,
            clients: Mutex::default(),
            next_client: AtomicU64::new(1),
        })
    }

    /// Whether aligned requests bypass the page cache.
    pub fn direct_io(&self) -> bool {
        self.buffered.is_some()
    }

    /// Transmission flags (without `NBD_FLAG_SEND_DF`, which depends on the session).
    pub fn transmission_flags(&self) -> u16 {
        // Every connection shares one inode, so a flush on any connection covers writes
        // completed on all of them: multi-conn is safe.
        let mut f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_CAN_MULTI_CONN | NBD_FLAG_SEND_CACHE;
        if self.spec.readonly {
            f |= NBD_FLAG_READ_ONLY;
        } else {
            f |= NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
        }
        f
    }

    pub fn info(&self) -> ExportInfo {
        ExportInfo {
            name: self.spec.name.clone(),
            description: self.spec.description.clone(),
            size: self.size,
            flags: self.transmission_flags(),
            min_block: 1,
            preferred_block: PREFERRED_BLOCK,
            max_block: MAX_PAYLOAD,
        }
    }

    /// Forgets a connection. Must be called before its socket is closed.
    pub fn detach_client(&self, id: u64) {
        self.clients.lock().expect("client list lock").retain(|c| c.id != id);
    }

    pub fn clients(&self) -> Vec<ClientEntry> {
        self.clients.lock().expect("client list lock").clone()
    }

    /// Cuts every connection to this export (their in-flight requests still complete).
    pub fn disconnect_all(&self) -> usize {
        let clients = self.clients.lock().expect("client list lock");
        for c in clients.iter() {
            // The lock keeps the worker from closing the descriptor under us.
            sys::shutdown(c.fd, libc::SHUT_RDWR);
        }
        clients.len()
    }
}

/// An export in the state file that could not be opened at start-up.
#[derive(Debug, Clone)]
pub struct Offline {
    pub spec: ExportSpec,
    pub error: String,
}

#[derive(Debug, Default)]
struct Inner {
    exports: BTreeMap<String, Arc<Export>>,
    offline: BTreeMap<String, Offline>,
}

/// The set of exports, shared by every thread of the server.
#[derive(Debug, Default)]
pub struct Registry {
    inner: RwLock<Inner>,
    /// Export served to clients that ask for the empty name.
    default_export: Option<String>,
    shutting_down: AtomicBool,
    /// Client addresses of the cluster's nodes (replaced on SIGHUP).
    nodes: RwLock<NodeTable>,
    /// Refuse clients whose address is not in the node table (or whose certificate names
    /// no node of it).
    cluster_mode: bool,
    /// Fenced nodes. Held for reading while a connection is attached, for writing while a
    /// fence order marks connections: no connection slips between the two.
    bans: RwLock<BTreeSet<String>>,
}

/// A connection handed to the data path: its id in the export's client list and its fence
/// flag.
#[derive(Debug)]
pub struct Attached {
    pub client_id: u64,
    pub fenced: Arc<AtomicBool>,
}

impl Registry {
    pub fn new(default_export: Option<String>, nodes: NodeTable, cluster_mode: bool, bans: BTreeSet<String>) -> Self {
        Self { default_export, nodes: RwLock::new(nodes), cluster_mode, bans: RwLock::new(bans), ..Default::default() }
    }

    /// Replaces the node table (the server reread `--nodes`). Connections already attached
    /// keep the node they were attributed to.
    pub fn set_nodes(&self, nodes: NodeTable) {
        *self.nodes.write().expect("nodes lock") = nodes;
    }

    fn nodes(&self) -> std::sync::RwLockReadGuard<'_, NodeTable> {
        self.nodes.read().expect("nodes lock")
    }

    /// The node a client address belongs to.
    pub fn node_of(&self, addr: Option<IpAddr>) -> Option<String> {
        addr.and_then(|a| self.nodes().node_of(a).map(str::to_string))
    }

    /// The node of a client that presented a verified certificate naming `cert_node`, coming
    /// from the node `addr_node` (by address, if its address is in the node table). A
    /// certificate is the stronger proof, but it must not contradict the address: a node
    /// cannot speak for another from that other node's address, nor with a name the cluster
    /// does not know (cluster mode).
    pub fn node_of_certificate(&self, cert_node: &str, addr_node: Option<&str>) -> Result<String, Refusal> {
        if let Err(why) = crate::fence::valid_node_name(cert_node) {
            return Err(Refusal::Policy(format!("the client certificate names '{cert_node}', not a node name: {why}")));
        }
        if let Some(a) = addr_node.filter(|a| *a != cert_node) {
            return Err(Refusal::Policy(format!(
                "the client certificate names node '{cert_node}' but the connection comes from node '{a}'"
            )));
        }
        if self.cluster_mode && !self.nodes().has_node(cert_node) {
            return Err(Refusal::Policy(format!(
                "the client certificate names '{cert_node}', which is not a node of this cluster"
            )));
        }
        Ok(cert_node.to_string())
    }

    /// Whether the holder of a verified certificate naming `node` may give fence orders over
    /// the network: a node of the cluster (of the node table, when there is one) that is not
    /// fenced itself (a fenced node must not unfence itself).
    pub fn order_issuer(&self, node: &str) -> Result<(), String> {
        crate::fence::valid_node_name(node).map_err(|why| format!("'{node}' is not a node name: {why}"))?;
        let unknown = {
            let nodes = self.nodes();
            !nodes.is_empty() && !nodes.has_node(node)
        };
        if unknown {
            return Err(format!("'{node}' is not a node of this cluster"));
        }
        if self.bans.read().expect("bans lock").contains(node) {
            return Err(format!("node '{node}' is fenced and cannot give orders"));
        }
        Ok(())
    }

    /// Whether a client may open exports at all (cluster membership and fencing).
    pub fn admit(&self, peer: &str, node: Option<&str>) -> Result<(), Refusal> {
        match node {
            Some(n) => fenced(&self.bans.read().expect("bans lock"), n),
            None if self.cluster_mode => {
                Err(Refusal::Policy(format!("client {peer} is not a node of this cluster (see the node table)")))
            }
            _ => Ok(()),
        }
    }

    /// Records a connection that finished its handshake, unless its node was fenced meanwhile.
    pub fn attach(
        &self,
        export: &Export,
        peer: String,
        node: Option<String>,
        tls: bool,
        fd: RawFd,
    ) -> Result<Attached, Refusal> {
        let bans = self.bans.read().expect("bans lock");
        if let Some(n) = &node {
            fenced(&bans, n)?;
        }
        let id = export.next_client.fetch_add(1, Ordering::Relaxed);
        let fenced = Arc::new(AtomicBool::new(false));
        export.clients.lock().expect("client list lock").push(ClientEntry {
            id,
            peer,
            node,
            tls,
            fd,
            fenced: fenced.clone(),
        });
        Ok(Attached { client_id: id, fenced })
    }

    /// Fences `node`: the ban is persisted by `persist` first (nothing changes if that fails),
    /// then every connection of the node stops issuing I/O and is cut. Returns how many were
    /// cut; they are gone once [`Registry::node_connections`] says 0.
    pub fn fence<E>(&self, node: &str, persist: impl FnOnce(&BTreeSet<String>) -> Result<(), E>) -> Result<usize, E> {
        let mut bans = self.bans.write().expect("bans lock");
        let mut next = bans.clone();
        next.insert(node.to_string());
        persist(&next)?;
        *bans = next;
        let mut cut = 0;
        for e in self.exports() {
            for c in e.clients.lock().expect("client list lock").iter() {
                if c.node.as_deref() == Some(node) {
                    c.fenced.store(true, Ordering::SeqCst);
                    sys::shutdown(c.fd, libc::SHUT_RDWR);
                    cut += 1;
                }
            }
        }
        Ok(cut)
    }

    /// Lifts the ban on `node` (persisted by `persist` before it takes effect).
    pub fn unfence<E>(&self, node: &str, persist: impl FnOnce(&BTreeSet<String>) -> Result<(), E>) -> Result<bool, E> {
        let mut bans = self.bans.write().expect("bans lock");
        if !bans.contains(node) {
            return Ok(false);
        }
        let mut next = bans.clone();
        next.remove(node);
        persist(&next)?;
        *bans = next;
        Ok(true)
    }

    pub fn bans(&self) -> Vec<String> {
        self.bans.read().expect("bans lock").iter().cloned().collect()
    }

    /// Connections of `node` still open (a cut connection stays until its I/O has finished).
    pub fn node_connections(&self, node: &str) -> usize {
        self.exports()
            .iter()
            .map(|e| {
                e.clients.lock().expect("client list lock").iter().filter(|c| c.node.as_deref() == Some(node)).count()
            })
            .sum()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Export>> {
        self.inner.read().expect("registry lock").exports.get(name).cloned()
    }

    /// Resolves a client's export name, the empty name included.
    pub fn resolve(&self, name: &str) -> Option<Arc<Export>> {
        let inner = self.inner.read().expect("registry lock");
        if !name.is_empty() {
            return inner.exports.get(name).cloned();
        }
        match &self.default_export {
            Some(d) => inner.exports.get(d).cloned(),
            // With a single export, that one is the default.
            None if inner.exports.len() == 1 => inner.exports.values().next().cloned(),
            None => None,
        }
    }

    /// Adds an opened export; fails when the name is taken.
    pub fn insert(&self, export: Export) -> Result<Arc<Export>, ExportError> {
        let mut inner = self.inner.write().expect("registry lock");
        let name = export.spec.name.clone();
        if inner.exports.contains_key(&name) || inner.offline.contains_key(&name) {
            return Err(ExportError::NameTaken { name });
        }
        let e = Arc::new(export);
        inner.exports.insert(name, e.clone());
        Ok(e)
    }

    pub fn insert_offline(&self, off: Offline) {
        self.inner.write().expect("registry lock").offline.insert(off.spec.name.clone(), off);
    }

    /// Removes an export. Refused while clients are connected unless `force`, which cuts them.
    pub fn remove(&self, name: &str, force: bool) -> Result<(), ExportError> {
        let mut inner = self.inner.write().expect("registry lock");
        if inner.offline.remove(name).is_some() {
            return Ok(());
        }
        let Some(e) = inner.exports.get(name).cloned() else {
            return Err(ExportError::UnknownExport { name: name.into() });
        };
        let clients = e.clients().len();
        if clients > 0 && !force {
            return Err(ExportError::InUse { name: name.into(), clients });
        }
        inner.exports.remove(name);
        drop(inner);
        e.disconnect_all();
        Ok(())
    }

    pub fn exports(&self) -> Vec<Arc<Export>> {
        self.inner.read().expect("registry lock").exports.values().cloned().collect()
    }

    pub fn offline(&self) -> Vec<Offline> {
        self.inner.read().expect("registry lock").offline.values().cloned().collect()
    }

    /// Every spec, online or not, in name order: what the state file must hold.
    pub fn specs(&self) -> Vec<ExportSpec> {
        let inner = self.inner.read().expect("registry lock");
        let mut v: Vec<ExportSpec> = inner.exports.values().map(|e| e.spec.clone()).collect();
        v.extend(inner.offline.values().map(|o| o.spec.clone()));
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }
}

/// Refuses a node that is in the ban set.
fn fenced(bans: &BTreeSet<String>, node: &str) -> Result<(), Refusal> {
    if bans.contains(node) {
        return Err(Refusal::Policy(format!("node '{node}' is fenced from this server; it must be unfenced first")));
    }
    Ok(())
}

/// The registry as one client sees it during its handshake: who it is decides what it gets.
#[derive(Debug)]
pub struct Session<'a> {
    pub registry: &'a Registry,
    pub peer: &'a str,
    /// The client's node: by address, or after STARTTLS by certificate.
    pub node: Option<String>,
    /// Set when the client's identity was refused (e.g. a certificate that contradicts its
    /// address): every export is refused with this policy message.
    pub refused: Option<String>,
}

impl Session<'_> {
    fn admit(&self) -> Result<(), Refusal> {
        if let Some(why) = &self.refused {
            return Err(Refusal::Policy(why.clone()));
        }
        self.registry.admit(self.peer, self.node.as_deref())
    }
}

impl ExportCatalog for Session<'_> {
    fn lookup(&self, name: &str, tls: bool) -> Result<ExportInfo, Refusal> {
        if self.registry.shutting_down.load(Ordering::SeqCst) {
            return Err(Refusal::Shutdown);
        }
        self.admit()?;
        let export = self.registry.resolve(name).ok_or(Refusal::Unknown)?;
        if export.spec.tls && !tls {
            return Err(Refusal::TlsRequired);
        }
        Ok(export.info())
    }

    fn list(&self, _tls: bool) -> Vec<ServerEntry> {
        if self.admit().is_err() {
            return Vec::new();
        }
        self.registry
            .exports()
            .iter()
            .map(|e| ServerEntry { name: e.spec.name.clone(), description: e.spec.description.clone() })
            .collect()
    }
}

/// Makes `path` absolute without requiring it to exist.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(cluster: bool, bans: &[&str]) -> Registry {
        let nodes = NodeTable::parse("node1 127.0.0.2\nnode2 127.0.0.3\n", Path::new("nodes")).expect("node table");
        Registry::new(None, nodes, cluster, bans.iter().map(|b| b.to_string()).collect())
    }

    fn policy(r: Result<String, Refusal>) -> String {
        match r {
            Err(Refusal::Policy(why)) => why,
            other => panic!("expected a policy refusal, got {other:?}"),
        }
    }

    #[test]
    fn certificate_identity_must_agree_with_address_and_cluster() {
        let r = registry(true, &[]);
        assert_eq!(r.node_of_certificate("node1", Some("node1")), Ok("node1".into()));
        // An address outside the table: the certificate alone names the node.
        assert_eq!(r.node_of_certificate("node2", None), Ok("node2".into()));
        assert!(policy(r.node_of_certificate("node2", Some("node1"))).contains("comes from node 'node1'"));
        assert!(policy(r.node_of_certificate("stranger", None)).contains("not a node of this cluster"));
        assert!(policy(r.node_of_certificate("", None)).contains("not a node name"));
        assert!(policy(r.node_of_certificate("a/b", None)).contains("not a node name"));
        // Outside cluster mode any well-formed name is a node (fencing acts on it).
        let open = registry(false, &[]);
        assert_eq!(open.node_of_certificate("stranger", None), Ok("stranger".into()));
        assert!(policy(open.node_of_certificate("stranger", Some("node1"))).contains("comes from node 'node1'"));
    }

    #[test]
    fn only_unfenced_members_give_orders() {
        let r = registry(true, &["node1"]);
        assert_eq!(r.order_issuer("node2"), Ok(()));
        assert!(r.order_issuer("node1").unwrap_err().contains("fenced"));
        assert!(r.order_issuer("stranger").unwrap_err().contains("not a node of this cluster"));
        assert!(r.order_issuer("").is_err());
        // Without a node table, any certified node that is not fenced.
        let bare = Registry::new(None, NodeTable::default(), false, ["node1".to_string()].into());
        assert_eq!(bare.order_issuer("anything"), Ok(()));
        assert!(bare.order_issuer("node1").is_err());
    }
}
