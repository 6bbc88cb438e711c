//! Running fence agents: the standard agent interface (options as `key=value` lines on stdin,
//! exit status 0 for success).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::conf::{ClusterConf, FenceMethod};

/// Default directory searched for agents (besides PATH and our own binaries' directory).
pub const AGENT_DIR: &str = "/usr/sbin";

/// How long one agent may run before it counts as failed.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(600);

/// Why a device failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The method or device is not in cluster.conf.
    #[error("{0}")]
    Config(String),
    /// The agent program was not found.
    #[error("fence agent {agent} not found in {dirs}")]
    NotFound { agent: String, dirs: String },
    /// The agent could not be run.
    #[error("cannot run {agent}: {error}")]
    Spawn { agent: String, error: std::io::Error },
    /// The agent reported failure.
    #[error("{agent} failed (exit status {code:?}): {stderr}")]
    Failed { agent: String, code: Option<i32>, stderr: String },
    /// The agent ran too long.
    #[error("{agent} did not finish within {secs} s; killed")]
    Timeout { agent: String, secs: u64 },
}

/// Finds an agent: an absolute path as is, else the agent directory, our own directory, PATH.
pub fn find_agent(agent: &str, agent_dir: &Path) -> Result<PathBuf, AgentError> {
    if agent.starts_with('/') {
        return Ok(PathBuf::from(agent));
    }
    let mut dirs: Vec<PathBuf> = vec![agent_dir.to_path_buf()];
    if let Some(d) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        dirs.push(d);
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    for d in &dirs {
        let p = d.join(agent);
        if p.is_file() {
            return Ok(p);
        }
    }
    let dirs = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":");
    Err(AgentError::NotFound { agent: agent.to_owned(), dirs })
}

/// The stdin text for one device of a method against `victim`.
pub fn agent_input(conf: &ClusterConf, victim: &str, device: &crate::conf::DeviceRef) -> Result<String, AgentError> {
    let dev = conf
        .fence_device(&device.name)
        .ok_or_else(|| AgentError::Config(format!("fence device {} is not defined", device.name)))?;
    let mut opts = dev.options.clone();
    opts.extend(device.options.clone());
    opts.entry("action".into()).or_insert_with(|| "off".into());
    opts.entry("nodename".into()).or_insert_with(|| victim.to_owned());
    let mut text = String::new();
    for (k, v) in &opts {
        text.push_str(&format!("{k}={v}\n"));
    }
    Ok(text)
}

/// Runs one method: every device in order; the method succeeds when all succeed.
pub fn run_method(conf: &ClusterConf, victim: &str, method: &FenceMethod, agent_dir: &Path) -> Result<(), AgentError> {
    for device in &method.devices {
        let dev = conf
            .fence_device(&device.name)
            .ok_or_else(|| AgentError::Config(format!("fence device {} is not defined", device.name)))?;
        let program = find_agent(&dev.agent, agent_dir)?;
        let input = agent_input(conf, victim, device)?;
        run_agent(&program, &input, AGENT_TIMEOUT)?;
    }
    Ok(())
}

/// Runs an agent with `input` on stdin, bounded by `timeout`.
pub fn run_agent(program: &Path, input: &str, timeout: Duration) -> Result<(), AgentError> {
    let agent = program.display().to_string();
    let mut child = Command::new(program)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| AgentError::Spawn { agent: agent.clone(), error })?;
    if let Some(mut stdin) = child.stdin.take() {
        // An agent that does not read its options fails on its own; ignore EPIPE here.
        let _ = stdin.write_all(input.as_bytes());
    }
    let stderr = child.stderr.take();
    let name = program.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // The agent's messages go to the log as they come (fence_manual tells the operator what
    // to do there); the first 64 KiB are kept for the error.
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = stderr {
            for line in std::io::BufRead::lines(std::io::BufReader::new(e)).map_while(Result::ok) {
                tracing::info!(agent = %name, "{line}");
                if s.len() < 64 << 10 {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        }
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(AgentError::Timeout { agent, secs: timeout.as_secs() });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(error) => return Err(AgentError::Spawn { agent, error }),
        }
    };
    let stderr = reader.join().unwrap_or_default().trim().to_owned();
    if status.success() {
        Ok(())
    } else {
        Err(AgentError::Failed { agent, code: status.code(), stderr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_merges_device_and_node_options() {
        let c = crate::conf::parse(
            r#"<cluster name="a" config_version="1"><clusternodes>
            <clusternode name="n1" nodeid="1"><fence><method name="m"><device name="g" port="7"/></method></fence></clusternode>
            </clusternodes><fencedevices><fencedevice name="g" agent="fence_gnbd" servers="s1 s2" port="1"/></fencedevices></cluster>"#,
        )
        .unwrap();
        let text = agent_input(&c, "n1", &c.nodes[0].fence[0].devices[0]).unwrap();
        assert_eq!(text, "action=off\nnodename=n1\nport=7\nservers=s1 s2\n");
    }

    #[test]
    fn exit_status_decides() {
        assert!(run_agent(Path::new("/bin/true"), "", Duration::from_secs(30)).is_ok());
        let e = run_agent(Path::new("/bin/false"), "", Duration::from_secs(30)).unwrap_err();
        assert!(matches!(e, AgentError::Failed { code: Some(1), .. }), "{e}");
    }
}
