//! One exit convention for every `main`:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | failure: one line on stderr, `NAME: what happened: why`, each cause once |
//! | 2 | usage error (bad flags; clap prints it) |
//! | other | a tool's documented codes (fsck(8) codes for gfs_fsck), through [`Failure`] |
//!
//! `main` returns [`finish`]`(NAME, run(args))`.

use std::error::Error;
use std::process::ExitCode;

/// Prefix of the line a background child that failed before it was ready sends to the
/// waiting parent (see [`crate::background`]).
pub(crate) const CHILD_ERROR_PREFIX: &str = "error: ";

/// An error that carries its own exit code. With an empty message nothing is printed (the
/// tool already said what it had to say).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// The process exit code.
    pub code: u8,
    /// What to print (may be empty).
    pub message: String,
}

impl Failure {
    /// Exit with `code`, printing `message`.
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure { code, message: message.into() }
    }

    /// Exit with `code` without printing anything more.
    pub fn quiet(code: u8) -> Failure {
        Failure { code, message: String::new() }
    }
}

/// The error and its causes on one line, each message once: a cause whose text is already
/// part of what was said (because a wrapper quoted it) is not repeated, and a cause that
/// repeats the wrapper's text and adds to it replaces the wrapper's text.
pub fn report(err: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        let t = e.to_string();
        let said = parts.iter().any(|p| p.contains(&t));
        if !t.is_empty() && !said {
            match parts.last_mut() {
                Some(last) if !last.is_empty() && t.contains(last.as_str()) => *last = t,
                _ => parts.push(t),
            }
        }
        cur = e.source();
    }
    parts.retain(|p| !p.is_empty());
    parts.join(": ")
}

/// Strips a leading `NAME: ` (a message that already names the program).
fn without_name<'a>(name: &str, msg: &'a str) -> &'a str {
    msg.strip_prefix(name).and_then(|m| m.strip_prefix(": ")).unwrap_or(msg)
}

/// Turns `main`'s result into the process exit code, printing a failure as
/// `NAME: message` on stderr (and, in a background child not yet ready, to the waiting
/// parent). Any error type works (through `anyhow::Error`); a [`Failure`] anywhere in the
/// chain, with or without context around it, sets the exit code.
pub fn finish<E>(name: &str, result: Result<(), E>) -> ExitCode
where
    E: Into<anyhow::Error>,
{
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // anyhow's `as_ref` is the error itself (not a wrapper), so a bare Failure is found.
        Err(e) => fail(name, e.into().as_ref()),
    }
}

/// Prints `err` the conventional way and returns its exit code.
pub fn fail(name: &str, err: &(dyn Error + 'static)) -> ExitCode {
    let code = find_failure(err).map(|f| f.code).unwrap_or(1);
    let msg = report(err);
    let msg = without_name(name, &msg);
    if !msg.is_empty() {
        eprintln!("{name}: {msg}");
        if crate::background::is_child() && !crate::ready::is_ready() {
            use std::io::Write;
            let mut o = std::io::stdout().lock();
            let _ = writeln!(o, "{CHILD_ERROR_PREFIX}{msg}");
            let _ = o.flush();
        }
        // Into a log file too, unless stderr already is that file (a background child).
        if crate::log::file().is_some() && !crate::background::is_child() {
            tracing::error!("{msg}");
        }
    }
    ExitCode::from(code)
}

fn find_failure<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a Failure> {
    let mut cur: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(f) = e.downcast_ref::<Failure>() {
            return Some(f);
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("connection to dlm_controld failed: {0}")]
    struct Quoting(#[source] std::io::Error);

    #[test]
    fn each_cause_once() {
        let io = std::io::Error::from_raw_os_error(2);
        let e = anyhow::Error::new(Quoting(io)).context("mount failed");
        let b: Box<dyn Error + Send + Sync> = e.into();
        let r = report(b.as_ref());
        assert_eq!(r, "mount failed: connection to dlm_controld failed: No such file or directory (os error 2)");
    }

    #[test]
    fn same_message_twice_is_said_once() {
        let e = anyhow::anyhow!("the device is in use by another mount on this host")
            .context("the device is in use by another mount on this host");
        let b: Box<dyn Error + Send + Sync> = e.into();
        assert_eq!(report(b.as_ref()), "the device is in use by another mount on this host");
    }

    #[test]
    fn a_cause_that_repeats_its_wrapper_replaces_it() {
        let io = std::io::Error::from_raw_os_error(2);
        let e = anyhow::Error::new(Quoting(io)).context("connection to dlm_controld failed");
        let b: Box<dyn Error + Send + Sync> = e.into();
        assert_eq!(report(b.as_ref()), "connection to dlm_controld failed: No such file or directory (os error 2)");
    }

    #[test]
    fn failure_code_is_found_under_context() {
        let e = anyhow::Error::new(Failure::new(4, "errors left uncorrected")).context("checking /dev/x");
        let b: Box<dyn Error + Send + Sync> = e.into();
        assert_eq!(find_failure(b.as_ref()).map(|f| f.code), Some(4));
    }

    #[test]
    fn failure_code_without_context_and_boxed() {
        let plain: anyhow::Result<()> = Err(Failure::new(2, "usage").into());
        assert_eq!(finish("t", plain), ExitCode::from(2));
        let wrapped: anyhow::Result<()> = Err(anyhow::Error::new(Failure::new(4, "x")).context("checking"));
        assert_eq!(finish("t", wrapped), ExitCode::from(4));
        let io: Result<(), std::io::Error> = Err(std::io::Error::other("x"));
        assert_eq!(finish("t", io), ExitCode::from(1));
        assert_eq!(finish("t", Err(Failure::quiet(8))), ExitCode::from(8));
    }

    #[test]
    fn own_name_is_not_repeated() {
        assert_eq!(without_name("gnbd_import", "gnbd_import: no such export"), "no such export");
        assert_eq!(without_name("gnbd_import", "gnbd_importer: x"), "gnbd_importer: x");
    }
}
