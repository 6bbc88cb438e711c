//! `clustat`'s output: the membership (from corosync, as `cluster` reports it) and, when
//! rgmanager runs on this node, the services with owner, last owner and state, as a table,
//! in the long form (`-l`) or as XML (`-x`). Pure functions of the two status structures.

use cluster::corosync::Status as Membership;

use crate::api::{ServiceStatus, Status as Services};
use crate::record::State;

/// rgmanager's numeric state codes (as in RHCS's clustat XML).
pub fn state_code(s: State) -> u32 {
    match s {
        State::Stopped => 110,
        State::Starting => 111,
        State::Started => 112,
        State::Stopping => 113,
        State::Failed => 114,
        State::Recovering => 118,
        State::Disabled => 119,
    }
}

/// What to show.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this service (`-s`).
    pub service: Option<String>,
    /// Only this member (`-m`).
    pub member: Option<String>,
    /// Long form (`-l`).
    pub long: bool,
}

fn flags(s: &ServiceStatus) -> String {
    let mut f = Vec::new();
    if s.frozen {
        f.push("frozen");
    }
    if s.held {
        f.push("held");
    }
    f.join(", ")
}

/// The node lines' status column.
fn node_status(m: &cluster::corosync::NodeStatus, local: u32, rg: Option<&Services>) -> String {
    let mut status = if m.member { "Online".to_owned() } else { "Offline".to_owned() };
    if m.nodeid == local {
        status.push_str(", Local");
    }
    if rg.is_some_and(|r| r.nodes.iter().any(|n| n.id == m.nodeid && n.rgmanager && n.member)) {
        status.push_str(", rgmanager");
    }
    status
}

/// The text form.
pub fn render_text(cluster: &str, version: u64, m: &Membership, rg: Option<&Services>, f: &Filter) -> String {
    let mut o = String::new();
    if f.service.is_none() {
        o.push_str(&format!(
            "Cluster Status for {cluster} (config_version {version})\nMember Status: {}\n\n",
            if m.quorate { "Quorate" } else { "Inquorate" }
        ));
        o.push_str(&format!(" {:<24} {:>6} {}\n", "Member Name", "ID", "Status"));
        o.push_str(&format!(" {:<24} {:>6} {}\n", "------ ----", "----", "------"));
        for n in m.nodes.iter().filter(|n| f.member.as_ref().is_none_or(|x| x == &n.name)) {
            o.push_str(&format!(" {:<24} {:>6} {}\n", n.name, n.nodeid, node_status(n, m.local_nodeid, rg)));
        }
    }
    let Some(rg) = rg else { return o };
    if f.member.is_some() {
        return o;
    }
    let services: Vec<&ServiceStatus> =
        rg.services.iter().filter(|s| f.service.as_ref().is_none_or(|x| x == &s.name)).collect();
    if services.is_empty() {
        return o;
    }
    if f.service.is_none() {
        o.push('\n');
    }
    if f.long {
        o.push_str("Service Information\n------- -----------\n\n");
        for s in services {
            let fl = flags(s);
            o.push_str(&format!("Service Name      : service:{}\n", s.name));
            o.push_str(&format!("  Current State   : {} ({})\n", s.state.as_str(), state_code(s.state)));
            o.push_str(&format!("  Flags           : {}\n", if fl.is_empty() { "none".into() } else { fl }));
            o.push_str(&format!("  Owner           : {}\n", s.owner.as_deref().unwrap_or("none")));
            o.push_str(&format!("  Last Owner      : {}\n", s.last_owner.as_deref().unwrap_or("none")));
            o.push_str(&format!("  Restarts        : {}\n", s.restarts));
            o.push_str(&format!("  Domain          : {}\n", s.domain.as_deref().unwrap_or("none")));
            o.push_str(&format!("  Autostart       : {}\n\n", if s.autostart { "yes" } else { "no" }));
        }
        return o;
    }
    o.push_str(&format!(" {:<30} {:<30} {}\n", "Service Name", "Owner (Last)", "State"));
    o.push_str(&format!(" {:<30} {:<30} {}\n", "------- ----", "----- ------", "-----"));
    for s in services {
        let owner = match (&s.owner, &s.last_owner) {
            (Some(o), _) => o.clone(),
            (None, Some(l)) => format!("({l})"),
            (None, None) => "(none)".to_owned(),
        };
        let fl = flags(s);
        let state = if fl.is_empty() { s.state.as_str().to_owned() } else { format!("{} [{fl}]", s.state.as_str()) };
        o.push_str(&format!(" {:<30} {:<30} {state}\n", format!("service:{}", s.name), owner));
    }
    o
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The XML form (`-x`), RHCS's element and attribute names.
pub fn render_xml(cluster: &str, version: u64, m: &Membership, rg: Option<&Services>, f: &Filter) -> String {
    let mut o = String::from("<?xml version=\"1.0\"?>\n<clustat version=\"4.1.1\">\n");
    o.push_str(&format!("  <cluster name=\"{}\" config_version=\"{version}\"/>\n", esc(cluster)));
    o.push_str(&format!(
        "  <quorum quorate=\"{}\" groupmember=\"{}\"/>\n",
        u8::from(m.quorate),
        u8::from(rg.is_some())
    ));
    o.push_str("  <nodes>\n");
    for n in m.nodes.iter().filter(|n| f.member.as_ref().is_none_or(|x| x == &n.name)) {
        let rgm = rg.is_some_and(|r| r.nodes.iter().any(|x| x.id == n.nodeid && x.rgmanager && x.member));
        o.push_str(&format!(
            "    <node name=\"{}\" state=\"{}\" local=\"{}\" rgmanager=\"{}\" nodeid=\"0x{:08x}\"/>\n",
            esc(&n.name),
            u8::from(n.member),
            u8::from(n.nodeid == m.local_nodeid),
            u8::from(rgm),
            n.nodeid
        ));
    }
    o.push_str("  </nodes>\n");
    if let Some(rg) = rg {
        o.push_str("  <groups>\n");
        for s in rg.services.iter().filter(|s| f.service.as_ref().is_none_or(|x| x == &s.name)) {
            o.push_str(&format!(
                "    <group name=\"service:{}\" state=\"{}\" state_str=\"{}\" flags_str=\"{}\" owner=\"{}\" last_owner=\"{}\" restarts=\"{}\"/>\n",
                esc(&s.name),
                state_code(s.state),
                s.state.as_str(),
                flags(s),
                esc(s.owner.as_deref().unwrap_or("none")),
                esc(s.last_owner.as_deref().unwrap_or("none")),
                s.restarts
            ));
        }
        o.push_str("  </groups>\n");
    }
    o.push_str("</clustat>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::NodeStatus;
    use crate::record::Want;

    fn membership() -> Membership {
        Membership {
            local_nodeid: 1,
            quorate: true,
            expected_votes: 3,
            highest_expected: 3,
            total_votes: 2,
            quorum: 2,
            two_node: false,
            nodes: vec![
                cluster::corosync::NodeStatus { nodeid: 1, name: "node1".into(), member: true, votes: 1 },
                cluster::corosync::NodeStatus { nodeid: 2, name: "node2".into(), member: false, votes: 1 },
            ],
        }
    }

    fn services() -> Services {
        let svc = |name: &str, state, owner: Option<&str>, last: Option<&str>| ServiceStatus {
            name: name.into(),
            state,
            owner: owner.map(Into::into),
            last_owner: last.map(Into::into),
            frozen: false,
            held: false,
            want: Want::None,
            restarts: 0,
            generation: 1,
            autostart: true,
            domain: None,
        };
        Services {
            cluster: "alpha".into(),
            local_nodeid: 1,
            quorate: true,
            nodes: vec![
                NodeStatus { id: 1, name: "node1".into(), member: true, rgmanager: true, local: true },
                NodeStatus { id: 2, name: "node2".into(), member: false, rgmanager: false, local: false },
            ],
            services: vec![
                svc("www", State::Started, Some("node1"), Some("node2")),
                svc("db", State::Disabled, None, Some("node2")),
            ],
            locked: false,
        }
    }

    #[test]
    fn text_table() {
        let (m, s) = (membership(), services());
        let t = render_text("alpha", 3, &m, Some(&s), &Filter::default());
        assert!(t.contains(" node1                         1 Online, Local, rgmanager\n"), "{t}");
        assert!(t.contains(" node2                         2 Offline\n"), "{t}");
        assert!(t.contains(" service:www                    node1                          started\n"), "{t}");
        assert!(t.contains(" service:db                     (node2)                        disabled\n"), "{t}");
        let one = render_text("alpha", 3, &m, Some(&s), &Filter { service: Some("db".into()), ..Filter::default() });
        assert!(!one.contains("Member") && one.contains("service:db") && !one.contains("service:www"), "{one}");
        let long = render_text("alpha", 3, &m, Some(&s), &Filter { long: true, ..Filter::default() });
        assert!(long.contains("  Current State   : started (112)\n  Flags           : none\n"), "{long}");
        let without = render_text("alpha", 3, &m, None, &Filter::default());
        assert!(!without.contains("Service"), "{without}");
    }

    #[test]
    fn xml() {
        let x = render_xml("alpha", 3, &membership(), Some(&services()), &Filter::default());
        assert!(x.contains(r#"<node name="node1" state="1" local="1" rgmanager="1" nodeid="0x00000001"/>"#), "{x}");
        assert!(x.contains(r#"<group name="service:www" state="112" state_str="started" flags_str="" owner="node1" last_owner="node2" restarts="0"/>"#), "{x}");
    }
}
