//! `script`: an LSB init script, run as `FILE start|stop|status`. Per LSB, start and stop
//! exit 0 on success (also when already running or already stopped); status exits 0 when
//! running and 1 to 4 when not (3: stopped; 1 and 2: dead with a pid or lock file left; 4:
//! unknown). Any non-zero status is a failure.

use cluster::conf::Resource;

use super::exec::run;
use super::{need, Action, AgentError, Env};

/// LSB status meanings.
pub(crate) fn lsb_status_meaning(code: i32) -> &'static str {
    match code {
        1 => "program is dead and /var/run pid file exists",
        2 => "program is dead and /var/lock lock file exists",
        3 => "program is not running",
        4 => "program or service status is unknown",
        _ => "status failed",
    }
}

pub(super) fn act(env: &Env, res: &Resource, action: Action) -> Result<(), AgentError> {
    let file = need(res, "file")?;
    let timeout = if action == Action::Status { env.status_timeout } else { env.start_stop_timeout };
    let o = run(file, &[action.as_str()], timeout)?;
    match (action, o.code) {
        (_, 0) => Ok(()),
        (Action::Status, c) => {
            Err(AgentError::Down(format!("{file} status exited with {c}: {}", lsb_status_meaning(c))))
        }
        (_, c) => {
            Err(AgentError::Failed { command: format!("{file} {}", action.as_str()), code: c, output: o.last_line() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn lsb_exit_codes() {
        let dir = std::env::temp_dir().join(format!("rg-script-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("svc");
        std::fs::write(
            &file,
            "#!/bin/sh\nS=\"$(dirname \"$0\")/state\"\ncase $1 in\n start) touch \"$S\";;\n stop) rm -f \"$S\";;\n \
             status) [ -e \"$S\" ] || exit 3;;\n *) exit 2;;\nesac\n",
        )
        .unwrap();
        std::process::Command::new("chmod").args(["+x", file.to_str().unwrap()]).status().unwrap();
        let res = Resource {
            kind: cluster::conf::ResourceKind::Script,
            key: "svc".into(),
            attrs: BTreeMap::from([("file".to_string(), file.display().to_string())]),
        };
        let env = Env::default();
        let e = act(&env, &res, Action::Status).unwrap_err();
        assert!(e.to_string().ends_with("status exited with 3: program is not running"), "{e}");
        act(&env, &res, Action::Start).unwrap();
        act(&env, &res, Action::Status).unwrap();
        act(&env, &res, Action::Stop).unwrap();
        act(&env, &res, Action::Stop).unwrap();
        assert!(act(&env, &res, Action::Status).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
