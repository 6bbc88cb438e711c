//! What every command shares: the devices to scan, the system directory (backups, archives,
//! `clvm.conf`), `--config`, locking, sizes, messages.

use crate::disk::SECTOR;
use crate::scan::{self, Scan};
use crate::text::{self, Section, Value};
use blockdev::Device;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// LVM2's exit code for a failed command (`ECMD_FAILED`).
pub const EXIT_FAILED: u8 = 5;
/// LVM2's exit code for a bad command line (`EINVALID_CMD_LINE`).
pub const EXIT_USAGE: u8 = 3;

/// A refusal or failure: one line, exit code 5.
pub fn failed(msg: impl Into<String>) -> anyhow::Error {
    daemon::Failure::new(EXIT_FAILED, msg.into()).into()
}

/// Options every command takes (LVM2's common options).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Common {
    /// Devices to scan, instead of those in clvm.conf: block devices, files, gnbd imports
    /// (/dev/gnbd/NAME) and exports (gnbd://SERVER[:PORT]/NAME). Comma-separated or repeated.
    #[arg(long = "devices", id = "scan_devices", value_name = "DEV[,DEV...]", value_delimiter = ',', global = true)]
    pub devices: Vec<String>,
    /// Configuration overrides, as LVM2 takes them: `section/key=value ...` (backup/backup,
    /// backup/archive, backup/backup_dir, backup/archive_dir, devices/devices; settings this
    /// version has no use for, such as global/activation, are accepted and ignored).
    #[arg(long = "config", value_name = "SETTINGS", global = true)]
    pub config: Option<String>,
    /// Suppress informational messages (twice: also the prompts' answers).
    #[arg(short = 'q', long = "quiet", action = clap::ArgAction::Count, global = true)]
    pub quiet: u8,
    /// More messages.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Answer yes to every question.
    #[arg(short = 'y', long = "yes", global = true)]
    pub yes: bool,
    /// Do not take locks (only when you know no other node or command is changing metadata).
    #[arg(long = "nolocking", global = true)]
    pub nolocking: bool,
    /// clvmd's control socket.
    #[arg(long = "clvmd-socket", value_name = "PATH", global = true, default_value = crate::lock::DEFAULT_SOCKET)]
    pub clvmd_socket: PathBuf,
}

/// The environment a command runs in.
#[derive(Debug)]
pub struct Env {
    pub common: Common,
    /// `$LVM_SYSTEM_DIR`, default `/etc/lvm`.
    pub system_dir: PathBuf,
    /// clvm.conf plus `--config`.
    pub config: Section,
    /// This host's name (creation_host).
    pub host: String,
}

impl Env {
    /// Reads `$LVM_SYSTEM_DIR/clvm.conf` (when present) and `--config`.
    pub fn new(common: Common) -> anyhow::Result<Env> {
        let system_dir = std::env::var_os("LVM_SYSTEM_DIR").map_or_else(|| PathBuf::from("/etc/lvm"), PathBuf::from);
        let path = system_dir.join("clvm.conf");
        let mut config = match std::fs::read(&path) {
            Ok(b) => text::parse(&b).map_err(|e| failed(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Section::new(""),
            Err(e) => return Err(failed(format!("{}: {e}", path.display()))),
        };
        if let Some(over) = &common.config {
            apply_overrides(&mut config, over).map_err(|e| failed(format!("--config: {e}")))?;
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        Ok(Env { common, system_dir, config, host })
    }

    /// A setting `section/key`.
    pub fn setting(&self, path: &str) -> Option<&Value> {
        let (sec, key) = path.split_once('/')?;
        self.config.section(sec)?.get(key)
    }

    fn setting_bool(&self, path: &str, default: bool) -> bool {
        match self.setting(path) {
            Some(Value::Int(i)) => *i != 0,
            _ => default,
        }
    }

    fn setting_dir(&self, path: &str, default: &str) -> PathBuf {
        match self.setting(path) {
            Some(Value::Str(s)) => PathBuf::from(s),
            _ => self.system_dir.join(default),
        }
    }

    /// global/locking_dir (LVM2's lock files).
    pub fn lock_dir(&self) -> PathBuf {
        match self.setting("global/locking_dir") {
            Some(Value::Str(s)) => PathBuf::from(s),
            _ => PathBuf::from(crate::lock::DEFAULT_LOCK_DIR),
        }
    }

    /// Whether `vgcfgbackup`-style backups are kept after each change (backup/backup).
    pub fn backup_enabled(&self) -> bool {
        self.setting_bool("backup/backup", true)
    }
    /// Whether the previous metadata is archived before each change (backup/archive).
    pub fn archive_enabled(&self) -> bool {
        self.setting_bool("backup/archive", true)
    }
    /// backup/backup_dir.
    pub fn backup_dir(&self) -> PathBuf {
        self.setting_dir("backup/backup_dir", "backup")
    }
    /// backup/archive_dir.
    pub fn archive_dir(&self) -> PathBuf {
        self.setting_dir("backup/archive_dir", "archive")
    }

    /// The devices to scan: `--devices`, else clvm.conf's `devices/devices` list, every
    /// block device and file under the `devices/scan` directories (default `/dev/gnbd`), and,
    /// unless `devices/scan_partitions = 0`, every block device in /proc/partitions (as LVM2
    /// scans them) except RAM disks and the loop devices of active LVs (an LV is not a PV
    /// here, as with LVM2's default `scan_lvs = 0`).
    pub fn device_list(&self) -> Vec<String> {
        if !self.common.devices.is_empty() {
            return self.common.devices.clone();
        }
        let mut out = Vec::new();
        if let Some(Value::Array(a)) = self.setting("devices/devices") {
            out.extend(a.iter().filter_map(|v| if let Value::Str(s) = v { Some(s.clone()) } else { None }));
        }
        let dirs: Vec<String> = match self.setting("devices/scan") {
            Some(Value::Array(a)) => {
                a.iter().filter_map(|v| if let Value::Str(s) = v { Some(s.clone()) } else { None }).collect()
            }
            _ => vec!["/dev/gnbd".into()],
        };
        for d in dirs {
            let Ok(rd) = std::fs::read_dir(&d) else { continue };
            let mut names: Vec<String> = rd.filter_map(|e| e.ok()).map(|e| e.path().display().to_string()).collect();
            names.sort();
            for n in names {
                if !out.contains(&n) {
                    out.push(n);
                }
            }
        }
        if !matches!(self.setting("devices/scan_partitions"), Some(Value::Int(0))) {
            for n in partitions() {
                if !out.contains(&n) {
                    out.push(n);
                }
            }
        }
        out
    }

    /// devices/gnbd_io_timeout: seconds after which a request to an unreachable gnbd server
    /// fails (0, the default: wait for it forever). Mirrors over gnbd exports need it, so
    /// that a dead server's leg is dropped instead of stalling the volume.
    pub fn gnbd_io_timeout(&self) -> Option<std::time::Duration> {
        match self.setting("devices/gnbd_io_timeout") {
            Some(Value::Int(s)) if *s > 0 => Some(std::time::Duration::from_secs(*s as u64)),
            Some(Value::Float(s)) if *s > 0.0 => Some(std::time::Duration::from_secs_f64(*s)),
            _ => None,
        }
    }

    /// Opens one device by name (`gnbd://` through the client library).
    pub fn open(&self, spec: &str) -> anyhow::Result<Arc<dyn Device>> {
        blockdev::open_device_with(spec, self.gnbd_io_timeout()).map_err(|e| failed(format!("Cannot use {spec}: {e}")))
    }

    /// Scans the device list; unopenable devices are skipped with a warning (on stderr with
    /// -v).
    pub fn scan(&self) -> Scan {
        self.scan_with(&[])
    }

    /// Scans the device list plus `extra` devices (named on the command line).
    pub fn scan_with(&self, extra: &[String]) -> Scan {
        let mut list = self.device_list();
        for e in extra {
            if !list.contains(e) {
                list.push(e.clone());
            }
        }
        let mut devs = Vec::new();
        let mut warnings = Vec::new();
        for spec in list {
            match blockdev::open_device_with(&spec, self.gnbd_io_timeout()) {
                Ok(d) => devs.push((spec, d)),
                Err(e) => warnings.push(format!("WARNING: skipping {spec}: {e}")),
            }
        }
        let mut s = scan::scan(devs);
        warnings.append(&mut s.warnings);
        for w in &warnings {
            if self.common.verbose > 0 || !w.contains("skipping") {
                eprintln!("  {w}");
            }
        }
        s.warnings = warnings;
        s
    }

    /// Prints an informational line (LVM2 indents them by two spaces), unless -q.
    pub fn say(&self, msg: impl AsRef<str>) {
        if self.common.quiet == 0 {
            println!("  {}", msg.as_ref());
        }
    }

    /// Asks a yes/no question on the terminal (yes with -y; no when stdin is not a terminal
    /// or says anything else).
    pub fn confirm(&self, question: &str) -> bool {
        if self.common.yes {
            return true;
        }
        use std::io::{BufRead, IsTerminal, Write};
        if !std::io::stdin().is_terminal() {
            return false;
        }
        print!("{question} [y/n]: ");
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        matches!(line.trim(), "y" | "Y" | "yes")
    }

    /// Seconds since the epoch.
    pub fn now(&self) -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
    }
}

/// Block devices from /proc/partitions, without RAM disks and the loop devices serving active
/// LVs (their backing file is an activation's FUSE file, fsname `clvm:VG/LV`).
fn partitions() -> Vec<String> {
    let Ok(text) = std::fs::read_to_string("/proc/partitions") else { return vec![] };
    let lv_files: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("clvm:"))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect();
    let mut out = Vec::new();
    for line in text.lines().skip(2) {
        let Some(name) = line.split_whitespace().nth(3) else { continue };
        if name.starts_with("ram") || name.starts_with("zram") {
            continue;
        }
        if name.starts_with("loop") {
            let backing = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).unwrap_or_default();
            let backing = backing.trim();
            if backing.is_empty() || lv_files.iter().any(|m| backing.starts_with(m.as_str())) {
                continue;
            }
        }
        out.push(format!("/dev/{name}"));
    }
    out
}

/// `--config "a/b=1 c/d=\"x\""` or a full config text.
fn apply_overrides(config: &mut Section, over: &str) -> Result<(), String> {
    let parsed = if over.contains('{') {
        text::parse(over.as_bytes()).map_err(|e| e.to_string())?
    } else {
        // `section/key=value` words: rewrite as `section { key = value }` blocks.
        let mut body = String::new();
        for word in split_words(over) {
            let (path, value) = word.split_once('=').ok_or_else(|| format!("{word:?} is not section/key=value"))?;
            let parts: Vec<&str> = path.trim().split('/').collect();
            if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
                return Err(format!("{path:?} is not section/key"));
            }
            for p in &parts[..parts.len() - 1] {
                body.push_str(p);
                body.push_str(" {\n");
            }
            body.push_str(&format!("{} = {}\n", parts[parts.len() - 1], value.trim()));
            for _ in 1..parts.len() {
                body.push_str("}\n");
            }
        }
        text::parse(body.as_bytes()).map_err(|e| e.to_string())?
    };
    merge(config, parsed);
    Ok(())
}

/// Words separated by blanks, keeping quoted strings and brackets together.
fn split_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quote, mut depth) = (false, 0);
    for c in s.chars() {
        match c {
            '"' => quote = !quote,
            '[' if !quote => depth += 1,
            ']' if !quote => depth -= 1,
            c if c.is_whitespace() && !quote && depth == 0 => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn merge(into: &mut Section, from: Section) {
    for n in from.nodes {
        match n {
            text::Node::Pair { key, value } => into.set(&key, value),
            text::Node::Section(s) => {
                let existing = into.nodes.iter_mut().find_map(|m| match m {
                    text::Node::Section(t) if t.name == s.name => Some(t),
                    _ => None,
                });
                match existing {
                    Some(t) => merge(t, s),
                    None => into.nodes.push(text::Node::Section(s)),
                }
            }
        }
    }
}

/// A size as LVM2 takes it: a number (decimals allowed) with an optional unit
/// `b s k m g t p e` (binary; upper case the same), `default_unit` when none (`m` for -L).
/// Returns bytes.
pub fn parse_size(s: &str, default_unit: char) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    let unit = match unit.to_ascii_lowercase().as_str() {
        "" => default_unit,
        u if u.len() == 1 || (u.len() == 3 && u.ends_with("ib")) || (u.len() == 2 && u.ends_with('b')) => {
            u.chars().next().unwrap_or(default_unit)
        }
        _ => return Err(format!("Invalid size unit in {s:?}")),
    };
    let mult: u64 = match unit {
        'b' => 1,
        's' => SECTOR,
        'k' => 1 << 10,
        'm' => 1 << 20,
        'g' => 1 << 30,
        't' => 1 << 40,
        'p' => 1 << 50,
        'e' => 1 << 60,
        _ => return Err(format!("Invalid size unit in {s:?}")),
    };
    let v: f64 = num.parse().map_err(|_| format!("Invalid size {s:?}"))?;
    if v.is_nan() || v < 0.0 || !v.is_finite() {
        return Err(format!("Invalid size {s:?}"));
    }
    let bytes = v * mult as f64;
    if bytes > u64::MAX as f64 {
        return Err(format!("Size {s:?} is too large"));
    }
    Ok(bytes.round() as u64)
}

/// A size as LVM2's messages print it: `8.00 MiB`.
pub fn display_size(bytes: u64) -> String {
    // LVM2's messages use its human units ('h') with the short suffix: the report layer's
    // `dm_size_to_string`.
    let human = crate::report::Units { unit_type: 'h', factor: 0, suffix: true };
    human.size(bytes / 512, crate::report::SuffixType::Short)
}

/// `VG/LV`, `/dev/VG/LV` or `/dev/mapper/VG-LV` as (VG, LV).
pub fn split_lv_path(s: &str) -> Option<(String, String)> {
    let s = s.strip_prefix("/dev/").unwrap_or(s);
    if let Some(m) = s.strip_prefix("mapper/") {
        // VG-LV with `--` for a dash inside a name.
        let b = m.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'-' {
                if b.get(i + 1) == Some(&b'-') {
                    i += 2;
                    continue;
                }
                return Some((m[..i].replace("--", "-"), m[i + 1..].replace("--", "-")));
            }
            i += 1;
        }
        return None;
    }
    let (vg, lv) = s.split_once('/')?;
    (!vg.is_empty() && !lv.is_empty() && !lv.contains('/')).then(|| (vg.to_owned(), lv.to_owned()))
}

/// Creates `dir` (mode 0700, as LVM2 makes /etc/lvm/backup).
pub fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Opens (creating) a lock file.
pub fn lock_file(path: &Path) -> std::io::Result<File> {
    if let Some(d) = path.parent() {
        ensure_dir(d)?;
    }
    std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_lvm2() {
        assert_eq!(parse_size("8", 'm'), Ok(8 << 20));
        assert_eq!(parse_size("8M", 'm'), Ok(8 << 20));
        assert_eq!(parse_size("1.5g", 'm'), Ok(3 << 29));
        assert_eq!(parse_size("64k", 'k'), Ok(64 << 10));
        assert_eq!(parse_size("64KiB", 'k'), Ok(64 << 10));
        assert_eq!(parse_size("100s", 'm'), Ok(51200));
        assert!(parse_size("8x", 'm').is_err());
        assert!(parse_size("-1", 'm').is_err());
        assert!(parse_size("", 'm').is_err());
        assert_eq!(display_size(8 << 20), "8.00 MiB");
        assert_eq!(display_size(3 << 29), "1.50 GiB");
    }

    #[test]
    fn lv_paths() {
        assert_eq!(split_lv_path("vg/lv"), Some(("vg".into(), "lv".into())));
        assert_eq!(split_lv_path("/dev/vg/lv"), Some(("vg".into(), "lv".into())));
        assert_eq!(split_lv_path("/dev/mapper/my--vg-lv--a"), Some(("my-vg".into(), "lv-a".into())));
        assert_eq!(split_lv_path("vg"), None);
    }

    #[test]
    fn config_overrides_merge() {
        let mut c = text::parse(b"backup {\nbackup = 1\n}\n").unwrap();
        apply_overrides(&mut c, "backup/backup=0 global/activation=0 devices/devices=[\"/a\", \"/b\"]").unwrap();
        assert_eq!(c.section("backup").unwrap().get("backup"), Some(&Value::Int(0)));
        assert!(matches!(c.section("devices").unwrap().get("devices"), Some(Value::Array(a)) if a.len() == 2));
        assert!(apply_overrides(&mut c, "nokey").is_err());
    }
}
