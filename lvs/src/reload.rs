//! Reloading lvsd's files into the running table: the difference between the table that
//! `--config` and `--rules` describe now and the running one, as the same table operations
//! lvsadm makes (`-A`/`-E`/`-D`, `-a`/`-e`/`-d`, `--set`, `--fwmark-map`). Unchanged
//! services and real servers are not touched, so their connections, counters and
//! persistence stay; an edited one keeps its connections; a deleted one lets its
//! established connections finish. Sans-IO: [`diff`] plans, [`apply`] runs the plan.

use std::net::SocketAddr;

use crate::admin::{self, Command};
use crate::model::ServiceKey;
use crate::sched::Millis;
use crate::table::{DestSpec, Director};

/// The spec of a running real server.
fn dest_spec(d: &crate::model::Dest) -> DestSpec {
    DestSpec { addr: d.addr, weight: d.weight, u_threshold: d.u_threshold, l_threshold: d.l_threshold, fwd: d.fwd }
}

/// The operations that turn `running` into `target`. `checked(key, addr)` is true for a
/// real server whose health check keeps running unchanged across the reload: its presence
/// and weight belong to the check (which may have taken it out), so they are left alone.
pub fn diff(running: &Director, target: &Director, checked: impl Fn(&ServiceKey, SocketAddr) -> bool) -> Vec<Command> {
    let mut ops = Vec::new();
    for s in running.services() {
        if target.service(&s.spec.key).is_none() {
            ops.push(Command::DeleteService(s.spec.key));
        }
    }
    for t in target.services() {
        let key = t.spec.key;
        let Some(r) = running.service(&key) else {
            ops.push(Command::AddService(t.spec.clone()));
            ops.extend(t.dests.iter().map(|d| Command::AddDest(key, dest_spec(d))));
            continue;
        };
        if r.spec != t.spec {
            ops.push(Command::EditService(t.spec.clone()));
        }
        for d in &r.dests {
            if !t.dests.iter().any(|x| x.addr == d.addr) {
                ops.push(Command::DeleteDest(key, d.addr));
            }
        }
        for d in &t.dests {
            if checked(&key, d.addr) {
                continue;
            }
            let want = dest_spec(d);
            match r.dests.iter().find(|x| x.addr == d.addr) {
                None => ops.push(Command::AddDest(key, want)),
                Some(x) if dest_spec(x) != want => ops.push(Command::EditDest(key, want)),
                Some(_) => {}
            }
        }
    }
    if running.timeouts != target.timeouts {
        ops.push(Command::SetTimeouts(target.timeouts));
    }
    for &(proto, addr) in running.marks().keys() {
        if !target.marks().contains_key(&(proto, addr)) {
            ops.push(Command::MapMark(proto, addr, None));
        }
    }
    for (&(proto, addr), &mark) in target.marks() {
        if running.marks().get(&(proto, addr)) != Some(&mark) {
            ops.push(Command::MapMark(proto, addr, Some(mark)));
        }
    }
    ops
}

/// One line saying what an operation does.
pub fn describe(cmd: &Command) -> String {
    match cmd {
        Command::AddService(s) => format!("added service {} ({})", s.key, s.sched),
        Command::EditService(s) => format!("changed service {} ({})", s.key, s.sched),
        Command::DeleteService(k) => format!("removed service {k} (its established connections finish)"),
        Command::AddDest(k, d) => format!("added real server {} to {k} (weight {})", d.addr, d.weight),
        Command::EditDest(k, d) => format!("changed real server {} of {k} (weight {})", d.addr, d.weight),
        Command::DeleteDest(k, a) => format!("removed real server {a} from {k} (its established connections finish)"),
        Command::SetTimeouts(t) => format!("timeouts now tcp {} tcpfin {} udp {}", t.tcp_s, t.tcpfin_s, t.udp_s),
        Command::MapMark(p, a, Some(m)) => format!("{} {a} now carries fwmark {m}", p.upper()),
        Command::MapMark(p, a, None) => format!("{} {a} no longer carries a fwmark", p.upper()),
        other => format!("{other:?}"),
    }
}

/// Runs the plan on `d`: what was applied, and a warning for each operation the table
/// refused (the others are applied all the same).
pub fn apply(d: &mut Director, ops: Vec<Command>, now_ms: Millis) -> (Vec<String>, Vec<String>) {
    let (mut changes, mut warnings) = (Vec::new(), Vec::new());
    for op in ops {
        let what = describe(&op);
        match admin::run(d, op, "", now_ms) {
            Ok(_) => changes.push(what),
            Err(e) => warnings.push(format!("cannot apply \"{what}\": {e}")),
        }
    }
    (changes, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rules: &str) -> Director {
        let mut d = Director::new();
        admin::run(&mut d, Command::Restore, rules, 0).unwrap();
        d
    }

    #[test]
    fn diff_turns_the_running_table_into_the_target() {
        let old =
            "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.1.0.1:80 -w 1\n-a -t 10.0.0.1:80 -r 10.1.0.2:80 -w 1\n\
                   -A -t 10.0.0.2:80 -s rr\n-a -t 10.0.0.2:80 -r 10.1.0.1:80\n";
        let new =
            "-A -t 10.0.0.1:80 -s wrr\n-a -t 10.0.0.1:80 -r 10.1.0.1:80 -w 3\n-a -t 10.0.0.1:80 -r 10.1.0.3:80 -w 1\n\
                   -A -u 10.0.0.3:53 -s rr\n-a -u 10.0.0.3:53 -r 10.1.0.1:53\n--set 100 20 30\n";
        let mut running = table(old);
        let target = table(new);
        let c = running
            .connect(crate::Protocol::Tcp, "1.2.3.4:5000".parse().unwrap(), "10.0.0.1:80".parse().unwrap(), 0)
            .unwrap();
        running.established(c.conn);
        let ops = diff(&running, &target, |_, _| false);
        let (changes, warnings) = apply(&mut running, ops, 0);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(changes.len(), 8, "{changes:?}");
        assert_eq!(admin::save(&running), admin::save(&target));
        assert_eq!(running.timeouts, target.timeouts);
        // The connection of the kept service is still there.
        assert_eq!(running.conns().count(), 1);
        assert!(diff(&running, &target, |_, _| false).is_empty());
    }

    #[test]
    fn health_checked_servers_are_left_to_their_check() {
        let mut running = table("-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.1.0.1:80 -w 1\n");
        let target =
            table("-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.1.0.1:80 -w 1\n-a -t 10.0.0.1:80 -r 10.1.0.2:80\n");
        // 10.1.0.2 was taken out by its check: the reload does not bring it back.
        let down: SocketAddr = "10.1.0.2:80".parse().unwrap();
        assert!(diff(&running, &target, |_, a| a == down).is_empty());
        let ops = diff(&running, &target, |_, _| false);
        assert_eq!(ops.len(), 1);
        let (changes, _) = apply(&mut running, ops, 0);
        assert_eq!(changes, ["added real server 10.1.0.2:80 to TCP  10.0.0.1:80 (weight 1)"]);
    }

    #[test]
    fn refused_operations_become_warnings() {
        let mut d = Director::new();
        let key = ServiceKey::tcp("10.0.0.1:80".parse().unwrap());
        let ops = vec![Command::DeleteService(key), Command::SetTimeouts(Default::default())];
        let (changes, warnings) = apply(&mut d, ops, 0);
        assert_eq!(changes.len(), 1);
        assert!(warnings[0].contains("No such service"), "{warnings:?}");
    }
}
