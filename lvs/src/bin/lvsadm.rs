//! `lvsadm`: ipvsadm's command line for the userspace director. The language lives in
//! `lvs::admin`; this sends the arguments to lvsd's admin socket and prints the answer.
//!
//! ipvsadm's getopt syntax (`-Ln`, `-p` with an optional value, one command letter among
//! many options) does not fit clap, so the library parses it and `-h` prints the manual.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use lvs::admin::{self, Command};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match admin::parse_args(&argv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lvsadm: {e}\nTry `lvsadm -h' for more information.");
            return ExitCode::from(2);
        }
    };
    match cmd {
        Command::Help => {
            print!("{}", admin::HELP);
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("lvsadm {} ({})", env!("CARGO_PKG_VERSION"), admin::VERSION_LINE);
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let mut stdin = String::new();
    if cmd == Command::Restore {
        if let Err(e) = std::io::stdin().read_to_string(&mut stdin) {
            eprintln!("lvsadm: cannot read rules from standard input: {e}");
            return ExitCode::FAILURE;
        }
    }
    let socket = std::env::var_os("LVSD_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(lvs::daemon::DEFAULT_SOCKET));
    match lvs::daemon::admin_request(&socket, &argv, &stdin) {
        Ok(out) => {
            print!("{}", out.stdout);
            eprint!("{}", out.stderr);
            let _ = std::io::stdout().flush();
            ExitCode::from(out.code.clamp(0, 255) as u8)
        }
        Err(e) => {
            eprintln!(
                "lvsadm: cannot talk to the director at {}: {e} (is lvsd running? set LVSD_SOCKET)",
                socket.display()
            );
            ExitCode::FAILURE
        }
    }
}
