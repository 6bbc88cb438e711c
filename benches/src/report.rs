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
    /// Whether the page cache could be dropped before each phase.
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

    /// The best peer (not gnbd) for a row: name and value.
    pub fn best_peer(&self, mode: Mode, test: Test) -> Option<(ServerKind, f64)> {
        let peers = self.servers.iter().filter(|&&s| s != ServerKind::Gnbd);
        let vals = peers.filter_map(|&s| Some((s, self.value(mode, test, s)?)));
        if test.higher_is_better() {
            vals.max_by(|a, b| a.1.total_cmp(&b.1))
        } else {
            vals.min_by(|a, b| a.1.total_cmp(&b.1))
        }
    }

    /// gnbd against the best peer; above 1 always means gnbd is better.
    pub fn ratio(&self, mode: Mode, test: Test) -> Option<f64> {
        let ours = self.value(mode, test, ServerKind::Gnbd)?;
        let (_, best) = self.best_peer(mode, test)?;
        let r = if test.higher_is_better() { ours / best } else { best / ours };
        r.is_finite().then_some(r)
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
        let _ = write!(hdr, "  {:<22} {:>6}", "best peer", "ratio");
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
                let ratio = self.ratio(mode, test).map_or("-".into(), |r| format!("{r:.2}"));
                let _ = writeln!(out, "  {best:<22} {ratio:>6}");
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
             lower is better. ratio = gnbd / best peer (latency: best peer / gnbd): above 1 \
             means gnbd is better."
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
            f.push(format!("direct: {}.", setting(Mode::Direct)));
        }
        if self.modes.contains(&Mode::Cached) {
            let warm = if self.cache_dropped {
                "the page cache was dropped (sync; echo 1 > /proc/sys/vm/drop_caches) before \
                 each phase, so each test starts cold and warms up during its run"
            } else {
                "the page cache could NOT be dropped: tests ran with whatever the previous \
                 phase left in the cache (warm)"
            };
            f.push(format!("cached: {}; {warm}.", setting(Mode::Cached)));
        } else if !self.cache_dropped {
            f.push("the page cache could not be dropped between phases.".to_owned());
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
                rows.push(json!({
                    "mode": mode.name(),
                    "test": test.key(),
                    "unit": test.unit(),
                    "higher_is_better": test.higher_is_better(),
                    "values": values,
                    "errors": errors,
                    "best_peer": best.map(|(s, v)| json!({"server": s.name(), "value": v})),
                    "ratio": self.ratio(mode, test),
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
        json!({
            "config": self.config,
            "loopback_ceiling_mb_s": self.ceiling,
            "page_cache_dropped": self.cache_dropped,
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

    #[test]
    fn ratio_above_one_means_we_are_better() {
        let r = results();
        // Throughput: ours 50 against the best peer 100.
        assert_eq!(r.best_peer(Mode::Direct, Test::SeqRead), Some((ServerKind::QemuNbd, 100.0)));
        assert_eq!(r.ratio(Mode::Direct, Test::SeqRead), Some(0.5));
        // Latency: ours 50 us against the best peer's 80 us.
        assert_eq!(r.best_peer(Mode::Direct, Test::Latency), Some((ServerKind::Nbdkit, 80.0)));
        assert_eq!(r.ratio(Mode::Direct, Test::Latency), Some(1.6));
        assert!(r.any_failed());
        assert!(r.table().contains("FAIL"));
    }
}
