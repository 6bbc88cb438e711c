//! Results: the side-by-side table with ratios, its footnotes, and the JSON file.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::clients::Test;
use crate::servers::{Mode, ServerKind};

/// One server's result for one (mode, test).
#[derive(Debug, Clone)]
pub enum Cell {
    Value(f64),
    Failed(String),
}

/// Everything measured in one run, plus what is needed to read it honestly.
#[derive(Debug, Default)]
pub struct Results {
    pub modes: Vec<Mode>,
    pub servers: Vec<ServerKind>,
    pub cells: BTreeMap<(Mode, Test, ServerKind), Cell>,
    /// iperf3 loopback TCP throughput, MB/s.
    pub ceiling: Option<f64>,
    /// Whether the page cache could be dropped before each phase of direct mode (cached mode
    /// warms it instead).
    pub cache_dropped: bool,
    pub commands: BTreeMap<(ServerKind, Mode), Vec<String>>,
    pub multi_conn: BTreeMap<(ServerKind, Mode), bool>,
    pub versions: BTreeMap<String, String>,
    /// How each server had the backing file open while tested: (with O_DIRECT, without).
    pub open_modes: BTreeMap<(ServerKind, Mode), (bool, bool)>,
    /// /proc/loadavg's 1-minute figure before the first and after the last measurement
    /// (anything else running on the machine skews the figures).
    pub load_before: Option<f64>,
    pub load_after: Option<f64>,
    /// Free-form notes (failures, skipped servers, oddities).
    pub notes: Vec<String>,
    pub config: Value,
}

impl Results {
    fn value(&self, mode: Mode, test: Test, s: ServerKind) -> Option<f64> {
        match self.cells.get(&(mode, test, s)) {
            Some(Cell::Value(v)) => Some(*v),
            _ => None,
        }
    }

    /// Whether `s` was seen with the backing file open with O_DIRECT while tested in `mode`.
    fn used_o_direct(&self, s: ServerKind, mode: Mode) -> bool {
        self.open_modes.get(&(s, mode)).is_some_and(|&(direct, _)| direct)
    }

    /// The best of the peers (not gnbd) that `include` accepts, for a row: name and value.
    fn best_of(&self, mode: Mode, test: Test, include: impl Fn(ServerKind) -> bool) -> Option<(ServerKind, f64)> {
        let peers = self.servers.iter().filter(|&&s| s != ServerKind::Gnbd && include(s));
        let vals = peers.filter_map(|&s| Some((s, self.value(mode, test, s)?)));
        if test.higher_is_better() {
            vals.max_by(|a, b| a.1.total_cmp(&b.1))
        } else {
            vals.min_by(|a, b| a.1.total_cmp(&b.1))
        }
    }

    /// The best peer (not gnbd) for a row: name and value.
    pub fn best_peer(&self, mode: Mode, test: Test) -> Option<(ServerKind, f64)> {
        self.best_of(mode, test, |_| true)
    }

    /// The best peer for a row among those seen using O_DIRECT on the backing file in this
    /// run; none in cached mode, where O_DIRECT is not what is compared.
    pub fn best_o_direct_peer(&self, mode: Mode, test: Test) -> Option<(ServerKind, f64)> {
        if mode != Mode::Direct {
            return None;
        }
        self.best_of(mode, test, |s| self.used_o_direct(s, mode))
    }

    /// gnbd against `best`; above 1 always means gnbd is better.
    fn ratio_against(&self, mode: Mode, test: Test, best: Option<(ServerKind, f64)>) -> Option<f64> {
        let ours = self.value(mode, test, ServerKind::Gnbd)?;
        let (_, best) = best?;
        let r = if test.higher_is_better() { ours / best } else { best / ours };
        r.is_finite().then_some(r)
    }

    /// gnbd against the best peer, whatever its I/O path; above 1 means gnbd is better.
    pub fn ratio_any(&self, mode: Mode, test: Test) -> Option<f64> {
        self.ratio_against(mode, test, self.best_peer(mode, test))
    }

    /// gnbd against the best peer seen using O_DIRECT (direct mode only); above 1 means gnbd
    /// is better.
    pub fn ratio_direct_peers(&self, mode: Mode, test: Test) -> Option<f64> {
        self.ratio_against(mode, test, self.best_o_direct_peer(mode, test))
    }

    /// True if any measurement failed.
    pub fn any_failed(&self) -> bool {
        self.cells.values().any(|c| matches!(c, Cell::Failed(_)))
    }

    /// The table, its footnotes and the ceiling line.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut hdr = format!("{:<7} {:<22} {:<5}", "mode", "test", "unit");
        for s in &self.servers {
            let _ = write!(hdr, " {:>10}", s.name());
        }
        let _ = write!(hdr, "  {:<22} {:>17}  {:<23}", "best peer", "ratio vs any peer", "ratio vs O_DIRECT peers");
        let _ = writeln!(out, "{hdr}\n{}", "-".repeat(hdr.len()));
        for &mode in &self.modes {
            for test in Test::ALL {
                let _ = write!(out, "{:<7} {:<22} {:<5}", mode.name(), test.label(), test.unit());
                for &s in &self.servers {
                    let cell = match self.cells.get(&(mode, test, s)) {
                        Some(Cell::Value(v)) => fmt_num(*v),
                        Some(Cell::Failed(_)) => "FAIL".into(),
                        None => "-".into(),
                    };
                    let _ = write!(out, " {cell:>10}");
                }
                let best = match self.best_peer(mode, test) {
                    Some((s, v)) => format!("{} ({})", fmt_num(v), s.name()),
                    None => "-".into(),
                };
                let ratio = self.ratio_any(mode, test).map_or("-".into(), |r| format!("{r:.2}"));
                let direct = match (self.ratio_direct_peers(mode, test), self.best_o_direct_peer(mode, test)) {
                    (Some(r), Some((s, _))) => format!("{r:.2} ({})", s.name()),
                    _ => "-".into(),
                };
                let line = format!("  {best:<22} {ratio:>17}  {direct:<23}");
                let _ = writeln!(out, "{}", line.trim_end());
            }
        }
        out.push('\n');
        for (i, f) in self.footnotes().iter().enumerate() {
            let _ = writeln!(out, "[{}] {f}", i + 1);
        }
        if let Some(line) = self.ceiling_line() {
            let _ = writeln!(out, "\n{line}");
        }
        out
    }

    fn ceiling_line(&self) -> Option<String> {
        let ceiling = self.ceiling?;
        let mut parts = Vec::new();
        for &mode in &self.modes {
            let ours = self.value(mode, Test::SeqRead, ServerKind::Gnbd);
            let peer = self.best_peer(mode, Test::SeqRead);
            let mut p = format!("{}:", mode.name());
            if let Some(v) = ours {
                let _ = write!(p, " gnbd {:.0}%", 100.0 * v / ceiling);
            }
            if let Some((s, v)) = peer {
                let _ = write!(p, " (best peer {} {:.0}%)", s.name(), 100.0 * v / ceiling);
            }
            parts.push(p);
        }
        Some(format!(
            "sequential read (fio 1M qd16) as a share of the loopback TCP ceiling \
             (iperf3, {:.0} MB/s): {}",
            ceiling,
            parts.join("; ")
        ))
    }

    fn footnotes(&self) -> Vec<String> {
        let mut f = vec!["MB/s = 10^6 bytes/s. nbdcopy: the whole export, wall-clock time of the nbdcopy \
             process (write: local file already in the page cache -> nbd://; read: nbd:// -> \
             null:). fio: nbd engine, one connection; latency = mean total latency (lat_ns), \
             lower is better. Both ratios are gnbd / peer (latency: peer / gnbd), so above 1 \
             means gnbd is better. \"ratio vs any peer\" is against the best peer of the row, \
             whatever its I/O path. \"ratio vs O_DIRECT peers\" (direct mode only) is against \
             the best peer seen with the backing file open with O_DIRECT during this run (see \
             the O_DIRECT footnote), named in brackets: like for like with gnbd's O_DIRECT \
             export, whereas peers without O_DIRECT serve from the page cache; \"-\" in cached \
             mode and when no peer used O_DIRECT or its measurement failed."
            .to_owned()];
        let has = |k: ServerKind| self.servers.contains(&k);
        let setting = |mode: Mode| -> String {
            let v: Vec<&str> = self
                .servers
                .iter()
                .map(|&s| match (mode, s) {
                    (Mode::Direct, ServerKind::Gnbd) => "gnbd uncached default (O_DIRECT)",
                    (Mode::Direct, ServerKind::QemuNbd) => "qemu-nbd --cache=none (O_DIRECT)",
                    (Mode::Direct, ServerKind::Nbdkit) => {
                        "nbdkit file cache=none (not O_DIRECT: it evicts pages after I/O with \
                         posix_fadvise DONTNEED and sync_file_range)"
                    }
                    (Mode::Direct, ServerKind::NbdServer) => {
                        "nbd-server default (it has no direct-I/O option: buffered through the \
                         page cache, so its direct row is not like-for-like)"
                    }
                    (Mode::Cached, ServerKind::Gnbd) => "gnbd_export -c",
                    (Mode::Cached, ServerKind::QemuNbd) => "qemu-nbd --cache=writeback",
                    (Mode::Cached, ServerKind::Nbdkit) => "nbdkit file default (cache=default)",
                    (Mode::Cached, ServerKind::NbdServer) => "nbd-server default",
                })
                .collect();
            v.join(", ")
        };
        if self.modes.contains(&Mode::Direct) {
            let cold = if self.cache_dropped {
                "the page cache was dropped (sync; echo 1 > /proc/sys/vm/drop_caches) before \
                 each phase, so peers that read through it start cold"
            } else {
                "the page cache could NOT be dropped: each phase ran with whatever the previous \
                 one left in the cache, which flatters peers that read through it"
            };
            f.push(format!("direct: {}; {cold}.", setting(Mode::Direct)));
        }
        if self.modes.contains(&Mode::Cached) {
            f.push(format!(
                "cached: {}; before each phase dirty pages were written back (sync) and the whole \
                 backing file was read once, so each test starts with the export in the page \
                 cache.",
                setting(Mode::Cached)
            ));
        }
        let mc: Vec<&str> = self
            .servers
            .iter()
            .filter(|&&s| self.multi_conn.iter().any(|(&(k, _), &v)| k == s && v))
            .map(|s| s.name())
            .collect();
        let single: Vec<&str> = self
            .servers
            .iter()
            .filter(|&&s| self.multi_conn.iter().any(|(&(k, _), &v)| k == s && !v))
            .map(|s| s.name())
            .collect();
        if !single.is_empty() {
            f.push(format!(
                "nbdcopy opens several connections only to servers advertising multi-conn: \
                 yes for {}, no for {} (one connection).",
                if mc.is_empty() { "none".to_owned() } else { mc.join(", ") },
                single.join(", ")
            ));
        }
        if has(ServerKind::NbdServer) {
            f.push(
                "nbd-server runs daemonized (its -d \"do not fork\" mode serves one connection and \
             exits); the bench is a subreaper and stops and reaps it and its children."
                    .to_owned(),
            );
        }
        if !self.open_modes.is_empty() {
            let mut parts = Vec::new();
            for &m in &self.modes {
                let v: Vec<String> = self
                    .servers
                    .iter()
                    .filter_map(|&s| {
                        let how = match self.open_modes.get(&(s, m))? {
                            (true, false) => "yes",
                            (false, true) => "no",
                            (true, true) => "yes (plus a buffered fd)",
                            (false, false) => "not seen open",
                        };
                        Some(format!("{} {how}", s.name()))
                    })
                    .collect();
                parts.push(format!("{}: {}", m.name(), v.join(", ")));
            }
            f.push(format!(
                "backing file open with O_DIRECT while tested (sampled from /proc/PID/fdinfo of \
                 the server and its children every 200 ms; gnbd keeps a buffered fd for unaligned \
                 requests by design): {}.",
                parts.join("; ")
            ));
        }
        if let (Some(b), Some(a)) = (self.load_before, self.load_after) {
            f.push(format!(
                "1-minute load average {b:.2} before the first measurement and {a:.2} after the \
                 last (other work on the machine skews the figures)."
            ));
        }
        f.extend(self.notes.iter().cloned());
        f
    }

    pub fn to_json(&self) -> Value {
        let mut rows = Vec::new();
        for &mode in &self.modes {
            for test in Test::ALL {
                let mut values = serde_json::Map::new();
                let mut errors = serde_json::Map::new();
                for &s in &self.servers {
                    match self.cells.get(&(mode, test, s)) {
                        Some(Cell::Value(v)) => {
                            values.insert(s.name().into(), json!(v));
                        }
                        Some(Cell::Failed(e)) => {
                            values.insert(s.name().into(), Value::Null);
                            errors.insert(s.name().into(), json!(e));
                        }
                        None => {}
                    }
                }
                let best = self.best_peer(mode, test);
                let direct = self.best_o_direct_peer(mode, test);
                rows.push(json!({
                    "mode": mode.name(),
                    "test": test.key(),
                    "unit": test.unit(),
                    "higher_is_better": test.higher_is_better(),
                    "values": values,
                    "errors": errors,
                    "best_peer": best.map(|(s, v)| json!({"server": s.name(), "value": v})),
                    "best_o_direct_peer": direct.map(|(s, v)| json!({"server": s.name(), "value": v})),
                    "ratio_any": self.ratio_any(mode, test),
                    "ratio_direct_peers": self.ratio_direct_peers(mode, test),
                    // Same as ratio_any; kept for readers of older files.
                    "ratio": self.ratio_any(mode, test),
                }));
            }
        }
        let mut servers = serde_json::Map::new();
        for &s in &self.servers {
            let mut cmds = serde_json::Map::new();
            let mut mc = serde_json::Map::new();
            for &m in &self.modes {
                if let Some(c) = self.commands.get(&(s, m)) {
                    cmds.insert(m.name().into(), json!(c));
                }
                if let Some(v) = self.multi_conn.get(&(s, m)) {
                    mc.insert(m.name().into(), json!(v));
                }
            }
            let mut od = serde_json::Map::new();
            for &m in &self.modes {
                if let Some(&(d, b)) = self.open_modes.get(&(s, m)) {
                    od.insert(m.name().into(), json!({"o_direct": d, "buffered": b}));
                }
            }
            servers.insert(
                s.name().into(),
                json!({"version": self.versions.get(s.name()), "commands": cmds, "multi_conn": mc,
                       "backing_open": od}),
            );
        }
        let cache_prep: serde_json::Map<String, Value> = self
            .modes
            .iter()
            .map(|&m| {
                let how = match m {
                    Mode::Direct if self.cache_dropped => "dropped",
                    Mode::Direct => "could not be dropped",
                    Mode::Cached => "written back, then warmed (whole backing file read)",
                };
                (m.name().to_owned(), json!(how))
            })
            .collect();
        json!({
            "config": self.config,
            "loopback_ceiling_mb_s": self.ceiling,
            "page_cache_dropped": self.cache_dropped,
            "page_cache_before_each_phase": cache_prep,
            "load_average_1m": {"before": self.load_before, "after": self.load_after},
            "tool_versions": self.versions,
            "servers": servers,
            "results": rows,
            "notes": self.footnotes(),
        })
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results() -> Results {
        let mut r = Results { modes: vec![Mode::Direct], servers: ServerKind::ALL.to_vec(), ..Default::default() };
        let vals = [(ServerKind::Gnbd, 50.0), (ServerKind::QemuNbd, 100.0), (ServerKind::Nbdkit, 80.0)];
        for (s, v) in vals {
            r.cells.insert((Mode::Direct, Test::Latency, s), Cell::Value(v));
            r.cells.insert((Mode::Direct, Test::SeqRead, s), Cell::Value(v));
        }
        r.cells.insert((Mode::Direct, Test::SeqRead, ServerKind::NbdServer), Cell::Failed("x".into()));
        r
    }

    /// The table line of a row.
    fn row(table: &str, mode: Mode, test: Test) -> String {
        let prefix = format!("{:<7} {:<22}", mode.name(), test.label());
        table.lines().find(|l| l.starts_with(&prefix)).expect("row in the table").to_owned()
    }

    #[test]
    fn ratio_above_one_means_we_are_better() {
        let r = results();
        // Throughput: ours 50 against the best peer 100.
        assert_eq!(r.best_peer(Mode::Direct, Test::SeqRead), Some((ServerKind::QemuNbd, 100.0)));
        assert_eq!(r.ratio_any(Mode::Direct, Test::SeqRead), Some(0.5));
        // Latency: ours 50 us against the best peer's 80 us.
        assert_eq!(r.best_peer(Mode::Direct, Test::Latency), Some((ServerKind::Nbdkit, 80.0)));
        assert_eq!(r.ratio_any(Mode::Direct, Test::Latency), Some(1.6));
        assert!(r.any_failed());
        let t = r.table();
        assert!(t.contains("FAIL"));
        assert!(t.contains("ratio vs any peer") && t.contains("ratio vs O_DIRECT peers"));
    }

    #[test]
    fn ratio_vs_o_direct_peers_leaves_out_page_cache_peers() {
        let mut r = results();
        r.open_modes.insert((ServerKind::Gnbd, Mode::Direct), (true, true));
        r.open_modes.insert((ServerKind::QemuNbd, Mode::Direct), (true, false));
        r.open_modes.insert((ServerKind::Nbdkit, Mode::Direct), (false, true));
        r.open_modes.insert((ServerKind::NbdServer, Mode::Direct), (false, true));
        // Throughput: qemu-nbd (O_DIRECT) is also the best peer overall.
        assert_eq!(r.best_o_direct_peer(Mode::Direct, Test::SeqRead), Some((ServerKind::QemuNbd, 100.0)));
        assert_eq!(r.ratio_direct_peers(Mode::Direct, Test::SeqRead), Some(0.5));
        // Latency: nbdkit (80 us, page cache) is the best peer overall, qemu-nbd (100 us) the
        // best O_DIRECT peer.
        assert_eq!(r.ratio_any(Mode::Direct, Test::Latency), Some(1.6));
        assert_eq!(r.best_o_direct_peer(Mode::Direct, Test::Latency), Some((ServerKind::QemuNbd, 100.0)));
        assert_eq!(r.ratio_direct_peers(Mode::Direct, Test::Latency), Some(2.0));
        let t = r.table();
        assert!(row(&t, Mode::Direct, Test::Latency).ends_with(" 1.60  2.00 (qemu-nbd)"), "{t}");
        // No measurement at all: no ratio.
        assert_eq!(r.ratio_direct_peers(Mode::Direct, Test::RandRead), None);
        assert!(row(&t, Mode::Direct, Test::RandRead).ends_with(" -  -"), "{t}");

        let j = r.to_json();
        let lat = j["results"]
            .as_array()
            .expect("results array")
            .iter()
            .find(|x| x["test"] == Test::Latency.key())
            .expect("latency row")
            .clone();
        assert_eq!(lat["ratio_any"], json!(1.6));
        assert_eq!(lat["ratio"], json!(1.6));
        assert_eq!(lat["ratio_direct_peers"], json!(2.0));
        assert_eq!(lat["best_o_direct_peer"]["server"], json!("qemu-nbd"));
    }

    #[test]
    fn no_o_direct_peer_gives_no_second_ratio() {
        // Only peers serving from the page cache were seen.
        let mut r = results();
        r.open_modes.insert((ServerKind::QemuNbd, Mode::Direct), (false, true));
        r.open_modes.insert((ServerKind::Nbdkit, Mode::Direct), (false, true));
        assert_eq!(r.ratio_any(Mode::Direct, Test::SeqRead), Some(0.5));
        assert_eq!(r.ratio_direct_peers(Mode::Direct, Test::SeqRead), None);
        let t = r.table();
        assert!(row(&t, Mode::Direct, Test::SeqRead).ends_with(" 0.50  -"), "{t}");
        let seq = r.to_json()["results"]
            .as_array()
            .expect("results array")
            .iter()
            .find(|x| x["test"] == Test::SeqRead.key())
            .expect("seqread row")
            .clone();
        assert_eq!(seq["ratio_any"], json!(0.5));
        assert_eq!(seq["ratio_direct_peers"], Value::Null);

        // Cached mode: "-" even for a peer that used O_DIRECT.
        let mut c = Results { modes: vec![Mode::Cached], servers: ServerKind::ALL.to_vec(), ..Default::default() };
        for (s, v) in [(ServerKind::Gnbd, 50.0), (ServerKind::QemuNbd, 100.0)] {
            c.cells.insert((Mode::Cached, Test::SeqRead, s), Cell::Value(v));
        }
        c.open_modes.insert((ServerKind::QemuNbd, Mode::Cached), (true, false));
        assert_eq!(c.ratio_any(Mode::Cached, Test::SeqRead), Some(0.5));
        assert_eq!(c.ratio_direct_peers(Mode::Cached, Test::SeqRead), None);
        assert!(row(&c.table(), Mode::Cached, Test::SeqRead).ends_with(" 0.50  -"));
    }
}
