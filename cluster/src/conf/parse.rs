//! The cluster.conf parser and validator: [`parse`](parse()) and [`load`] turn XML into a
//! [`ClusterConf`], checking every element, attribute and cross-section reference and
//! collecting every problem as a [`ConfError`] with its element and line. The checks across
//! sections, run once every section is read, are in `parse/check.rs`.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    ClusterConf, ClusterNode, Cman, ConfError, ConfErrors, DeviceRef, DomainNode, FailoverDomain, FenceDaemon,
    FenceDevice, FenceMethod, Recovery, Resource, ResourceDef, ResourceKind, Rm, Service, ServiceResource, Totem,
    MAX_CONF_BYTES, MAX_NODEID,
};

mod check;

/// Parses and validates cluster.conf text, returning every problem found.
pub fn parse(text: &str) -> Result<ClusterConf, ConfErrors> {
    if text.len() > MAX_CONF_BYTES {
        return Err(ConfErrors(vec![ConfError {
            element: "document".into(),
            line: None,
            attr: None,
            problem: format!("{} bytes is larger than the {MAX_CONF_BYTES} bytes accepted", text.len()),
        }]));
    }
    let opts = roxmltree::ParsingOptions { allow_dtd: false, nodes_limit: 1 << 20 };
    let doc = match roxmltree::Document::parse_with_options(text, opts) {
        Ok(d) => d,
        Err(e) => {
            let pos = e.pos();
            return Err(ConfErrors(vec![ConfError {
                element: "document".into(),
                line: Some(pos.row),
                attr: None,
                problem: format!("not well-formed XML: {e}"),
            }]));
        }
    };
    let mut p = Parser { doc: &doc, errors: Vec::new() };
    let conf = p.cluster(doc.root_element());
    if p.errors.is_empty() {
        Ok(conf.expect("a conf is built whenever no error was recorded"))
    } else {
        // In file order; cross-section checks may find the same problem twice.
        let mut errors = p.errors;
        errors.sort_by_key(|e| e.line);
        errors.dedup();
        Err(ConfErrors(errors))
    }
}

/// Reads and parses a cluster.conf file.
pub fn load(path: &std::path::Path) -> Result<ClusterConf, ConfErrors> {
    let doc =
        |problem: String| ConfErrors(vec![ConfError { element: "document".into(), line: None, attr: None, problem }]);
    let meta = std::fs::metadata(path).map_err(|e| doc(format!("cannot read {}: {e}", path.display())))?;
    if meta.len() > MAX_CONF_BYTES as u64 {
        return Err(doc(format!("{} is larger than the {MAX_CONF_BYTES} bytes accepted", path.display())));
    }
    let text = std::fs::read_to_string(path).map_err(|e| doc(format!("cannot read {}: {e}", path.display())))?;
    parse(&text)
}

type Node<'a, 'i> = roxmltree::Node<'a, 'i>;

struct Parser<'a, 'i> {
    doc: &'a roxmltree::Document<'i>,
    errors: Vec<ConfError>,
}

/// Describes an element for messages: `<clusternode name="node2">`.
fn describe(n: Node<'_, '_>) -> String {
    let tag = n.tag_name().name();
    for key in ["name", "address", "ref"] {
        if let Some(v) = n.attribute(key) {
            let v: String = v.chars().take(64).collect();
            return format!("<{tag} {key}=\"{v}\">");
        }
    }
    format!("<{tag}>")
}

fn is_option_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= 64 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl<'a, 'i> Parser<'a, 'i> {
    fn err(&mut self, n: Node<'_, '_>, attr: Option<&str>, problem: impl Into<String>) {
        let line = self.doc.text_pos_at(n.range().start).row;
        self.errors.push(ConfError {
            element: describe(n),
            line: Some(line),
            attr: attr.map(str::to_owned),
            problem: problem.into(),
        });
    }

    /// Reports attributes not in `allowed` (and namespaced ones).
    fn check_attrs(&mut self, n: Node<'_, '_>, allowed: &[&str]) {
        for a in n.attributes() {
            if a.namespace().is_some() || !allowed.contains(&a.name()) {
                let msg = if allowed.is_empty() {
                    format!("unknown attribute; <{}> takes no attributes", n.tag_name().name())
                } else {
                    format!("unknown attribute; <{}> takes {}", n.tag_name().name(), allowed.join(", "))
                };
                self.err(n, Some(a.name()), msg);
            }
        }
    }

    /// Element children, reporting text content (other than whitespace) as an error.
    fn children(&mut self, n: Node<'a, 'i>) -> Vec<Node<'a, 'i>> {
        let mut out = Vec::new();
        for c in n.children() {
            if c.is_element() {
                if c.tag_name().namespace().is_some() {
                    self.err(c, None, "namespaced elements are not part of cluster.conf");
                } else {
                    out.push(c);
                }
            } else if c.is_text() && !c.text().unwrap_or("").trim().is_empty() {
                self.err(n, None, "unexpected text content; values go in attributes");
            }
        }
        out
    }

    fn unknown_child(&mut self, parent: Node<'_, '_>, c: Node<'_, '_>, allowed: &[&str]) {
        let msg = if allowed.is_empty() {
            format!("unknown element inside <{}>, which takes no child elements", parent.tag_name().name())
        } else {
            format!("unknown element inside <{}>; expected {}", parent.tag_name().name(), allowed.join(", "))
        };
        self.err(c, None, msg);
    }

    fn required(&mut self, n: Node<'_, '_>, attr: &str) -> Option<String> {
        match n.attribute(attr) {
            Some(v) if !v.trim().is_empty() => Some(v.to_owned()),
            Some(_) => {
                self.err(n, Some(attr), "must not be empty");
                None
            }
            None => {
                self.err(n, Some(attr), "missing (required)");
                None
            }
        }
    }

    fn number<T: std::str::FromStr>(&mut self, n: Node<'_, '_>, attr: &str, what: &str) -> Option<T> {
        let v = n.attribute(attr)?;
        match v.trim().parse::<T>() {
            Ok(x) => Some(x),
            Err(_) => {
                self.err(n, Some(attr), format!("\"{v}\" is not {what}"));
                None
            }
        }
    }

    fn boolean(&mut self, n: Node<'_, '_>, attr: &str, default: bool) -> bool {
        match n.attribute(attr).map(str::trim) {
            None => default,
            Some("1" | "yes" | "true" | "on") => true,
            Some("0" | "no" | "false" | "off") => false,
            Some(v) => {
                self.err(n, Some(attr), format!("\"{v}\" is not a boolean (use 1 or 0)"));
                default
            }
        }
    }

    /// A single optional child element of a kind; reports duplicates.
    fn single<'b>(&mut self, seen: &mut BTreeSet<&'b str>, c: Node<'_, '_>, tag: &'b str) -> bool {
        if !seen.insert(tag) {
            self.err(c, None, format!("<{tag}> appears more than once; merge them into one"));
            return false;
        }
        true
    }

    fn cluster(&mut self, root: Node<'a, 'i>) -> Option<ClusterConf> {
        if root.tag_name().name() != "cluster" || root.tag_name().namespace().is_some() {
            self.err(root, None, "the root element must be <cluster>");
            return None;
        }
        self.check_attrs(root, &["name", "config_version", "alias"]);
        let name = self.required(root, "name");
        if let Some(n) = &name {
            if n.len() > 64 || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.') {
                self.err(root, Some("name"), "cluster names are 1-64 characters from A-Z a-z 0-9 _ - .");
            }
        }
        let config_version = match root.attribute("config_version") {
            None => {
                self.err(root, Some("config_version"), "missing (required); start with 1");
                None
            }
            Some(_) => self.number::<u64>(root, "config_version", "a non-negative integer"),
        };
        let mut cman = Cman::default();
        let mut totem = Totem::default();
        let mut fence_daemon = FenceDaemon::default();
        let mut nodes = Vec::new();
        let mut fence_devices = Vec::new();
        let mut rm = None;
        let mut seen = BTreeSet::new();
        const TOP: &[&str] = &["cman", "totem", "fence_daemon", "clusternodes", "fencedevices", "rm"];
        for c in self.children(root) {
            let tag = c.tag_name().name();
            match tag {
                "cman" if self.single(&mut seen, c, "cman") => cman = self.cman(c),
                "totem" if self.single(&mut seen, c, "totem") => totem = self.totem(c),
                "fence_daemon" if self.single(&mut seen, c, "fence_daemon") => fence_daemon = self.fence_daemon(c),
                "clusternodes" if self.single(&mut seen, c, "clusternodes") => nodes = self.clusternodes(c),
                "fencedevices" if self.single(&mut seen, c, "fencedevices") => fence_devices = self.fencedevices(c),
                "rm" if self.single(&mut seen, c, "rm") => rm = Some(self.rm(c)),
                t if TOP.contains(&t) => {}
                _ => self.unknown_child(root, c, TOP),
            }
        }
        if !seen.contains("clusternodes") {
            self.err(root, None, "no <clusternodes> section; a cluster needs at least one <clusternode>");
        }
        let conf = ClusterConf {
            name: name.unwrap_or_default(),
            config_version: config_version.unwrap_or_default(),
            cman,
            totem,
            fence_daemon,
            nodes,
            fence_devices,
            rm,
        };
        self.cross_checks(root, &conf);
        if self.errors.is_empty() {
            Some(conf)
        } else {
            None
        }
    }

    fn cman(&mut self, n: Node<'a, 'i>) -> Cman {
        self.check_attrs(n, &["expected_votes", "two_node", "keyfile"]);
        for c in self.children(n) {
            self.unknown_child(n, c, &[]);
        }
        let expected_votes = self.number::<u32>(n, "expected_votes", "a non-negative integer");
        if expected_votes == Some(0) {
            self.err(n, Some("expected_votes"), "must be at least 1");
        }
        let keyfile = n.attribute("keyfile").map(str::to_owned);
        if let Some(k) = &keyfile {
            if !k.starts_with('/') || k.contains(|c: char| c.is_whitespace() || c.is_control() || "{}#:\"".contains(c))
            {
                self.err(n, Some("keyfile"), format!("\"{k}\" is not an absolute path without spaces"));
            }
        }
        Cman { expected_votes, two_node: self.boolean(n, "two_node", false), keyfile }
    }

    fn totem(&mut self, n: Node<'a, 'i>) -> Totem {
        self.check_attrs(n, &["token"]);
        for c in self.children(n) {
            self.unknown_child(n, c, &[]);
        }
        let token_ms = self.number::<u32>(n, "token", "a number of milliseconds");
        if let Some(t) = token_ms {
            if !(100..=3_600_000).contains(&t) {
                self.err(n, Some("token"), format!("{t} ms is out of range (100 to 3600000)"));
            }
        }
        Totem { token_ms }
    }

    fn fence_daemon(&mut self, n: Node<'a, 'i>) -> FenceDaemon {
        self.check_attrs(n, &["post_fail_delay", "post_join_delay"]);
        for c in self.children(n) {
            self.unknown_child(n, c, &[]);
        }
        let d = FenceDaemon::default();
        FenceDaemon {
            post_fail_delay_s: self
                .number(n, "post_fail_delay", "a non-negative number of seconds")
                .unwrap_or(d.post_fail_delay_s),
            post_join_delay_s: self
                .number(n, "post_join_delay", "a non-negative number of seconds")
                .unwrap_or(d.post_join_delay_s),
        }
    }

    fn clusternodes(&mut self, n: Node<'a, 'i>) -> Vec<ClusterNode> {
        self.check_attrs(n, &[]);
        let mut out = Vec::new();
        let mut names: BTreeMap<String, u32> = BTreeMap::new();
        let mut ids: BTreeMap<u32, String> = BTreeMap::new();
        for c in self.children(n) {
            if c.tag_name().name() != "clusternode" {
                self.unknown_child(n, c, &["clusternode"]);
                continue;
            }
            let Some(node) = self.clusternode(c) else { continue };
            if names.insert(node.name.clone(), node.nodeid).is_some() {
                self.err(c, Some("name"), format!("duplicate node name \"{}\"", node.name));
            }
            if let Some(other) = ids.insert(node.nodeid, node.name.clone()) {
                if other != node.name {
                    self.err(c, Some("nodeid"), format!("duplicate nodeid {} (also used by \"{other}\")", node.nodeid));
                }
            }
            out.push(node);
        }
        if out.is_empty() && !self.errors.iter().any(|e| e.element.starts_with("<clusternode")) {
            self.err(n, None, "no <clusternode>; a cluster needs at least one node");
        }
        out
    }

    fn clusternode(&mut self, n: Node<'a, 'i>) -> Option<ClusterNode> {
        self.check_attrs(n, &["name", "nodeid", "votes", "addr"]);
        let name = self.required(n, "name");
        let nodeid = match n.attribute("nodeid") {
            None => {
                self.err(n, Some("nodeid"), "missing (required by corosync's nodelist)");
                None
            }
            Some(_) => self.number::<u32>(n, "nodeid", "a positive integer"),
        };
        if let Some(id) = nodeid {
            if id == 0 || id > MAX_NODEID {
                self.err(n, Some("nodeid"), format!("{id} is out of range (1 to {MAX_NODEID})"));
            }
        }
        let votes = self.number::<u32>(n, "votes", "a non-negative integer").unwrap_or(1);
        if votes > 255 {
            self.err(n, Some("votes"), format!("{votes} is more than the 255 votes a node may have"));
        }
        let addr = n.attribute("addr").map(str::to_owned);
        let mut altnames = Vec::new();
        let mut fence = Vec::new();
        let mut seen = BTreeSet::new();
        for c in self.children(n) {
            match c.tag_name().name() {
                "altname" => {
                    self.check_attrs(c, &["name"]);
                    for cc in self.children(c) {
                        self.unknown_child(c, cc, &[]);
                    }
                    if let Some(a) = self.required(c, "name") {
                        altnames.push(a);
                    }
                }
                "fence" if self.single(&mut seen, c, "fence") => fence = self.fence(c),
                "fence" => {}
                _ => self.unknown_child(n, c, &["altname", "fence"]),
            }
        }
        if altnames.len() > 7 {
            self.err(n, None, "more than 8 corosync links (address plus 7 altnames)");
        }
        Some(ClusterNode { name: name?, nodeid: nodeid?, votes, addr, altnames, fence })
    }

    fn fence(&mut self, n: Node<'a, 'i>) -> Vec<FenceMethod> {
        self.check_attrs(n, &[]);
        let mut out: Vec<FenceMethod> = Vec::new();
        for c in self.children(n) {
            if c.tag_name().name() != "method" {
                self.unknown_child(n, c, &["method"]);
                continue;
            }
            self.check_attrs(c, &["name"]);
            let name = self.required(c, "name");
            let mut devices = Vec::new();
            for d in self.children(c) {
                if d.tag_name().name() != "device" {
                    self.unknown_child(c, d, &["device"]);
                    continue;
                }
                for cc in self.children(d) {
                    self.unknown_child(d, cc, &[]);
                }
                let dname = self.required(d, "name");
                let options = self.options(d, &["name"]);
                if let Some(name) = dname {
                    devices.push(DeviceRef { name, options });
                }
            }
            if devices.is_empty() {
                self.err(c, None, "a fence method needs at least one <device>");
            }
            if let Some(name) = name {
                if out.iter().any(|m| m.name == name) {
                    self.err(c, Some("name"), format!("duplicate method name \"{name}\" for this node"));
                }
                out.push(FenceMethod { name, devices });
            }
        }
        out
    }

    /// Agent options: every attribute except `skip`; keys and values must fit a key=value line.
    fn options(&mut self, n: Node<'_, '_>, skip: &[&str]) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for a in n.attributes() {
            if skip.contains(&a.name()) {
                continue;
            }
            if a.namespace().is_some() || !is_option_key(a.name()) {
                self.err(n, Some(a.name()), "agent option names are A-Z a-z 0-9 _ - only");
                continue;
            }
            if a.value().contains(['\n', '\r', '\0']) {
                self.err(n, Some(a.name()), "agent option values must be one line (no newline or NUL)");
                continue;
            }
            out.insert(a.name().to_owned(), a.value().to_owned());
        }
        out
    }

    fn fencedevices(&mut self, n: Node<'a, 'i>) -> Vec<FenceDevice> {
        self.check_attrs(n, &[]);
        let mut out: Vec<FenceDevice> = Vec::new();
        for c in self.children(n) {
            if c.tag_name().name() != "fencedevice" {
                self.unknown_child(n, c, &["fencedevice"]);
                continue;
            }
            for cc in self.children(c) {
                self.unknown_child(c, cc, &[]);
            }
            let name = self.required(c, "name");
            let agent = self.required(c, "agent");
            if let Some(a) = &agent {
                if a.contains('/') && !a.starts_with('/') || a.contains(char::is_whitespace) {
                    self.err(c, Some("agent"), format!("\"{a}\" is not a program name or absolute path"));
                }
            }
            let options = self.options(c, &["name", "agent"]);
            if let (Some(name), Some(agent)) = (name, agent) {
                if out.iter().any(|d| d.name == name) {
                    self.err(c, Some("name"), format!("duplicate fence device name \"{name}\""));
                }
                out.push(FenceDevice { name, agent, options });
            }
        }
        out
    }

    fn rm(&mut self, n: Node<'a, 'i>) -> Rm {
        self.check_attrs(n, &["log_level", "central_processing", "status_poll_interval", "status_child_max"]);
        let mut rm = Rm::default();
        let mut seen = BTreeSet::new();
        for c in self.children(n) {
            match c.tag_name().name() {
                "failoverdomains" if self.single(&mut seen, c, "failoverdomains") => {
                    rm.failover_domains = self.failoverdomains(c)
                }
                "resources" if self.single(&mut seen, c, "resources") => rm.resources = self.resources(c),
                "service" => {
                    if let Some(s) = self.service(c) {
                        if rm.services.iter().any(|o| o.name == s.name) {
                            self.err(c, Some("name"), format!("duplicate service name \"{}\"", s.name));
                        }
                        rm.services.push(s);
                    }
                }
                "failoverdomains" | "resources" => {}
                _ => self.unknown_child(n, c, &["failoverdomains", "resources", "service"]),
            }
        }
        rm
    }

    fn failoverdomains(&mut self, n: Node<'a, 'i>) -> Vec<FailoverDomain> {
        self.check_attrs(n, &[]);
        let mut out: Vec<FailoverDomain> = Vec::new();
        for c in self.children(n) {
            if c.tag_name().name() != "failoverdomain" {
                self.unknown_child(n, c, &["failoverdomain"]);
                continue;
            }
            self.check_attrs(c, &["name", "ordered", "restricted", "nofailback"]);
            let name = self.required(c, "name");
            let ordered = self.boolean(c, "ordered", false);
            let restricted = self.boolean(c, "restricted", false);
            let nofailback = self.boolean(c, "nofailback", false);
            let mut nodes: Vec<DomainNode> = Vec::new();
            for d in self.children(c) {
                if d.tag_name().name() != "failoverdomainnode" {
                    self.unknown_child(c, d, &["failoverdomainnode"]);
                    continue;
                }
                self.check_attrs(d, &["name", "priority"]);
                for cc in self.children(d) {
                    self.unknown_child(d, cc, &[]);
                }
                let Some(dn) = self.required(d, "name") else { continue };
                let priority = self.number::<u32>(d, "priority", "an integer from 1 to 100").unwrap_or(1);
                if !(1..=100).contains(&priority) {
                    self.err(d, Some("priority"), format!("{priority} is out of range (1 to 100)"));
                }
                if nodes.iter().any(|x| x.name == dn) {
                    self.err(d, Some("name"), format!("node \"{dn}\" is listed twice in this domain"));
                }
                nodes.push(DomainNode { name: dn, priority });
            }
            if let Some(name) = name {
                if out.iter().any(|d| d.name == name) {
                    self.err(c, Some("name"), format!("duplicate failover domain name \"{name}\""));
                }
                out.push(FailoverDomain { name, ordered, restricted, nofailback, nodes });
            }
        }
        out
    }

    fn resources(&mut self, n: Node<'a, 'i>) -> Vec<Resource> {
        self.check_attrs(n, &[]);
        let mut out: Vec<Resource> = Vec::new();
        for c in self.children(n) {
            let Some(kind) = ResourceKind::from_tag(c.tag_name().name()) else {
                let tags: Vec<&str> = ResourceKind::ALL.iter().map(|k| k.tag()).collect();
                self.unknown_child(n, c, &tags);
                continue;
            };
            for cc in self.children(c) {
                self.err(cc, None, "resources in <resources> cannot have children; nest them inside a <service>");
            }
            if c.attribute("ref").is_some() {
                self.err(c, Some("ref"), "a definition in <resources> cannot be a reference");
                continue;
            }
            let Some(r) = self.resource_def(c, kind, &[]) else { continue };
            if out.iter().any(|o| o.kind == r.kind && o.key == r.key) {
                self.err(c, Some(kind.key_attr()), format!("duplicate <{}> resource \"{}\"", kind.tag(), r.key));
            }
            out.push(r);
        }
        out
    }

    fn resource_def(&mut self, n: Node<'_, '_>, kind: ResourceKind, extra: &[&str]) -> Option<Resource> {
        let mut allowed = vec![kind.key_attr()];
        allowed.extend_from_slice(kind.allowed());
        allowed.extend_from_slice(extra);
        self.check_attrs(n, &allowed);
        let key = self.required(n, kind.key_attr());
        let mut ok = key.is_some();
        for r in kind.required() {
            ok &= self.required(n, r).is_some();
        }
        let attrs: BTreeMap<String, String> = n
            .attributes()
            .filter(|a| a.namespace().is_none() && kind.allowed().contains(&a.name()))
            .map(|a| (a.name().to_owned(), a.value().to_owned()))
            .collect();
        if kind == ResourceKind::Ip {
            if let Some(k) = &key {
                let addr = k.split('/').next().unwrap_or("");
                if addr.parse::<std::net::IpAddr>().is_err() {
                    self.err(n, Some("address"), format!("\"{k}\" is not an IP address (optionally /prefix)"));
                    ok = false;
                }
            }
        }
        for b in ["monitor_link", "force_unmount", "self_fence", "readonly", "cached"] {
            if attrs.contains_key(b) {
                self.boolean(n, b, false);
            }
        }
        if let Some(mp) = attrs.get("mountpoint") {
            if !mp.starts_with('/') {
                self.err(n, Some("mountpoint"), format!("\"{mp}\" is not an absolute path"));
            }
        }
        if ok {
            Some(Resource { kind, key: key.expect("checked"), attrs })
        } else {
            None
        }
    }

    fn service(&mut self, n: Node<'a, 'i>) -> Option<Service> {
        self.check_attrs(
            n,
            &[
                "name",
                "domain",
                "autostart",
                "exclusive",
                "recovery",
                "max_restarts",
                "restart_expire_time",
                "depend",
                "depend_mode",
            ],
        );
        let name = self.required(n, "name");
        let domain = n.attribute("domain").map(str::to_owned);
        let autostart = self.boolean(n, "autostart", true);
        let exclusive = self.boolean(n, "exclusive", false);
        let recovery = match n.attribute("recovery") {
            None | Some("restart") => Recovery::Restart,
            Some("relocate") => Recovery::Relocate,
            Some("disable") => Recovery::Disable,
            Some("restart-disable") => Recovery::RestartDisable,
            Some(v) => {
                self.err(n, Some("recovery"), format!("\"{v}\" is not restart, relocate, disable or restart-disable"));
                Recovery::Restart
            }
        };
        let max_restarts = self.number(n, "max_restarts", "a number of restarts").unwrap_or(0);
        let restart_expire_time_s = self.number(n, "restart_expire_time", "a number of seconds").unwrap_or(0);
        let depend = match n.attribute("depend") {
            None => None,
            Some(v) => match v.strip_prefix("service:") {
                Some(s) if !s.is_empty() => Some(s.to_owned()),
                _ => {
                    self.err(n, Some("depend"), format!("\"{v}\" is not service:NAME"));
                    None
                }
            },
        };
        let depend_soft = match n.attribute("depend_mode") {
            None | Some("hard") => false,
            Some("soft") => true,
            Some(v) => {
                self.err(n, Some("depend_mode"), format!("\"{v}\" is not hard or soft"));
                false
            }
        };
        let resources = self.service_children(n, 0);
        Some(Service {
            name: name?,
            domain,
            autostart,
            exclusive,
            recovery,
            max_restarts,
            restart_expire_time_s,
            depend,
            depend_soft,
            resources,
        })
    }

    fn service_children(&mut self, n: Node<'a, 'i>, depth: usize) -> Vec<ServiceResource> {
        let mut out = Vec::new();
        for c in self.children(n) {
            if c.tag_name().name() == "action" && depth > 0 {
                // Handled by the parent (`status_interval`).
                continue;
            }
            let Some(kind) = ResourceKind::from_tag(c.tag_name().name()) else {
                let mut tags: Vec<&str> = ResourceKind::ALL.iter().map(|k| k.tag()).collect();
                if depth > 0 {
                    tags.push("action");
                }
                self.unknown_child(n, c, &tags);
                continue;
            };
            if depth >= 16 {
                self.err(c, None, "resources nested more than 16 deep");
                continue;
            }
            const SERVICE_ONLY: &[&str] = &["__independent_subtree"];
            let def = if let Some(r) = c.attribute("ref") {
                self.check_attrs(c, &["ref", "__independent_subtree"]);
                Some(ResourceDef::Ref(r.to_owned()))
            } else {
                self.resource_def(c, kind, SERVICE_ONLY).map(ResourceDef::Inline)
            };
            let independent = self.boolean(c, "__independent_subtree", false);
            let status_interval_s = self.status_interval(c);
            let children = self.service_children(c, depth + 1);
            if let Some(def) = def {
                out.push(ServiceResource { kind, def, children, independent, status_interval_s });
            }
        }
        out
    }

    /// `<action name="status" interval="SECS" depth="D"/>` children of a resource element.
    fn status_interval(&mut self, n: Node<'a, 'i>) -> Option<u32> {
        let mut out = None;
        for a in n.children().filter(|c| c.is_element() && c.tag_name().name() == "action") {
            self.check_attrs(a, &["name", "interval", "depth", "timeout"]);
            match a.attribute("name") {
                Some("status") | Some("monitor") => {}
                Some(other) => {
                    self.err(a, Some("name"), format!("\"{other}\" is not an action this suite schedules (status)"));
                    continue;
                }
                None => {
                    self.err(a, Some("name"), "missing; use name=\"status\"");
                    continue;
                }
            }
            match a.attribute("interval") {
                Some(v) => match v.trim_end_matches('s').parse::<u32>() {
                    Ok(secs) if secs >= 1 => out = Some(secs),
                    _ => self.err(a, Some("interval"), format!("\"{v}\" is not a number of seconds (1 or more)")),
                },
                None => self.err(a, Some("interval"), "missing"),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conf::GOOD;

    fn errs(text: &str) -> Vec<ConfError> {
        parse(text).expect_err("must be refused").0
    }

    #[test]
    fn good_file_parses() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.name, "alpha");
        assert_eq!(c.config_version, 3);
        assert_eq!(c.expected_votes(), 3);
        assert_eq!(c.totem.token_ms, Some(1000));
        assert_eq!(c.fence_daemon.post_join_delay_s, 3);
        assert_eq!(c.nodes.len(), 3);
        assert_eq!(c.nodes[0].ring0_addr(), "198.18.0.1");
        assert_eq!(c.nodes[1].ring0_addr(), "node2");
        assert_eq!(c.nodes[0].fence[1].devices[0].options["nodename"], "node1");
        assert_eq!(c.fence_device("gnbd").unwrap().options["servers"], "gnbd1 gnbd2");
        let rm = c.rm.as_ref().unwrap();
        assert_eq!(rm.services[0].recovery, Recovery::Relocate);
        assert_eq!(rm.services[0].resources[0].children.len(), 1);
    }

    #[test]
    fn service_manager_attributes() {
        let c = parse(GOOD).unwrap();
        let rm = c.rm.as_ref().unwrap();
        let www = &rm.services[0];
        assert_eq!((www.max_restarts, www.restart_expire_time_s), (3, 300));
        assert_eq!(www.resources[0].status_interval_s, Some(5));
        assert!(www.resources[0].children[0].independent);
        let export = &rm.services[1];
        assert_eq!(export.depend.as_deref(), Some("www"));
        assert!(export.depend_soft);
        assert_eq!(export.recovery, Recovery::RestartDisable);
        assert_eq!(export.resources[0].kind, ResourceKind::GnbdExport);
        let text = errs(
            r#"<cluster name="a" config_version="1"><clusternodes><clusternode name="n" nodeid="1"/></clusternodes>
              <rm><service name="s" depend="x" depend_mode="firm" max_restarts="-1" recovery="pray">
              <script name="a" file="/bin/true" __independent_subtree="maybe"><action name="stop" interval="1"/>
              <action name="status" interval="0"/></script></service>
              <service name="t" depend="service:t"/></rm></cluster>"#,
        )
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
        for want in [
            "\"x\" is not service:NAME",
            "\"firm\" is not hard or soft",
            "\"-1\" is not a number of restarts",
            "\"pray\" is not restart, relocate, disable or restart-disable",
            "\"maybe\" is not a boolean",
            "\"stop\" is not an action",
            "\"0\" is not a number of seconds",
            "a service cannot depend on itself",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
    }

    #[test]
    fn duplicate_name_and_bad_version_are_both_reported() {
        let e = errs(
            r#"<cluster name="a" config_version="x1">
              <clusternodes>
                <clusternode name="n1" nodeid="1"/>
                <clusternode name="n1" nodeid="2"/>
              </clusternodes></cluster>"#,
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].attr.as_deref(), Some("config_version"));
        assert!(e[0].problem.contains("\"x1\" is not a non-negative integer"));
        assert_eq!(e[1].element, "<clusternode name=\"n1\">");
        assert_eq!(e[1].line, Some(4));
        assert!(e[1].problem.contains("duplicate node name"));
    }

    #[test]
    fn unknown_elements_and_attributes() {
        let e = errs(
            r#"<cluster name="a" config_version="1" colour="red">
              <clusternodes><clusternode name="n1" nodeid="1" vote="1"/></clusternodes>
              <quorumdisk/></cluster>"#,
        );
        let text = ConfErrors(e.clone()).to_string();
        assert!(text.contains("<cluster name=\"a\"> attribute colour: unknown attribute"), "{text}");
        assert!(text.contains("attribute vote: unknown attribute"), "{text}");
        assert!(text.contains("<quorumdisk>: unknown element inside <cluster>"), "{text}");
        assert_eq!(e.len(), 3);
    }

    #[test]
    fn references_must_resolve() {
        let e = errs(
            r#"<cluster name="a" config_version="1">
              <clusternodes><clusternode name="n1" nodeid="1"><fence><method name="m">
                <device name="nope"/></method></fence></clusternode></clusternodes>
              <rm><service name="s" domain="d"><ip ref="10.0.0.1"/></service></rm></cluster>"#,
        );
        let text = ConfErrors(e).to_string();
        assert!(text.contains("names fence device \"nope\", which no <fencedevice> defines"), "{text}");
        assert!(text.contains("no <failoverdomain> is named \"d\""), "{text}");
        assert!(text.contains("no <ip> in <resources> has address=\"10.0.0.1\""), "{text}");
    }

    #[test]
    fn two_node_rules() {
        let base = |nodes: &str, cman: &str| {
            format!(
                r#"<cluster name="a" config_version="1"><cman {cman}/><clusternodes>{nodes}</clusternodes></cluster>"#
            )
        };
        let two = r#"<clusternode name="a" nodeid="1"/><clusternode name="b" nodeid="2"/>"#;
        let c = parse(&base(two, r#"two_node="1" expected_votes="1""#)).unwrap();
        assert!(c.cman.two_node);
        let three = format!(r#"{two}<clusternode name="c" nodeid="3"/>"#);
        let e = errs(&base(&three, r#"two_node="1""#));
        assert!(e[0].problem.contains("exactly 2 clusternodes, found 3"), "{e:?}");
        let e = errs(&base(two, r#"two_node="1" expected_votes="2""#));
        assert!(e[0].problem.contains("expected_votes must be 1"), "{e:?}");
    }

    #[test]
    fn malformed_xml_names_the_line() {
        let e = errs("<cluster name=\"a\"\n config_version=\"1\">\n<clusternodes>\n</cluster>");
        assert_eq!(e.len(), 1);
        assert!(e[0].problem.starts_with("not well-formed XML"), "{e:?}");
        assert!(e[0].line.is_some());
    }

    #[test]
    fn option_values_cannot_inject_lines() {
        let e = errs(
            r#"<cluster name="a" config_version="1"><clusternodes><clusternode name="n" nodeid="1"/></clusternodes>
            <fencedevices><fencedevice name="d" agent="fence_x" ip="1.2.3.4&#10;action=on"/></fencedevices></cluster>"#,
        );
        assert!(e[0].problem.contains("must be one line"), "{e:?}");
    }
}
