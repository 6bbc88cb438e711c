//! `gnbd_export`: an export on this node's gnbd_serv, managed through `gnbd_export`
//! (`--state-dir` from the `state_dir` attribute, else the server's default). Start:
//! `gnbd_export -e NAME -d DEVICE [-o] [-c]` (an export of that name already there is
//! success); stop: `gnbd_export -r NAME -O` (clients are disconnected; an absent export is
//! success); status: the export is listed by `gnbd_export -l --json`.

use cluster::conf::Resource;

use super::exec::{must, run};
use super::{flag, need, Action, AgentError, Env};

fn listed(env: &Env, base: &[&str], name: &str) -> Result<bool, AgentError> {
    let mut args = base.to_vec();
    args.extend(["-l", "--json"]);
    let o = must("gnbd_export", &args, env.status_timeout)?;
    let v: serde_json::Value = serde_json::from_str(o.output.trim())
        .map_err(|e| AgentError::Down(format!("gnbd_export -l --json printed something unexpected: {e}")))?;
    let list =
        v.as_array().cloned().or_else(|| v.get("exports").and_then(|x| x.as_array()).cloned()).unwrap_or_default();
    Ok(list.iter().any(|e| e.get("name").and_then(|n| n.as_str()) == Some(name)))
}

pub(super) fn act(env: &Env, res: &Resource, action: Action) -> Result<(), AgentError> {
    let name = res.key.as_str();
    let mut base: Vec<&str> = Vec::new();
    if let Some(d) = res.attrs.get("state_dir") {
        base.extend(["--state-dir", d.as_str()]);
    }
    match action {
        Action::Status => {
            if listed(env, &base, name)? {
                Ok(())
            } else {
                Err(AgentError::Down(format!("export {name} is not served")))
            }
        }
        Action::Start => {
            if listed(env, &base, name)? {
                return Ok(());
            }
            let device = need(res, "device")?;
            let mut args = base.clone();
            args.extend(["-e", name, "-d", device]);
            if flag(res, "readonly") {
                args.push("-o");
            }
            if flag(res, "cached") {
                args.push("-c");
            }
            must("gnbd_export", &args, env.start_stop_timeout).map(|_| ())
        }
        Action::Stop => {
            let mut args = base.clone();
            args.extend(["-r", name, "-O"]);
            let o = run("gnbd_export", &args, env.start_stop_timeout)?;
            if o.code == 0 || !listed(env, &base, name)? {
                Ok(())
            } else {
                Err(AgentError::Failed {
                    command: format!("gnbd_export -r {name} -O"),
                    code: o.code,
                    output: o.last_line(),
                })
            }
        }
    }
}
