//! `fs` and `clusterfs`: mount `device` at `mountpoint` (created if missing) with `fstype`
//! and `options`; gfs goes through `mount.gfs DEVICE MOUNTPOINT -o OPTIONS` (which takes
//! `gnbd://SERVER/NAME` devices), other types through `mount -t`. Stop unmounts; when the
//! filesystem is busy and `force_unmount="1"`, the processes using it (open files, working
//! directory, root, executable under the mount point) are killed first, up to three
//! rounds. Status: mounted at the mount point.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cluster::conf::Resource;

use super::exec::{must, resolve, run};
use super::{flag, need, Action, AgentError, Env};

/// Decodes the octal escapes (`\040` for a space) of /proc/self/mountinfo fields.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points listed in a mountinfo text.
pub(crate) fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo.lines().filter_map(|l| l.split_whitespace().nth(4)).map(unescape).collect()
}

fn is_mounted(mp: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = mp.to_string_lossy();
    mount_points(&text).iter().any(|m| m.as_str() == want.trim_end_matches('/') || (want == "/" && m == "/"))
}

fn under(p: &Path, mp: &Path) -> bool {
    p.starts_with(mp)
}

/// Pids (other than this process) using something under `mp`.
fn users(mp: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let base = e.path();
        let mut uses =
            ["cwd", "root", "exe"].iter().any(|l| std::fs::read_link(base.join(l)).is_ok_and(|t| under(&t, mp)));
        if !uses {
            if let Ok(fds) = std::fs::read_dir(base.join("fd")) {
                uses = fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| under(&t, mp)));
            }
        }
        if uses {
            out.push(pid);
        }
    }
    out
}

fn mountpoint(res: &Resource) -> Result<PathBuf, AgentError> {
    let mp = PathBuf::from(need(res, "mountpoint")?);
    if !mp.is_absolute() {
        return Err(AgentError::Config { attr: "mountpoint", problem: "not an absolute path".into() });
    }
    Ok(mp)
}

pub(super) fn act(env: &Env, res: &Resource, action: Action) -> Result<(), AgentError> {
    let mp = mountpoint(res)?;
    let mps = mp.to_string_lossy().into_owned();
    match action {
        Action::Status => {
            if is_mounted(&mp) {
                Ok(())
            } else {
                Err(AgentError::Down(format!("nothing is mounted at {mps}")))
            }
        }
        Action::Start => {
            if is_mounted(&mp) {
                return Ok(());
            }
            let device = need(res, "device")?;
            std::fs::create_dir_all(&mp)
                .map_err(|e| AgentError::Down(format!("cannot create mount point {mps}: {e}")))?;
            let fstype = res.attrs.get("fstype").map(String::as_str).unwrap_or("");
            let options = res.attrs.get("options").map(String::as_str).unwrap_or("");
            if fstype == "gfs" || (fstype.is_empty() && res.kind == cluster::conf::ResourceKind::ClusterFs) {
                let helper = if resolve("mount.gfs").is_some() { "mount.gfs" } else { "mount_gfs" };
                let mut args = vec![device, mps.as_str()];
                if !options.is_empty() {
                    args.extend(["-o", options]);
                }
                must(helper, &args, env.start_stop_timeout)?;
            } else {
                let mut args = Vec::new();
                if !fstype.is_empty() {
                    args.extend(["-t", fstype]);
                }
                if !options.is_empty() {
                    args.extend(["-o", options]);
                }
                args.extend([device, mps.as_str()]);
                must("mount", &args, env.start_stop_timeout)?;
            }
            Ok(())
        }
        Action::Stop => {
            let force = flag(res, "force_unmount");
            for round in 0..4 {
                if !is_mounted(&mp) {
                    return Ok(());
                }
                let o = run("umount", &[&mps], env.start_stop_timeout)?;
                if o.code == 0 {
                    return Ok(());
                }
                if !force || round == 3 {
                    return Err(AgentError::Failed {
                        command: format!("umount {mps}"),
                        code: o.code,
                        output: o.last_line(),
                    });
                }
                let pids = users(&mp);
                tracing::warn!(mountpoint = %mps, ?pids, "busy: killing its users (force_unmount)");
                for p in pids {
                    let _ = run("kill", &["-KILL", &p.to_string()], env.status_timeout);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_points() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    22 1 0:21 / /run rw - tmpfs tmpfs rw\n";
        assert_eq!(mount_points(text), ["/mnt/with space", "/run"]);
        assert!(under(Path::new("/srv/www/a"), Path::new("/srv/www")));
        assert!(!under(Path::new("/srv/wwwx"), Path::new("/srv/www")));
    }
}
