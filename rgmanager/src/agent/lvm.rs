//! `lvm`: exclusive activation of a logical volume (`vg_name`, `lv_name`), or of every LV of
//! a volume group (no `lv_name`), through clvm: start `clvm lvchange -aey VG/LV` (`vgchange
//! -aey VG`), stop `-an`, status: `clvm lvs --noheadings -o lv_attr` shows every LV active
//! (the fifth attribute character is `a`). On a clustered VG the activation lock (taken
//! through clvmd) keeps any other node from activating it meanwhile. clvm finds its devices
//! in `$LVM_SYSTEM_DIR/clvm.conf`.

use cluster::conf::Resource;

use super::exec::must;
use super::{need, Action, AgentError, Env};

/// Whether every line of `lvs -o lv_attr` output shows an active LV.
pub(crate) fn all_active(lvs: &str) -> Result<(), String> {
    let attrs: Vec<&str> = lvs.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if attrs.is_empty() {
        return Err("no logical volume listed".into());
    }
    match attrs.iter().find(|a| a.chars().nth(4) != Some('a')) {
        Some(a) => Err(format!("not active (lv_attr {a})")),
        None => Ok(()),
    }
}

pub(super) fn act(env: &Env, res: &Resource, action: Action) -> Result<(), AgentError> {
    let vg = need(res, "vg_name")?;
    let target = match res.attrs.get("lv_name").filter(|l| !l.is_empty()) {
        Some(lv) => format!("{vg}/{lv}"),
        None => vg.to_owned(),
    };
    let change = if target.contains('/') { "lvchange" } else { "vgchange" };
    match action {
        Action::Start => must("clvm", &[change, "-aey", &target], env.start_stop_timeout).map(|_| ()),
        Action::Stop => must("clvm", &[change, "-an", &target], env.start_stop_timeout).map(|_| ()),
        Action::Status => {
            let o = must("clvm", &["lvs", "--noheadings", "-o", "lv_attr", &target], env.status_timeout)?;
            all_active(&o.output).map_err(|why| AgentError::Down(format!("{target}: {why}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lv_attr_activity() {
        assert_eq!(all_active("  -wi-a-----\n  -wi-ao----\n"), Ok(()));
        assert_eq!(all_active("  -wi-a-----\n  -wi-------\n"), Err("not active (lv_attr -wi-------)".into()));
        assert!(all_active("\n").is_err());
    }
}
