//! `clvm`: the LVM2 commands (`clvm pvcreate ...`, or `pvcreate ...` through a link).
#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let argv = clvm::cli::args_from(std::env::args_os().collect());
    let cli = match clvm::cli::Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return if usage { ExitCode::from(clvm::cli::env::EXIT_USAGE) } else { ExitCode::SUCCESS };
        }
    };
    // An LV's device process runs in the background: the starter waits for it to be ready.
    if let clvm::cli::Cmd::LvDevice(a) = &cli.cmd {
        let log = a.log.log_file.clone();
        if let Some(code) = daemon::background::daemonize(false, &daemon::background::Background::new("clvm", log)) {
            return code;
        }
    }
    daemon::finish("clvm", clvm::cli::run(cli))
}
