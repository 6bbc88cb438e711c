//! Logging for every binary of the suite: `tracing` events, filtered by `--log-level` (or,
//! without the flag, the one environment variable [`LOG_ENV`]), written to
//!
//! - a file, when asked (`--log-file`, a daemon's own log option, or a daemon started in the
//!   background): appended, no colour codes, reopened on SIGHUP so log rotation works;
//! - the journal, when stderr is connected to it (systemd sets `JOURNAL_STREAM`): one line
//!   per event with its syslog priority (`<3>` error ... `<7>` debug) and no timestamp of
//!   our own, so `journalctl -p warning` filters and the journal's clock is the only one;
//! - stderr otherwise, with colours only when stderr is a terminal.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::MakeWriter;

/// The environment variable read for the log filter when `--log-level` is not given
/// (`RUST_LOG=debug`, `RUST_LOG=info,dlm=trace`).
pub const LOG_ENV: &str = "RUST_LOG";

/// The logging flags every binary flattens into its own (`#[command(flatten)]`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log level: error, warn, info, debug or trace, or a filter such as `info,dlm=debug`.
    /// Overrides $RUST_LOG.
    #[arg(long = "log-level", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Append the log to FILE instead of stderr (no colour codes; reopened on SIGHUP, for log
    /// rotation).
    #[arg(long = "log-file", value_name = "FILE")]
    pub log_file: Option<PathBuf>,
}

/// Where and how much to log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// The filter when neither `level` nor [`LOG_ENV`] gives one (`"info"`, `"warn"`).
    pub default_level: String,
    /// An explicit level or filter (`--log-level`); wins over [`LOG_ENV`].
    pub level: Option<String>,
    /// Append to this file instead of stderr (reopened by [`reopen`]).
    pub file: Option<PathBuf>,
}

impl LogConfig {
    /// Logging at `default_level` unless the flags or the environment say otherwise.
    pub fn new(default_level: &str, args: &LogArgs) -> LogConfig {
        LogConfig {
            default_level: default_level.to_owned(),
            level: args.log_level.clone(),
            file: args.log_file.clone(),
        }
    }

    /// Logs to `file` (appending) instead of stderr, unless `--log-file` already chose one.
    pub fn with_file(mut self, file: Option<PathBuf>) -> LogConfig {
        if self.file.is_none() {
            self.file = file;
        }
        self
    }
}

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid log level or filter {filter:?}: {reason} (use error, warn, info, debug, trace, or a filter such as info,dlm=debug)")]
    BadFilter { filter: String, reason: String },
    #[error("cannot open log file {path}: {source}")]
    File { path: PathBuf, source: io::Error },
}

#[derive(Debug)]
enum Sink {
    Stderr,
    File { path: PathBuf, file: File, redirect_stderr: bool },
}

static SINK: OnceLock<Mutex<Sink>> = OnceLock::new();

/// Opens `path` for appending, creating it and its directory.
pub(crate) fn open_append(path: &Path) -> Result<File, LogError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LogError::File { path: path.to_owned(), source })
}

/// True when stderr is the journal's stream (systemd's `JOURNAL_STREAM=DEV:INODE` names it).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(v) = std::env::var("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = v.split_once(':') else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        Err(_) => false,
    }
}

/// Starts logging for this process. A second call is a no-op (the first set-up stays).
pub fn init(cfg: &LogConfig) -> Result<(), LogError> {
    let env = std::env::var(LOG_ENV).ok().filter(|s| !s.trim().is_empty());
    let filter_text = cfg.level.clone().or(env).unwrap_or_else(|| cfg.default_level.clone());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter_text)
        .map_err(|e| LogError::BadFilter { filter: filter_text.clone(), reason: e.to_string() })?;
    let file = cfg.file.clone().or_else(crate::background::child_log_file);
    let redirect_stderr = crate::background::is_child();
    let sink = match &file {
        Some(path) => {
            let f = open_append(path)?;
            if redirect_stderr {
                // Panics and stray eprintln! land in the same file.
                let _ = crate::sys::redirect(&f, 2);
            }
            Sink::File { path: path.clone(), file: f, redirect_stderr }
        }
        None => Sink::Stderr,
    };
    let journal = file.is_none() && stderr_is_journal();
    let ansi = file.is_none() && !journal && std::io::IsTerminal::is_terminal(&std::io::stderr());
    if SINK.set(Mutex::new(sink)).is_err() {
        return Ok(());
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(MakeSink { journal })
        .with_ansi(ansi)
        .with_timer(Timer { journal })
        .try_init();
    Ok(())
}

/// Reopens the log file (after a rotation moved it away). `Ok(false)` when logging goes to
/// stderr or the journal and there is nothing to reopen.
pub fn reopen() -> Result<bool, LogError> {
    let Some(sink) = SINK.get() else { return Ok(false) };
    let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
    match &mut *sink {
        Sink::Stderr => Ok(false),
        Sink::File { path, file, redirect_stderr } => {
            let f = open_append(path)?;
            if *redirect_stderr {
                let _ = crate::sys::redirect(&f, 2);
            }
            *file = f;
            Ok(true)
        }
    }
}

/// The log file in use, if logging goes to a file.
pub fn file() -> Option<PathBuf> {
    let sink = SINK.get()?.lock().unwrap_or_else(|p| p.into_inner());
    match &*sink {
        Sink::Stderr => None,
        Sink::File { path, .. } => Some(path.clone()),
    }
}

#[derive(Debug, Clone, Copy)]
struct Timer {
    journal: bool,
}

impl FormatTime for Timer {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        if self.journal {
            Ok(())
        } else {
            SystemTime.format_time(w)
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct MakeSink {
    journal: bool,
}

/// One event's writer: adds the syslog priority prefix for the journal.
#[derive(Debug)]
pub struct EventWriter {
    prefix: Option<&'static [u8]>,
}

impl<'a> MakeWriter<'a> for MakeSink {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter { prefix: None }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> EventWriter {
        let prefix: Option<&'static [u8]> = if !self.journal {
            None
        } else if *meta.level() == Level::ERROR {
            Some(b"<3>")
        } else if *meta.level() == Level::WARN {
            Some(b"<4>")
        } else if *meta.level() == Level::INFO {
            Some(b"<6>")
        } else {
            Some(b"<7>")
        };
        EventWriter { prefix }
    }
}

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(sink) = SINK.get() else { return io::stderr().write(buf) };
        let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
        let prefix = self.prefix.take();
        match &mut *sink {
            Sink::Stderr => {
                let mut e = io::stderr().lock();
                if let Some(p) = prefix {
                    e.write_all(p)?;
                }
                e.write_all(buf)?;
            }
            Sink::File { file, .. } => file.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
