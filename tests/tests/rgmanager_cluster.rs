//! The HA service manager on the real cluster stack: three nodes in network and mount
//! namespaces (corosync and fenced through `cman_tool join`, `dlm_controld` in cluster mode,
//! `rgmanager`), and a fourth host as the client. The web service is an `ip` plus an LSB
//! `script` that runs a real HTTP server (python3 -m http.server) answering with the name
//! of the node it runs on; the client asks it through the service's IP.
//!
//! Shown here: placement on the best node of an ordered restricted domain; `clusvcadm -r -m`
//! moves a service by hand; `-d`/`-e`, `-R`, `-Z`/`-U`, `-s`; an exclusive service refuses a
//! node already running one; a hard dependency; an independent subtree restarted alone; a
//! failing status check → restart in place, then relocation after max_restarts within the
//! window (nofailback keeps it there); rgmanager SIGKILLed → the services keep running and
//! the restarted daemon adopts them; rgmanager stopped cleanly → services go to the next
//! node (restricted domain with no member left → stopped; unrestricted → elsewhere) and fail
//! back when it returns; SIGKILL of the whole node → fenced fences it → the next node in
//! priority answers on the IP (measured). Also: 50 services placed at start and an
//! inquorate partition stopping its services; a 2-node split never serving the IP from both
//! sides; a clusterfs (gfs over gnbd://) and an HA gnbd export following their node.
//!
//! Not shown (DLM limit, see rgmanager/docs/design.md): a node returning after it was
//! killed and fenced.
//!
//! Needs root (namespaces), corosync, python3 and curl (scripts/deps.sh installs them).

use std::time::{Duration, Instant};

use gnbd_tests::corosync::{fenced_by, node_name, Nodes};
use gnbd_tests::dlmd::ClusterDlms;
use gnbd_tests::rgmanager::{write_exec, RgCluster, FENCE_OK};
use gnbd_tests::{require_tool, OutputExt};

const TOKEN_MS: u32 = 1000;

/// The totem token timeout: `CLUSTER_TOKEN_MS` to measure with another one.
fn token_ms() -> u32 {
    std::env::var("CLUSTER_TOKEN_MS").ok().and_then(|t| t.parse().ok()).unwrap_or(TOKEN_MS)
}
const MEMBERS: usize = 3;
/// The client host (after the members).
const CLIENT: usize = 3;
/// The web service's address.
const WEB_IP: &str = "198.18.0.100";
/// The domain-less service's address.
const ANY_IP: &str = "198.18.0.101";

/// The LSB script of the web services: an HTTP server on $1's address answering with the
/// node's name (from /etc/cluster/nodename, each node's private file).
fn web_script(ip: &str, tag: &str) -> String {
    format!(
        r#"#!/bin/sh
PID=/run/{tag}.pid
case "$1" in
start)
  if [ -e $PID ] && kill -0 "$(cat $PID)" 2>/dev/null; then exit 0; fi
  mkdir -p /run/{tag}
  cat /etc/cluster/nodename > /run/{tag}/index.html
  /usr/bin/python3 -m http.server 80 --bind {ip} --directory /run/{tag} >/dev/null 2>&1 &
  echo $! > $PID
  for i in $(seq 1 100); do
    curl -s -o /dev/null --max-time 1 http://{ip}/ && exit 0
    sleep 0.1
  done
  echo "http server did not come up"; exit 1;;
stop)
  if [ -e $PID ]; then kill "$(cat $PID)" 2>/dev/null; rm -f $PID; fi
  exit 0;;
status)
  [ -e $PID ] && kill -0 "$(cat $PID)" 2>/dev/null || exit 3
  curl -s -o /dev/null --max-time 2 http://{ip}/ || exit 1
  exit 0;;
*) exit 2;;
esac
"#
    )
}

/// A service whose status fails while /run/flaky.fail exists (start removes it).
const FLAKY: &str = r#"#!/bin/sh
case "$1" in
start) rm -f /run/flaky.fail; touch /run/flaky.up; exit 0;;
stop) rm -f /run/flaky.up; exit 0;;
status) [ -e /run/flaky.fail ] && exit 1; [ -e /run/flaky.up ] || exit 3; exit 0;;
*) exit 2;;
esac
"#;

/// The independent part of service "sub": its status fails while /run/part.fail exists;
/// every start is counted in /run/part.starts.
const PART: &str = r#"#!/bin/sh
case "$1" in
start) rm -f /run/part.fail; echo x >> /run/part.starts; exit 0;;
stop) exit 0;;
status) [ -e /run/part.fail ] && exit 1; exit 0;;
*) exit 2;;
esac
"#;

/// A service whose stop fails while /run/stuck.nostop exists.
const STUCK: &str = r#"#!/bin/sh
case "$1" in
start) touch /run/stuck.up; exit 0;;
stop) [ -e /run/stuck.nostop ] && { echo "cannot stop"; exit 1; }; rm -f /run/stuck.up; exit 0;;
status) [ -e /run/stuck.up ] || exit 3; exit 0;;
*) exit 2;;
esac
"#;

fn conf(nodes: &Nodes, dir: &std::path::Path) -> String {
    let fence = |i: usize| {
        format!(r#"<fence><method name="ok"><device name="ok" nodename="{}"/></method></fence>"#, node_name(i))
    };
    let extra = format!(
        r#"<fence_daemon post_fail_delay="0" post_join_delay="120"/>
  <fencedevices><fencedevice name="ok" agent="{dir}/fence_ok"/></fencedevices>
  <rm>
    <failoverdomains>
      <failoverdomain name="web" ordered="1" restricted="1">
        <failoverdomainnode name="node1" priority="1"/>
        <failoverdomainnode name="node2" priority="2"/>
      </failoverdomain>
      <failoverdomain name="only1" restricted="1"><failoverdomainnode name="node1" priority="1"/></failoverdomain>
      <failoverdomain name="prefer1" ordered="1" restricted="0"><failoverdomainnode name="node1" priority="1"/></failoverdomain>
      <failoverdomain name="on3" ordered="1" restricted="1" nofailback="1">
        <failoverdomainnode name="node3" priority="1"/><failoverdomainnode name="node2" priority="2"/>
      </failoverdomain>
    </failoverdomains>
    <service name="www" domain="web" recovery="relocate">
      <ip address="{WEB_IP}/24" monitor_link="1">
        <action name="status" interval="2"/>
        <script name="httpd" file="{dir}/web.sh"/>
      </ip>
    </service>
    <service name="any">
      <ip address="{ANY_IP}/24"><script name="anyd" file="{dir}/any.sh"/></ip>
    </service>
    <service name="solo" domain="only1"><script name="solo" file="{dir}/flaky.sh"/></service>
    <service name="roam" domain="prefer1"><script name="roam" file="/bin/true"/></service>
    <service name="flaky" domain="on3" max_restarts="1" restart_expire_time="300">
      <script name="flaky" file="{dir}/flaky.sh"><action name="status" interval="1"/></script>
    </service>
    <service name="excl" exclusive="1" autostart="0"><script name="excl" file="/bin/true"/></service>
    <service name="db"><script name="db" file="/bin/true"/></service>
    <service name="stuck"><script name="stuck" file="{dir}/stuck.sh"/></service>
    <service name="app" depend="service:db"><script name="app" file="/bin/true"/></service>
    <service name="sub" domain="on3">
      <script name="base" file="/bin/true">
        <script name="part" file="{dir}/part.sh" __independent_subtree="1"><action name="status" interval="1"/></script>
      </script>
    </service>
  </rm>"#,
        dir = dir.display()
    );
    nodes.conf_with("ha", 1, token_ms(), fence, &extra)
}

#[test]
fn web_service_fails_over_fails_back_and_obeys_clusvcadm() {
    require_tool("corosync");
    require_tool("curl");
    let nodes = Nodes::with_hosts(MEMBERS, 1);
    let dir = nodes.dir().join("scripts");
    std::fs::create_dir_all(&dir).unwrap();
    write_exec(&dir.join("fence_ok"), FENCE_OK);
    write_exec(&dir.join("web.sh"), &web_script(WEB_IP, "www"));
    write_exec(&dir.join("any.sh"), &web_script(ANY_IP, "any"));
    write_exec(&dir.join("flaky.sh"), FLAKY);
    write_exec(&dir.join("part.sh"), PART);
    write_exec(&dir.join("stuck.sh"), STUCK);
    nodes.write_conf(&conf(&nodes, &dir));
    for i in 0..MEMBERS {
        std::fs::write(nodes.path(i, "etc/nodename"), node_name(i)).unwrap();
    }
    nodes.join_all();
    nodes.wait_formed();
    let dlms = ClusterDlms::start(&nodes);
    let mut rg = RgCluster::new(nodes, dlms);
    let t0 = Instant::now();
    for i in 0..MEMBERS {
        rg.start_rgmanager(i, "rgmanager.log");
    }

    // Placement: best node of the ordered restricted domain; services everywhere they may.
    rg.wait_service(2, "www", "node1", "started", 60);
    eprintln!("MEASURE rgmanager started -> www started on node1: {:?}", t0.elapsed());
    rg.wait_answer(WEB_IP, "node1", 30);
    rg.wait_service(0, "solo", "node1", "started", 30);
    rg.wait_service(0, "roam", "node1", "started", 30);
    // node2 or node3, whichever rgmanager came first (nofailback keeps it there).
    let deadline = Instant::now() + Duration::from_secs(30);
    let flaky_on = loop {
        let (o, s) = rg.service(0, "flaky");
        if s == "started" {
            break o;
        }
        assert!(Instant::now() < deadline, "flaky never started");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(flaky_on == "node2" || flaky_on == "node3", "flaky on {flaky_on}");
    rg.wait_service(0, "excl", "none", "disabled", 30);
    let (any_owner, _) = rg.service(0, "any");
    assert_ne!(any_owner, "none");

    // clustat: membership and services.
    let text = rg.nodes.must(1, "clustat", &[]);
    assert!(text.contains(" node2                         2 Online, Local, rgmanager\n"), "{text}");
    assert!(text.contains(" service:www                    node1                          started\n"), "{text}");

    // Relocate by hand (a service without a domain, so nothing pulls it back).
    let target = if any_owner == "node2" { "node3" } else { "node2" };
    let t = Instant::now();
    let out = rg.clusvcadm(2, &["-r", "any", "-m", target]);
    out.assert_success("clusvcadm -r any");
    assert!(
        out.stdout_str().contains(&format!("Trying to relocate service:any to {target}...Success")),
        "{}",
        out.describe()
    );
    assert!(out.stdout_str().contains(&format!("service:any is now running on {target}")), "{}", out.describe());
    rg.wait_answer(ANY_IP, target, 30);
    eprintln!("MEASURE clusvcadm -r any -m {target} -> answering there: {:?}", t.elapsed());

    // -d and -e.
    rg.clusvcadm(1, &["-d", "www"]).assert_success("clusvcadm -d www");
    rg.wait_service(1, "www", "none", "disabled", 5);
    assert_eq!(rg.get(WEB_IP), None, "a disabled service still answers");
    let out = rg.clusvcadm(1, &["-e", "www"]);
    out.assert_success("clusvcadm -e www");
    assert!(out.stdout_str().contains("service:www is now running on node1"), "{}", out.describe());
    rg.wait_answer(WEB_IP, "node1", 30);
    // Unknown service, and exclusive on a busy node.
    rg.clusvcadm(0, &["-e", "nosuch"]).assert_code(4, "clusvcadm -e nosuch");
    let out = rg.clusvcadm(0, &["-e", "excl", "-m", "node1"]);
    out.assert_code(16, "exclusive on a busy node");
    assert!(out.stderr_str().contains("cannot run exclusively"), "{}", out.describe());

    // -R restarts in place (a new server process); -Z freezes (requests refused, RG_EFROZEN)
    // until -U; -s stops and holds it stopped until -e.
    let pid = std::fs::read_to_string(rg.nodes.path(0, "run/www.pid")).unwrap();
    rg.clusvcadm(2, &["-R", "www"]).assert_success("clusvcadm -R www");
    assert_ne!(std::fs::read_to_string(rg.nodes.path(0, "run/www.pid")).unwrap(), pid, "-R did not restart");
    rg.wait_answer(WEB_IP, "node1", 30);
    rg.clusvcadm(2, &["-Z", "www"]).assert_success("clusvcadm -Z www");
    let l = rg.nodes.must(2, "clustat", &["-s", "www"]);
    assert!(l.contains("started [frozen]"), "{l}");
    rg.clusvcadm(2, &["-r", "www", "-m", "node2"]).assert_code(11, "relocate a frozen service");
    rg.clusvcadm(2, &["-U", "www"]).assert_success("clusvcadm -U www");
    rg.clusvcadm(2, &["-s", "www"]).assert_success("clusvcadm -s www");
    rg.wait_service(2, "www", "none", "stopped", 5);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(rg.service(2, "www"), ("none".to_owned(), "stopped".to_owned()), "a held service was started");
    assert_eq!(rg.get(WEB_IP), None);
    rg.clusvcadm(2, &["-e", "www"]).assert_success("clusvcadm -e www");
    rg.wait_answer(WEB_IP, "node1", 30);
    // clustat's filters.
    let m = rg.nodes.must(2, "clustat", &["-m", "node2"]);
    assert!(m.contains(" node2 ") && !m.contains(" node1 ") && !m.contains("service:"), "{m}");
    rg.nodes.run(2, "clustat", &["-s", "nosuch"]).assert_code(1, "clustat -s nosuch");

    // A service that cannot be stopped is failed on its owner and nobody starts it until
    // clusvcadm -d clears it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stuck_on = loop {
        let (o, st) = rg.service(2, "stuck");
        if st == "started" {
            break o;
        }
        assert!(Instant::now() < deadline, "stuck never started");
        std::thread::sleep(Duration::from_millis(100));
    };
    let stuck_i: usize = stuck_on.trim_start_matches("node").parse::<usize>().unwrap() - 1;
    std::fs::write(rg.nodes.path(stuck_i, "run/stuck.nostop"), b"").unwrap();
    let out = rg.clusvcadm(2, &["-r", "stuck"]);
    out.assert_code(2, "relocating a service that cannot stop");
    assert!(out.stderr_str().contains("Aborted; service failed"), "{}", out.describe());
    assert_eq!(rg.service(2, "stuck"), (stuck_on.clone(), "failed".to_owned()));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(rg.service(2, "stuck"), (stuck_on.clone(), "failed".to_owned()), "a failed service moved");
    rg.clusvcadm(2, &["-e", "stuck"]).assert_code(8, "enable a failed service");
    std::fs::remove_file(rg.nodes.path(stuck_i, "run/stuck.nostop")).unwrap();
    rg.clusvcadm(2, &["-d", "stuck"]).assert_success("clusvcadm -d stuck");
    rg.wait_service(2, "stuck", "none", "disabled", 5);
    rg.clusvcadm(2, &["-e", "stuck"]).assert_success("clusvcadm -e stuck");

    // -l: node3 takes no services (clustat shows it without rgmanager); -u: back.
    let out = rg.clusvcadm(2, &["-l"]);
    out.assert_success("clusvcadm -l");
    assert!(out.stdout_str().contains("Resource groups locked"), "{}", out.describe());
    rg.nodes.wait_output(0, "clustat", &[], |c| c.contains(" node3                         3 Online\n"));
    rg.clusvcadm(2, &["-u"]).assert_success("clusvcadm -u");
    rg.nodes.wait_output(0, "clustat", &[], |c| c.contains(" node3                         3 Online, rgmanager\n"));

    // A hard dependency: app runs only while db does.
    let deadline = Instant::now() + Duration::from_secs(30);
    while rg.service(2, "app").1 != "started" {
        assert!(Instant::now() < deadline, "app never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    rg.clusvcadm(2, &["-d", "db"]).assert_success("clusvcadm -d db");
    rg.wait_service(2, "app", "none", "stopped", 30);
    rg.clusvcadm(2, &["-e", "db"]).assert_success("clusvcadm -e db");
    let deadline = Instant::now() + Duration::from_secs(30);
    while rg.service(2, "app").1 != "started" {
        assert!(Instant::now() < deadline, "app did not start again after db");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A failed check inside an __independent_subtree restarts only that subtree: the
    // service is not restarted (Restarts stays 0) and its part is started once more.
    let deadline = Instant::now() + Duration::from_secs(30);
    let sub_on = loop {
        let (o, st) = rg.service(0, "sub");
        if st == "started" {
            break o;
        }
        assert!(Instant::now() < deadline, "sub never started");
        std::thread::sleep(Duration::from_millis(100));
    };
    let sub_i: usize = sub_on.trim_start_matches("node").parse::<usize>().unwrap() - 1;
    std::fs::write(rg.nodes.path(sub_i, "run/part.fail"), b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(rg.nodes.path(sub_i, "run/part.starts")).unwrap_or_default().lines().count() < 2 {
        assert!(Instant::now() < deadline, "the independent subtree was not restarted");
        std::thread::sleep(Duration::from_millis(100));
    }
    let l = rg.nodes.must(0, "clustat", &["-l", "-s", "sub"]);
    assert!(l.contains("Restarts        : 0") && l.contains(&format!("Owner           : {sub_on}")), "{l}");
    assert!(!rg.nodes.path(sub_i, "run/part.fail").exists());

    // A failing status check: restart in place, then (max_restarts=1) relocation.
    let (from, to) = if flaky_on == "node3" { (2, "node2") } else { (1, "node3") };
    std::fs::write(rg.nodes.path(from, "run/flaky.fail"), b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = rg.nodes.must(0, "clustat", &["-l", "-s", "flaky"]);
        if l.contains("Restarts        : 1") && l.contains(&format!("Owner           : {flaky_on}")) {
            break;
        }
        assert!(Instant::now() < deadline, "flaky never restarted in place:\n{l}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(rg.nodes.path(from, "run/flaky.fail"), b"").unwrap();
    rg.wait_service(0, "flaky", to, "started", 30);

    // rgmanager itself dies (SIGKILL) on node1: the services keep running, and the restarted
    // daemon finds itself their owner and adopts them without starting anything twice.
    let pid_before = std::fs::read_to_string(rg.nodes.path(0, "run/www.pid")).unwrap();
    rg.stop_rgmanager(0, "KILL");
    assert_eq!(rg.get(WEB_IP).as_deref(), Some("node1"), "www stopped answering when rgmanager died");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(rg.service(1, "www"), ("node1".to_owned(), "started".to_owned()), "someone took www meanwhile");
    rg.start_rgmanager(0, "rgmanager2.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(rg.nodes.path(0, "log/rgmanager2.log")).unwrap_or_default();
        if log.contains("running here already: adopted service=\"www\"") {
            break;
        }
        assert!(Instant::now() < deadline, "www never adopted:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid_after = std::fs::read_to_string(rg.nodes.path(0, "run/www.pid")).unwrap();
    assert_eq!(pid_before, pid_after, "the HTTP server was restarted");
    rg.wait_service(1, "www", "node1", "started", 5);

    // rgmanager stops cleanly on node1 (SIGTERM): its services go to the next nodes (www to
    // node2, next in priority; roam anywhere: its domain is unrestricted); solo's restricted
    // domain has no other member, so it stays stopped. Then node1's rgmanager returns: www
    // and roam fail back, solo starts again.
    let t = Instant::now();
    rg.stop_rgmanager(0, "TERM");
    rg.wait_answer(WEB_IP, "node2", 60);
    eprintln!("MEASURE rgmanager stopped on node1 -> www answering from node2: {:?}", t.elapsed());
    rg.wait_service(1, "solo", "none", "stopped", 30);
    let (o, s) = rg.service(1, "roam");
    assert!(s == "started" && (o == "node2" || o == "node3"), "roam is {s} on {o}");
    let t = Instant::now();
    rg.start_rgmanager(0, "rgmanager3.log");
    rg.wait_answer(WEB_IP, "node1", 60);
    eprintln!("MEASURE rgmanager back on node1 -> www failed back: {:?}", t.elapsed());
    rg.wait_service(1, "roam", "node1", "started", 30);
    rg.wait_service(1, "solo", "node1", "started", 30);
    // flaky's domain is nofailback: it stayed where its relocation put it.
    assert_eq!(rg.service(1, "flaky"), (to.to_owned(), "started".to_owned()));

    // SIGKILL node1 entirely: fenced fences it, then node2 (next in priority) answers on the IP.
    let killed = Instant::now();
    rg.nodes.kill(0);
    let took = rg.wait_answer(WEB_IP, "node2", 120);
    let fs = rg.nodes.fence_status(1);
    assert!(fenced_by(&fs, "node1").is_some(), "www moved before node1 was fenced: {fs:#}");
    eprintln!(
        "MEASURE SIGKILL node1 -> www answering from node2: {:?} (token {} ms, fence agent exits at once)",
        took,
        token_ms()
    );
    let log = std::fs::read_to_string(rg.nodes.path(1, "log/rgmanager.log")).unwrap();
    assert!(log.contains("owner fenced; recovering the service service=\"www\" node=1"), "{log}");
    // Restricted domain with its only member down: not run elsewhere; unrestricted: runs
    // elsewhere.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (o, s) = rg.service(1, "roam");
        if s == "started" && (o == "node2" || o == "node3") {
            break;
        }
        assert!(Instant::now() < deadline, "roam is {s} on {o}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (o, s) = rg.service(1, "solo");
    assert!(o == "none" && (s == "recovering" || s == "stopped"), "solo is {s} on {o}");
    let out = rg.clusvcadm(1, &["-e", "solo"]);
    out.assert_code(15, "enable with the restricted domain offline");
    assert!(out.stderr_str().contains("restricted failover domain offline"), "{}", out.describe());
    eprintln!("node1 killed {:?} ago", killed.elapsed());
}

/// 50 services (a script each, to measure placement rather than the agents) on 3 nodes: time
/// from starting the three rgmanagers to every service started, and where they went.
#[test]
fn fifty_services_are_placed_at_start() {
    require_tool("corosync");
    let nodes = Nodes::new(MEMBERS);
    let dir = nodes.dir().join("scripts");
    std::fs::create_dir_all(&dir).unwrap();
    write_exec(&dir.join("fence_ok"), FENCE_OK);
    let fence = |i: usize| {
        format!(r#"<fence><method name="ok"><device name="ok" nodename="{}"/></method></fence>"#, node_name(i))
    };
    let services: String =
        (0..50).map(|i| format!(r#"<service name="s{i}"><script name="s{i}" file="/bin/true"/></service>"#)).collect();
    let extra = format!(
        r#"<fence_daemon post_fail_delay="0" post_join_delay="120"/>
  <fencedevices><fencedevice name="ok" agent="{}/fence_ok"/></fencedevices>
  <rm>{services}</rm>"#,
        dir.display()
    );
    nodes.write_conf(&nodes.conf_with("fifty", 1, TOKEN_MS, fence, &extra));
    nodes.join_all();
    nodes.wait_formed();
    let dlms = ClusterDlms::start(&nodes);
    let mut rg = RgCluster::new(nodes, dlms);
    for i in 0..MEMBERS {
        let sock = rg.nodes.path(i, "run/dlm/dlm.sock");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "node{}: dlm_controld never made its socket", i + 1);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // All three at once; the clock runs from their start.
    let t = Instant::now();
    for i in 0..MEMBERS {
        rg.rgs[i] = Some(rg.nodes.spawn(i, "rgmanager", &["-f", "--tick-ms", "200"], "rgmanager.log"));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let per_node = loop {
        let x = rg.nodes.must(0, "clustat", &["-x"]);
        let started = x.matches("state_str=\"started\"").count();
        if started == 50 {
            break (1..=MEMBERS).map(|n| x.matches(&format!(" owner=\"node{n}\"")).count()).collect::<Vec<_>>();
        }
        assert!(Instant::now() < deadline, "only {started} of 50 started:\n{x}");
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "MEASURE 50 services on 3 nodes: all started {:?} after starting rgmanager; per node {per_node:?}",
        t.elapsed()
    );
    assert_eq!(per_node.iter().sum::<usize>(), 50);

    // A service added at run time: a newer cluster.conf installed with `cman_tool version -r`
    // reaches every rgmanager, which places it.
    let services51 = format!(r#"{services}<service name="late"><script name="late" file="/bin/true"/></service>"#);
    let extra2 = extra.replace(&services, &services51);
    rg.nodes.write_conf_on(0, &rg.nodes.conf_with("fifty", 2, TOKEN_MS, fence, &extra2));
    rg.nodes.must(0, "cman_tool", &["version", "-r"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let x = rg.nodes.must(1, "clustat", &["-x"]);
        if x.contains(r#"name="service:late" state="112""#) {
            break;
        }
        assert!(Instant::now() < deadline, "the new service was never started:\n{x}");
        std::thread::sleep(Duration::from_millis(100));
    }
    rg.clusvcadm(1, &["-d", "late"]).assert_success("clusvcadm -d late");

    // node3 alone on its side of a partition: inquorate, it stops every service it runs; the
    // quorate pair fences it and starts them.
    let cut = Instant::now();
    rg.nodes.partition(&[2]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let x = rg.nodes.must(0, "clustat", &["-x"]);
        let on_pair = (1..=2).map(|n| x.matches(&format!(" owner=\"node{n}\"")).count()).sum::<usize>();
        if x.matches("state_str=\"started\"").count() == 50 && on_pair == 50 {
            break;
        }
        assert!(Instant::now() < deadline, "node3's services never moved:\n{x}");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("MEASURE partition of node3 -> its {} services started on node1/node2: {:?}", per_node[2], cut.elapsed());
    // (This test's fence agent does not power node3 off, so node3 still runs and stops its
    // services itself once its corosync reports the quorum lost.)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(rg.nodes.path(2, "log/rgmanager.log")).unwrap();
        if log.matches("no quorum: stopping").count() == per_node[2] {
            break;
        }
        assert!(Instant::now() < deadline, "node3 did not stop its {} services:\n{log}", per_node[2]);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(fenced_by(&rg.nodes.fence_status(0), "node3").is_some());
}

/// A fence agent that powers the victim off through the test (it asks by creating
/// `fence-VICTIM` in its directory and waits for `fenced-VICTIM`). Fencing node2 waits 3 s
/// first, so in a fence race node1 (which runs the service) loses.
fn power_fence_agent(dir: &std::path::Path) -> String {
    format!(
        r#"#!/bin/sh
victim=""
while read -r line; do
  case "$line" in nodename=*) victim="${{line#nodename=}}";; action=*) action="${{line#action=}}";; esac
done
case "$action" in off|reboot|"") ;; *) exit 0;; esac
[ "$victim" = node2 ] && sleep 3
touch {d}/fence-$victim
for i in $(seq 1 600); do [ -e {d}/fenced-$victim ] && exit 0; sleep 0.1; done
exit 1
"#,
        d = dir.display()
    )
}

/// A 2-node cluster (two_node) split in two: both halves stay quorate and race to fence each
/// other; the loser is powered off. Sampled all along from inside both nodes, the service's
/// IP is never served by both, and in the end the survivor serves it.
#[test]
fn two_node_split_never_runs_the_service_twice() {
    require_tool("corosync");
    require_tool("curl");
    let nodes = Nodes::new(2);
    let dir = nodes.dir().join("scripts");
    std::fs::create_dir_all(&dir).unwrap();
    write_exec(&dir.join("fence_power"), &power_fence_agent(&dir));
    write_exec(&dir.join("web.sh"), &web_script(WEB_IP, "www"));
    let fence = |i: usize| {
        format!(r#"<fence><method name="power"><device name="power" nodename="{}"/></method></fence>"#, node_name(i))
    };
    let extra = format!(
        r#"<cman two_node="1" expected_votes="1"/><fence_daemon post_fail_delay="0" post_join_delay="120"/>
  <fencedevices><fencedevice name="power" agent="{d}/fence_power"/></fencedevices>
  <rm>
    <failoverdomains><failoverdomain name="pair" ordered="1">
      <failoverdomainnode name="node1" priority="1"/><failoverdomainnode name="node2" priority="2"/>
    </failoverdomain></failoverdomains>
    <service name="www" domain="pair">
      <ip address="{WEB_IP}/24"><script name="httpd" file="{d}/web.sh"/></ip>
    </service>
  </rm>"#,
        d = dir.display()
    );
    nodes.write_conf(&nodes.conf_with("pair", 1, TOKEN_MS, fence, &extra));
    for i in 0..2 {
        std::fs::write(nodes.path(i, "etc/nodename"), node_name(i)).unwrap();
    }
    nodes.join_all();
    nodes.wait_formed();
    let dlms = ClusterDlms::start(&nodes);
    let mut rg = RgCluster::new(nodes, dlms);
    for i in 0..2 {
        rg.start_rgmanager(i, "rgmanager.log");
    }
    rg.wait_service(1, "www", "node1", "started", 60);

    let stop = std::sync::atomic::AtomicBool::new(false);
    let served_by = |i: usize| {
        let out = rg.nodes.run(i, "curl", &["-s", "--max-time", "1", &format!("http://{WEB_IP}/")]);
        out.status.success() && out.stdout_str().trim() == node_name(i)
    };
    let (samples, both) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let (mut n, mut both) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let a = served_by(0);
                let b = served_by(1);
                // The first node again: a sample counts as "both" only if node1 served before
                // and after node2 did.
                if a && b && served_by(0) {
                    both.push(n);
                }
                n += 1;
            }
            (n, both)
        });
        let fencer = s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                for (i, name) in ["node1", "node2"].iter().enumerate() {
                    if dir.join(format!("fence-{name}")).exists() {
                        rg.nodes.kill(i);
                        std::fs::write(dir.join(format!("fenced-{name}")), b"").unwrap();
                        return i;
                    }
                }
                assert!(Instant::now() < deadline, "nobody asked for a fence");
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        std::thread::sleep(Duration::from_secs(1));
        let split = Instant::now();
        rg.nodes.partition(&[1]);
        let victim = fencer.join().expect("fencer");
        assert_eq!(victim, 0, "node2's fence waits 3 s, so node1 is powered off first");
        let deadline = Instant::now() + Duration::from_secs(120);
        while !served_by(1) {
            assert!(Instant::now() < deadline, "node2 never served www after the split");
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("MEASURE 2-node split -> www served by the survivor: {:?}", split.elapsed());
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sampler.join().expect("sampler")
    });
    assert!(both.is_empty(), "www was served by both nodes at samples {both:?} of {samples}");
    assert!(samples > 10, "only {samples} samples");
    rg.wait_service(1, "www", "node2", "started", 10);
}

/// Storage services: a `clusterfs` (gfs, lock_nolock: one node at a time) mounted from
/// `gnbd://STORAGE/shared` on the node that runs it, and an HA export (a `gnbd_export` on
/// each node's own gnbd_serv, plus an IP) that a client reaches through the IP. node1 is
/// SIGKILLed: both services move to node2 after the fence; the file written on node1 is
/// read on node2 (after gfs replays the journal) and the client reads back through the IP
/// what it wrote before the failover.
#[test]
fn storage_services_follow_their_node() {
    require_tool("corosync");
    require_tool("qemu-io");
    const STORAGE: usize = 4;
    const HA_IP: &str = "198.18.0.102";
    let nodes = Nodes::with_hosts(MEMBERS, 2);
    let storage = gnbd_tests::corosync::StorageHost::start(&nodes, STORAGE);
    let dir = nodes.dir().join("scripts");
    std::fs::create_dir_all(&dir).unwrap();
    write_exec(&dir.join("fence_ok"), FENCE_OK);
    let img = nodes.dir().join("storage/shared.img");
    std::fs::File::create(&img).unwrap().set_len(128 << 20).unwrap();
    gnbd_tests::run_timeout(
        gnbd_tests::gnbd_export_cmd(&storage.state).args(["-e", "shared", "-d"]).arg(&img),
        Duration::from_secs(60),
    )
    .assert_success("gnbd_export -e shared");
    let dev = format!("gnbd://{}/shared", storage.addr);
    nodes.must(0, "mkfs_gfs", &["-q", "-p", "lock_nolock", "-t", "ha:data", "-j", "1", &dev]);
    let ha_img = nodes.dir().join("ha.img");
    std::fs::File::create(&ha_img).unwrap().set_len(16 << 20).unwrap();
    let fence = |i: usize| {
        format!(r#"<fence><method name="ok"><device name="ok" nodename="{}"/></method></fence>"#, node_name(i))
    };
    let extra = format!(
        r#"<fence_daemon post_fail_delay="0" post_join_delay="120"/>
  <fencedevices><fencedevice name="ok" agent="{d}/fence_ok"/></fencedevices>
  <rm>
    <failoverdomains><failoverdomain name="pair" ordered="1" restricted="1">
      <failoverdomainnode name="node1" priority="1"/><failoverdomainnode name="node2" priority="2"/>
    </failoverdomain></failoverdomains>
    <service name="fs" domain="pair">
      <clusterfs name="data" device="{dev}" mountpoint="/run/gfsdata" fstype="gfs" force_unmount="1"
                 options="log=/var/log/cluster/gfs.log"/>
    </service>
    <service name="store" domain="pair">
      <ip address="{HA_IP}/24"/>
      <gnbd_export name="ha" device="{img}" state_dir="/run/gnbd-ha"/>
    </service>
  </rm>"#,
        d = dir.display(),
        img = ha_img.display()
    );
    nodes.write_conf(&nodes.conf_with("ha", 1, TOKEN_MS, fence, &extra));
    // Every member runs its own gnbd_serv (state in its private /run).
    let mut servers = Vec::new();
    for i in 0..MEMBERS {
        nodes.must(i, "mkdir", &["-p", "/run/gnbd-ha"]);
        servers.push(nodes.spawn(i, "gnbd_serv", &["--foreground", "--state-dir", "/run/gnbd-ha"], "gnbd_serv.log"));
        let log = nodes.path(i, "log/gnbd_serv.log");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("ready") {
            assert!(Instant::now() < deadline, "gnbd_serv on node{} not ready", i + 1);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    nodes.join_all();
    nodes.wait_formed();
    let dlms = ClusterDlms::start(&nodes);
    let mut rg = RgCluster::new(nodes, dlms);
    for i in 0..MEMBERS {
        rg.start_rgmanager(i, "rgmanager.log");
    }
    rg.wait_service(1, "fs", "node1", "started", 60);
    rg.wait_service(1, "store", "node1", "started", 60);

    // The filesystem is mounted on node1 only; write a file there.
    let mounts = rg.nodes.must(0, "cat", &["/proc/self/mountinfo"]);
    assert!(mounts.contains(" /run/gfsdata "), "{mounts}");
    let mounts = rg.nodes.must(1, "cat", &["/proc/self/mountinfo"]);
    assert!(!mounts.contains(" /run/gfsdata "), "{mounts}");
    rg.nodes.must(0, "sh", &["-c", "echo written-on-node1 > /run/gfsdata/f && sync /run/gfsdata/f"]);
    // The client writes through the service IP.
    let url = format!("nbd://{HA_IP}/ha");
    let out = rg.nodes.run(CLIENT, "qemu-io", &["-f", "raw", "-c", "write -P 0x5a 0 1M", &url]);
    out.assert_success("qemu-io write through the service IP");

    let killed = Instant::now();
    rg.nodes.kill(0);
    rg.wait_service(1, "store", "node2", "started", 120);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = rg.nodes.run(CLIENT, "qemu-io", &["-f", "raw", "-c", "read -P 0x5a 0 1M", &url]);
        if out.status.success() && !out.stdout_str().contains("verification failed") {
            break;
        }
        assert!(Instant::now() < deadline, "the export never answered with the data: {}", out.describe());
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("MEASURE SIGKILL node1 -> HA export read back through its IP on node2: {:?}", killed.elapsed());
    rg.wait_service(1, "fs", "node2", "started", 60);
    assert_eq!(rg.nodes.must(1, "cat", &["/run/gfsdata/f"]).trim(), "written-on-node1");
    eprintln!("MEASURE SIGKILL node1 -> gfs mounted on node2 with the file: {:?}", killed.elapsed());
    // Clean stop on node2 unmounts it.
    rg.stop_rgmanager(1, "TERM");
    let mounts = rg.nodes.must(1, "cat", &["/proc/self/mountinfo"]);
    assert!(!mounts.contains(" /run/gfsdata "), "{mounts}");
    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
}
