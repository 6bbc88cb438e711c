//! `lvsadm`: ipvsadm's command line for the userspace director. The language lives in
//! `lvs::admin`; this sends the command to lvsd's control socket (`lvs::control`) and
//! prints the answer.
//!
//! ipvsadm's getopt syntax (`-Ln`, `-p` with an optional value, one command letter among
//! many options) does not fit clap, so the library parses it and `-h` prints the manual.
//! lvsadm logs nothing of its own; `RUST_LOG` is honoured all the same.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use daemon::control::{CallError, ErrorKind};
use daemon::log::{LogArgs, LogConfig};
use daemon::Failure;
use lvs::admin::{self, Command};
use lvs::control::{IpvsadmReply, Request};

fn main() -> ExitCode {
    daemon::finish("lvsadm", run())
}

fn run() -> anyhow::Result<()> {
    // ipvsadm's language has no --log-level; the environment can still ask for logs.
    daemon::log::init(&LogConfig::new("warn", &LogArgs::default()))?;
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let cmd =
        admin::parse_args(&argv).map_err(|e| Failure::new(2, format!("{e}\nTry `lvsadm -h' for more information.")))?;
    match cmd {
        Command::Help => {
            print!("{}", admin::HELP);
            return Ok(());
        }
        Command::Version => {
            println!("lvsadm {} ({})", env!("CARGO_PKG_VERSION"), admin::VERSION_LINE);
            return Ok(());
        }
        _ => {}
    }
    let mut input = String::new();
    if cmd == Command::Restore {
        std::io::stdin()
            .read_to_string(&mut input)
            .map_err(|e| anyhow::anyhow!("cannot read rules from standard input: {e}"))?;
    }
    let socket = std::env::var_os("LVSD_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(lvs::control::DEFAULT_SOCKET));
    let reply: IpvsadmReply = match lvs::control::call(&socket, &Request::Ipvsadm { args: argv, input }) {
        Ok(r) => r,
        // ipvsadm's exit status: 2 for a command line the director refused, 1 otherwise.
        Err(CallError::Remote(e)) if e.kind == ErrorKind::BadRequest => return Err(Failure::new(2, e.message).into()),
        Err(CallError::Remote(e)) => return Err(Failure::new(1, e.message).into()),
        Err(e @ CallError::Connect { .. }) => anyhow::bail!("{e} (is lvsd running? set LVSD_SOCKET)"),
        Err(e) => return Err(e.into()),
    };
    let mut out = std::io::stdout().lock();
    let written = out.write_all(reply.output.as_bytes()).and_then(|()| out.flush());
    written.map_err(|e| anyhow::anyhow!("cannot write to standard output: {e}"))?;
    for w in &reply.warnings {
        eprintln!("lvsadm: warning: {w}");
    }
    Ok(())
}
