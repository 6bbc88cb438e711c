//! The cluster.conf writer: [`ClusterConf::to_xml`], whose output the parser reads back
//! unchanged.

use std::collections::BTreeMap;

use super::{ClusterConf, Resource, ResourceDef, ServiceResource};

/// Escapes an attribute value for XML.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            '\t' => o.push_str("&#9;"),
            '\n' => o.push_str("&#10;"),
            '\r' => o.push_str("&#13;"),
            c => o.push(c),
        }
    }
    o
}

fn attrs_xml(map: &BTreeMap<String, String>) -> String {
    map.iter().map(|(k, v)| format!(" {k}=\"{}\"", esc(v))).collect()
}

fn b(x: bool) -> &'static str {
    if x {
        "1"
    } else {
        "0"
    }
}

impl ClusterConf {
    /// Writes the configuration as cluster.conf XML that [`parse`](super::parse()) reads back unchanged.
    pub fn to_xml(&self) -> String {
        let mut o = String::new();
        o.push_str("<?xml version=\"1.0\"?>\n");
        o.push_str(&format!("<cluster name=\"{}\" config_version=\"{}\">\n", esc(&self.name), self.config_version));
        o.push_str("  <cman");
        if let Some(e) = self.cman.expected_votes {
            o.push_str(&format!(" expected_votes=\"{e}\""));
        }
        o.push_str(&format!(" two_node=\"{}\"", b(self.cman.two_node)));
        if let Some(k) = &self.cman.keyfile {
            o.push_str(&format!(" keyfile=\"{}\"", esc(k)));
        }
        o.push_str("/>\n");
        if let Some(t) = self.totem.token_ms {
            o.push_str(&format!("  <totem token=\"{t}\"/>\n"));
        }
        o.push_str(&format!(
            "  <fence_daemon post_fail_delay=\"{}\" post_join_delay=\"{}\"/>\n",
            self.fence_daemon.post_fail_delay_s, self.fence_daemon.post_join_delay_s
        ));
        o.push_str("  <clusternodes>\n");
        for n in &self.nodes {
            o.push_str(&format!(
                "    <clusternode name=\"{}\" nodeid=\"{}\" votes=\"{}\"",
                esc(&n.name),
                n.nodeid,
                n.votes
            ));
            if let Some(a) = &n.addr {
                o.push_str(&format!(" addr=\"{}\"", esc(a)));
            }
            o.push_str(">\n");
            for a in &n.altnames {
                o.push_str(&format!("      <altname name=\"{}\"/>\n", esc(a)));
            }
            o.push_str("      <fence>\n");
            for m in &n.fence {
                o.push_str(&format!("        <method name=\"{}\">\n", esc(&m.name)));
                for d in &m.devices {
                    o.push_str(&format!("          <device name=\"{}\"{}/>\n", esc(&d.name), attrs_xml(&d.options)));
                }
                o.push_str("        </method>\n");
            }
            o.push_str("      </fence>\n    </clusternode>\n");
        }
        o.push_str("  </clusternodes>\n  <fencedevices>\n");
        for d in &self.fence_devices {
            o.push_str(&format!(
                "    <fencedevice name=\"{}\" agent=\"{}\"{}/>\n",
                esc(&d.name),
                esc(&d.agent),
                attrs_xml(&d.options)
            ));
        }
        o.push_str("  </fencedevices>\n");
        if let Some(rm) = &self.rm {
            o.push_str("  <rm>\n    <failoverdomains>\n");
            for d in &rm.failover_domains {
                o.push_str(&format!(
                    "      <failoverdomain name=\"{}\" ordered=\"{}\" restricted=\"{}\" nofailback=\"{}\">\n",
                    esc(&d.name),
                    b(d.ordered),
                    b(d.restricted),
                    b(d.nofailback)
                ));
                for n in &d.nodes {
                    o.push_str(&format!(
                        "        <failoverdomainnode name=\"{}\" priority=\"{}\"/>\n",
                        esc(&n.name),
                        n.priority
                    ));
                }
                o.push_str("      </failoverdomain>\n");
            }
            o.push_str("    </failoverdomains>\n    <resources>\n");
            for r in &rm.resources {
                o.push_str(&format!("      {}/>\n", resource_open(r)));
            }
            o.push_str("    </resources>\n");
            for s in &rm.services {
                o.push_str(&format!(
                    "    <service name=\"{}\"{} autostart=\"{}\" exclusive=\"{}\" recovery=\"{}\" max_restarts=\"{}\" restart_expire_time=\"{}\"{}{}>\n",
                    esc(&s.name),
                    s.domain.as_ref().map(|d| format!(" domain=\"{}\"", esc(d))).unwrap_or_default(),
                    b(s.autostart),
                    b(s.exclusive),
                    s.recovery.as_str(),
                    s.max_restarts,
                    s.restart_expire_time_s,
                    s.depend.as_ref().map(|d| format!(" depend=\"service:{}\"", esc(d))).unwrap_or_default(),
                    if s.depend_soft { " depend_mode=\"soft\"" } else { "" },
                ));
                for r in &s.resources {
                    service_resource_xml(&mut o, r, 3);
                }
                o.push_str("    </service>\n");
            }
            o.push_str("  </rm>\n");
        }
        o.push_str("</cluster>\n");
        o
    }
}

fn resource_open(r: &Resource) -> String {
    format!("<{} {}=\"{}\"{}", r.kind.tag(), r.kind.key_attr(), esc(&r.key), attrs_xml(&r.attrs))
}

fn service_resource_xml(o: &mut String, r: &ServiceResource, depth: usize) {
    let pad = "  ".repeat(depth);
    let mut open = match &r.def {
        ResourceDef::Ref(k) => format!("<{} ref=\"{}\"", r.kind.tag(), esc(k)),
        ResourceDef::Inline(def) => resource_open(def),
    };
    if r.independent {
        open.push_str(" __independent_subtree=\"1\"");
    }
    if let Some(i) = r.status_interval_s {
        o.push_str(&format!("{pad}{open}>\n{pad}  <action name=\"status\" interval=\"{i}\"/>\n"));
        for c in &r.children {
            service_resource_xml(o, c, depth + 1);
        }
        o.push_str(&format!("{pad}</{}>\n", r.kind.tag()));
    } else if r.children.is_empty() {
        o.push_str(&format!("{pad}{open}/>\n"));
    } else {
        o.push_str(&format!("{pad}{open}>\n"));
        for c in &r.children {
            service_resource_xml(o, c, depth + 1);
        }
        o.push_str(&format!("{pad}</{}>\n", r.kind.tag()));
    }
}

#[cfg(test)]
mod tests {
    use crate::conf::{parse, GOOD};

    #[test]
    fn good_file_round_trips() {
        let c = parse(GOOD).unwrap();
        assert_eq!(parse(&c.to_xml()).unwrap(), c);
    }
}
