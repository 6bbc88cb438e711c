use super::*;
use proptest::prelude::*;

fn rm(xml_rm: &str, n: u32) -> Rm {
    let nodes: String = (1..=n).map(|i| format!(r#"<clusternode name="n{i}" nodeid="{i}"/>"#)).collect();
    let xml = format!(
        r#"<cluster name="t" config_version="1"><clusternodes>{nodes}</clusternodes><rm>{xml_rm}</rm></cluster>"#
    );
    cluster::conf::parse(&xml).expect("valid").rm.expect("rm")
}

fn view(me: u32, n: u32, up: &[u32]) -> View {
    let members: BTreeSet<u32> = up.iter().copied().collect();
    View {
        me,
        quorate: members.len() * 2 > n as usize,
        eligible: members.clone(),
        members,
        nodes: (1..=n).map(|i| (i, format!("n{i}"))).collect(),
    }
}

const WEB: &str = r#"<failoverdomains><failoverdomain name="d" ordered="1" restricted="1">
      <failoverdomainnode name="n1" priority="1"/><failoverdomainnode name="n2" priority="2"/>
    </failoverdomain></failoverdomains>
    <service name="web" domain="d"/>"#;

#[test]
fn first_record_then_best_node_starts() {
    let rm = rm(WEB, 3);
    let mut recs = BTreeMap::new();
    let v1 = view(1, 3, &[1, 2, 3]);
    let Step::Init(r) = decide(&rm, &v1, &recs, "web", false) else { panic!() };
    assert_eq!(r.state, State::Stopped);
    recs.insert("web".to_owned(), r);
    assert_eq!(decide(&rm, &v1, &recs, "web", false), Step::Start);
    assert_eq!(decide(&rm, &view(2, 3, &[1, 2, 3]), &recs, "web", false), Step::Idle);
    recs.insert("web".to_owned(), started(&claim(&r, 1), 1));
    assert_eq!(decide(&rm, &v1, &recs, "web", true), Step::Idle);
    // n1 lost: n2 takes over (after the fence), n3 (outside the restricted domain) does not.
    assert_eq!(decide(&rm, &view(2, 3, &[2, 3]), &recs, "web", false), Step::TakeOver { dead: 1 });
    assert_eq!(decide(&rm, &view(3, 3, &[2, 3]), &recs, "web", false), Step::Idle);
    let r = after_loss(&recs["web"]);
    assert_eq!((r.state, r.owner, r.last_owner), (State::Recovering, 0, 1));
    recs.insert("web".to_owned(), started(&claim(&r, 2), 2));
    // n1 back: n2 stops it for n1 (failback), then n1 starts it.
    assert_eq!(decide(&rm, &view(2, 3, &[1, 2, 3]), &recs, "web", true), Step::Stop(Hand::Relocate(1)));
    let h = handed(&stopping(&recs["web"]), 2, Hand::Relocate(1));
    recs.insert("web".to_owned(), h);
    assert_eq!(decide(&rm, &view(1, 3, &[1, 2, 3]), &recs, "web", false), Step::Start);
    assert_eq!(decide(&rm, &view(2, 3, &[1, 2, 3]), &recs, "web", false), Step::Idle);
}

#[test]
fn inquorate_stops_locally_and_requests_reach_the_owner() {
    let rm = rm(WEB, 3);
    let mut recs = BTreeMap::new();
    let r = started(&claim(&initial(&rm, "web"), 1), 1);
    recs.insert("web".to_owned(), r);
    assert_eq!(decide(&rm, &view(1, 3, &[1]), &recs, "web", true), Step::StopLocal);
    for (want, step) in [
        (Want::Disable, Step::Stop(Hand::Disable)),
        (Want::Stop, Step::Stop(Hand::Hold)),
        (Want::Restart, Step::Restart),
        (Want::Relocate, Step::Stop(Hand::Relocate(0))),
    ] {
        recs.insert("web".to_owned(), Record { want, ..r });
        assert_eq!(decide(&rm, &view(1, 3, &[1, 2, 3]), &recs, "web", true), step);
    }
    // Not running here after a daemon restart: adopt.
    recs.insert("web".to_owned(), r);
    assert_eq!(decide(&rm, &view(1, 3, &[1, 2, 3]), &recs, "web", false), Step::Adopt);
    // Held and disabled services are not placed; failed ones wait for -d.
    for st in
        [Record { flags: FLAG_HELD, ..handed(&r, 1, Hand::Hold) }, handed(&r, 1, Hand::Disable), stop_failed(&r, 1)]
    {
        recs.insert("web".to_owned(), st);
        assert_eq!(decide(&rm, &view(1, 3, &[1, 2, 3]), &recs, "web", false), Step::Idle, "{st:?}");
        assert_eq!(decide(&rm, &view(2, 3, &[1, 2, 3]), &recs, "web", false), Step::Idle, "{st:?}");
    }
}

#[test]
fn hard_dependency_stops_and_waits() {
    let rm = rm(r#"<service name="db"/><service name="app" depend="service:db"/>"#, 1);
    let v = view(1, 1, &[1]);
    let mut recs = BTreeMap::new();
    recs.insert("db".to_owned(), initial(&rm, "db"));
    recs.insert("app".to_owned(), initial(&rm, "app"));
    assert_eq!(decide(&rm, &v, &recs, "app", false), Step::Idle, "db not started yet");
    recs.insert("db".to_owned(), started(&claim(&recs["db"], 1), 1));
    assert_eq!(decide(&rm, &v, &recs, "app", false), Step::Start);
    recs.insert("app".to_owned(), started(&claim(&recs["app"], 1), 1));
    recs.insert("db".to_owned(), handed(&recs["db"], 1, Hand::Hold));
    assert_eq!(decide(&rm, &v, &recs, "app", true), Step::Stop(Hand::Release));
}

/// One simulated node.
#[derive(Debug, Clone, Default)]
struct SimNode {
    alive: bool,
    /// Killed and not yet fenced: its resources may still be up.
    unfenced: bool,
    running: BTreeSet<String>,
}

#[derive(Debug, Clone)]
enum Ev {
    /// Node i evaluates every service once (each step atomic, as under the DLM lock).
    Tick(usize),
    /// Node i is killed (its resources stay up until it is fenced).
    Kill(usize),
    /// The lowest live node's fenced fences every killed node.
    Fence,
    /// A killed and fenced node rejoins.
    Rejoin(usize),
    /// Starting fails on node i for the next start.
    FailStart(usize),
    /// An operator request on service s (index) with target node t (0: none), made on any
    /// live node (atomic, as under the lock).
    Request(usize, crate::request::Op, u32),
}

fn arb_ev(n: usize) -> impl Strategy<Value = Ev> {
    prop_oneof![
        6 => (0..n).prop_map(Ev::Tick),
        1 => (0..n).prop_map(Ev::Kill),
        2 => Just(Ev::Fence),
        1 => (0..n).prop_map(Ev::Rejoin),
        1 => (0..n).prop_map(Ev::FailStart),
        2 => (0..6usize, prop::sample::select(vec![
                crate::request::Op::Enable,
                crate::request::Op::Disable,
                crate::request::Op::Relocate,
                crate::request::Op::Restart,
                crate::request::Op::Stop,
                crate::request::Op::Freeze,
                crate::request::Op::Unfreeze,
            ]), 0..=n as u32)
            .prop_map(|(s, op, t)| Ev::Request(s, op, t)),
    ]
}

struct Sim {
    rm: Rm,
    n: u32,
    nodes: Vec<SimNode>,
    recs: BTreeMap<String, Record>,
    fail_start: BTreeSet<usize>,
}

impl Sim {
    fn up(&self) -> Vec<u32> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].alive).map(|i| i as u32 + 1).collect()
    }

    fn tick(&mut self, i: usize) {
        if !self.nodes[i].alive {
            return;
        }
        let me = i as u32 + 1;
        let v = view(me, self.n, &self.up());
        let names: Vec<String> = self.rm.services.iter().map(|s| s.name.clone()).collect();
        for name in names {
            let running = self.nodes[i].running.contains(&name);
            let step = decide(&self.rm, &v, &self.recs, &name, running);
            let r = self.recs.get(&name).copied().unwrap_or_default();
            match step {
                Step::Idle => {}
                Step::Init(r) => {
                    self.recs.insert(name, r);
                }
                Step::Start | Step::Adopt => {
                    if self.fail_start.remove(&i) {
                        self.recs.insert(name, start_failed(&claim(&r, me), me));
                    } else {
                        self.nodes[i].running.insert(name.clone());
                        self.recs.insert(name, started(&claim(&r, me), me));
                    }
                }
                Step::TakeOver { dead } => {
                    if !self.nodes[dead as usize - 1].unfenced {
                        self.recs.insert(name, after_loss(&r));
                    }
                }
                Step::Stop(h) => {
                    self.nodes[i].running.remove(&name);
                    self.recs.insert(name, handed(&stopping(&r), me, h));
                }
                Step::Restart => {
                    self.recs.insert(name, restarted(&r, me, false));
                }
                Step::StopLocal => {
                    self.nodes[i].running.remove(&name);
                }
            }
        }
    }

    /// At most one node (live, or dead but not fenced) runs each service.
    fn check_exclusive_ownership(&self) -> Result<(), TestCaseError> {
        for s in &self.rm.services {
            let holders: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| (self.nodes[i].alive || self.nodes[i].unfenced) && self.nodes[i].running.contains(&s.name))
                .collect();
            prop_assert!(holders.len() <= 1, "{} runs on {:?}; records {:?}", s.name, holders, self.recs);
        }
        Ok(())
    }
}

const SIM_RM: &str = r#"<failoverdomains>
      <failoverdomain name="ord" ordered="1" restricted="1">
        <failoverdomainnode name="n1" priority="1"/><failoverdomainnode name="n2" priority="2"/>
        <failoverdomainnode name="n3" priority="3"/>
      </failoverdomain>
      <failoverdomain name="unres" ordered="1" restricted="0"><failoverdomainnode name="n2" priority="1"/></failoverdomain>
      <failoverdomain name="nfb" ordered="1" nofailback="1">
        <failoverdomainnode name="n3" priority="1"/><failoverdomainnode name="n1" priority="2"/>
      </failoverdomain>
    </failoverdomains>
    <service name="web" domain="ord"/>
    <service name="mail" domain="unres"/>
    <service name="db" domain="nfb"/>
    <service name="batch" exclusive="1"/>
    <service name="any1"/><service name="any2"/>"#;

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Random kills, fences, rejoins and start failures on 4 nodes: a service never runs on
    /// two nodes at once; once everything is up, fenced and has settled, every service runs
    /// on exactly one node, ordered restricted services on their best node.
    #[test]
    fn simulated_cluster(evs in prop::collection::vec(arb_ev(4), 1..120)) {
        let n = 4;
        let mut sim = Sim {
            rm: rm(SIM_RM, n as u32),
            n: n as u32,
            nodes: vec![SimNode { alive: true, ..SimNode::default() }; n],
            recs: BTreeMap::new(),
            fail_start: BTreeSet::new(),
        };
        for ev in evs {
            match ev {
                Ev::Tick(i) => sim.tick(i),
                Ev::Kill(i) => {
                    if sim.nodes[i].alive {
                        sim.nodes[i].alive = false;
                        sim.nodes[i].unfenced = true;
                    }
                }
                Ev::Fence => {
                    if sim.nodes.iter().filter(|x| x.alive).count() * 2 > n {
                        for x in sim.nodes.iter_mut().filter(|x| x.unfenced) {
                            x.unfenced = false;
                            x.running.clear();
                        }
                    }
                }
                Ev::Rejoin(i) => {
                    if !sim.nodes[i].alive && !sim.nodes[i].unfenced {
                        sim.nodes[i].alive = true;
                    }
                }
                Ev::FailStart(i) => { sim.fail_start.insert(i); }
                Ev::Request(si, op, t) => {
                    let up = sim.up();
                    let target = if up.contains(&t) { t } else { 0 };
                    let name = sim.rm.services[si].name.clone();
                    if up.len() * 2 > n {
                        let r = sim.recs.get(&name).copied().unwrap_or_else(|| initial(&sim.rm, &name));
                        if let Ok(new) = crate::request::apply(&r, op, target, up.contains(&r.owner)) {
                            sim.recs.insert(name, new);
                        }
                    }
                }
            }
            sim.check_exclusive_ownership()?;
        }
        // Heal: everyone fenced and back, then settle.
        for x in sim.nodes.iter_mut() {
            if x.unfenced { x.unfenced = false; x.running.clear(); }
            x.alive = true;
        }
        sim.fail_start.clear();
        // Undo what operators left: unfreeze (and let pending requests run), clear failed
        // ones, enable everything.
        let apply_all = |sim: &mut Sim, op: crate::request::Op, only: Option<State>| {
            for svc in sim.rm.services.clone() {
                let r = sim.recs.get(&svc.name).copied().unwrap_or_else(|| initial(&sim.rm, &svc.name));
                if only.is_some_and(|st| st != r.state) {
                    continue;
                }
                if let Ok(new) = crate::request::apply(&r, op, 0, true) {
                    sim.recs.insert(svc.name.clone(), new);
                }
            }
        };
        for op in [
            (crate::request::Op::Unfreeze, None),
            (crate::request::Op::Disable, Some(State::Failed)),
            (crate::request::Op::Enable, None),
        ] {
            apply_all(&mut sim, op.0, op.1);
            for _ in 0..12 {
                for i in 0..n { sim.tick(i); }
                sim.check_exclusive_ownership()?;
            }
        }
        // A start failure leaves a node in `tried`, which placement honours until the service
        // starts somewhere; the operator's -e clears it. Do that for services left over.
        for _ in 0..12 {
            for i in 0..n { sim.tick(i); }
            sim.check_exclusive_ownership()?;
        }
        for (name, r) in sim.recs.clone() {
            if r.state == State::Recovering && r.tried != 0 {
                sim.recs.insert(name, Record { tried: 0, ..r });
            }
        }
        for _ in 0..12 {
            for i in 0..n { sim.tick(i); }
            sim.check_exclusive_ownership()?;
        }
        for s in &sim.rm.services {
            let r = sim.recs[&s.name];
            if s.name == "batch" && r.state != State::Started {
                // Exclusive: only when every node already runs something.
                let busy: BTreeSet<u32> = sim.recs.values().filter(|x| x.owner != 0).map(|x| x.owner).collect();
                prop_assert_eq!(busy.len(), n, "batch not started with a free node: {:?}", sim.recs);
                continue;
            }
            prop_assert_eq!(r.state, State::Started, "{} {:?}", s.name, r);
            let holders: Vec<usize> = (0..n).filter(|&i| sim.nodes[i].running.contains(&s.name)).collect();
            prop_assert_eq!(holders, vec![r.owner as usize - 1]);
        }
        // Best nodes, unless the exclusive service took that node while it was the only free one.
        let batch_owner = sim.recs["batch"].owner;
        if batch_owner != 1 {
            prop_assert_eq!(sim.recs["web"].owner, 1);
        }
        if batch_owner != 2 {
            prop_assert_eq!(sim.recs["mail"].owner, 2);
        }
        prop_assert!(batch_owner == 0 || sim.recs.iter().filter(|(k, r)| k.as_str() != "batch" && r.owner == batch_owner).count() == 0,
            "exclusive batch shares node {}", batch_owner);
    }
}
