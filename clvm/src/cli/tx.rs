//! A metadata change as every command makes it: take the locks, read the disks, change the
//! VG model, archive the old text, commit the new one (seqno + 1) to every PV of the VG, mark
//! the PVs used, write the backup file.

use super::env::{ensure_dir, failed, Env};
use crate::disk::{self, Pv};
use crate::label::PV_EXT_USED;
use crate::lock::{self, ClvmdSession, Held, Scope};
use crate::mda::MdaHeader;
use crate::ops;
use crate::scan::{FoundVg, Scan};
use crate::text::{self, Node, Section, Value};
use crate::vg::VolumeGroup;

/// Locks held and what the disks said after they were taken.
#[derive(Debug)]
pub struct Tx<'a> {
    pub env: &'a Env,
    pub scan: Scan,
    locks: Vec<Held>,
    /// The clvmd session holding the cluster locks, when clvmd runs.
    clvmd: Option<ClvmdSession>,
    /// VG locks taken through clvmd, with the seqno to leave in their value blocks.
    vg_locks: Vec<(String, Option<u64>)>,
}

impl<'a> Tx<'a> {
    /// Takes the global lock when `global`, the VG locks of `vgs` (exclusive when `write`),
    /// then scans (with `extra` devices named on the command line).
    pub fn begin(env: &'a Env, global: bool, vgs: &[&str], write: bool, extra: &[String]) -> anyhow::Result<Tx<'a>> {
        let mut locks = Vec::new();
        let mut clvmd = None;
        let mut vg_locks = Vec::new();
        let mut lvb_seqnos = Vec::new();
        let mut scopes = Vec::new();
        if global {
            scopes.push(Scope::Global);
        }
        let mut names: Vec<&str> = vgs.to_vec();
        names.sort_unstable();
        names.dedup();
        scopes.extend(names.iter().map(|v| Scope::Vg((*v).to_owned())));
        if !env.common.nolocking {
            clvmd = ClvmdSession::connect(&env.common.clvmd_socket).map_err(|e| failed(e.to_string()))?;
        }
        for s in scopes {
            let exclusive = write || s == Scope::Global;
            let held = match (&mut clvmd, env.common.nolocking) {
                (_, true) => lock::none(s),
                (Some(c), false) => {
                    if exclusive && !c.quorate {
                        return Err(failed(
                            "The cluster is inquorate: metadata changes are refused until quorum returns",
                        ));
                    }
                    let seqno = c.lock(&s, exclusive).map_err(|e| failed(e.to_string()))?;
                    if let Scope::Vg(v) = &s {
                        vg_locks.push((v.clone(), None));
                        if let Some(n) = seqno {
                            lvb_seqnos.push((v.clone(), n));
                        }
                    }
                    lock::none(s)
                }
                (None, false) => lock::lock_local(&env.lock_dir(), s, exclusive).map_err(|e| failed(e.to_string()))?,
            };
            locks.push(held);
        }
        let mut scan = env.scan_with(extra);
        // The lock's value block says which seqno the last change committed: disks showing
        // less are read again, once.
        let behind =
            |scan: &Scan| lvb_seqnos.iter().find(|(v, n)| scan.vgs.get(v).is_some_and(|f| f.vg.seqno < *n)).cloned();
        if behind(&scan).is_some() {
            scan = env.scan_with(extra);
            if let Some((v, n)) = behind(&scan) {
                let have = scan.vgs.get(&v).map_or(0, |f| f.vg.seqno);
                return Err(failed(format!(
                    "VG {v}: the disks show metadata seqno {have}, the cluster lock says {n} was committed: a device is not showing the latest writes"
                )));
            }
        }
        Ok(Tx { env, scan, locks, clvmd, vg_locks })
    }

    /// clvmd's mode when it runs (`single`, `dlm`, `cluster`).
    pub fn clvmd_mode(&self) -> Option<&str> {
        self.clvmd.as_ref().map(|c| c.mode.as_str())
    }

    /// The VG called `name`, or LVM2's refusal.
    pub fn vg(&self, name: &str) -> anyhow::Result<&FoundVg> {
        self.scan.vgs.get(name).ok_or_else(|| failed(format!("Volume group \"{name}\" not found")))
    }

    /// The VG, checked for a change: every PV present, and the cluster rules.
    pub fn vg_for_change(&self, name: &str) -> anyhow::Result<FoundVg> {
        let f = self.vg(name)?.clone();
        if f.partial() {
            return Err(failed(format!(
                "Cannot change VG {name} while PVs are missing (PV {} not found): bring them back, or vgreduce --removemissing",
                f.missing.join(", ")
            )));
        }
        if ops::is_clustered(&f.vg) && !self.env.common.nolocking && self.clvmd.is_none() {
            return Err(failed(format!(
                "Skipping clustered volume group {name}: clvmd is not running (start clvmd, or use --nolocking if no other node can change it)"
            )));
        }
        let shared = f.pvs.iter().any(|&i| {
            let s = &self.scan.pvs[i].spec;
            s.starts_with("gnbd://") || s.starts_with("/dev/gnbd/")
        });
        if !ops::is_clustered(&f.vg) && shared && self.clvmd_mode() == Some("cluster") {
            return Err(failed(format!(
                "Volume group {name} is on shared storage but not clustered while the cluster is up: make it clustered first (vgchange -c y {name})"
            )));
        }
        Ok(f)
    }

    /// Commits `new` as the next version of `old` (its seqno + 1). `dropped` are PVs that
    /// left the VG: their metadata areas are emptied and their labels marked unused.
    pub fn commit(&mut self, old: &FoundVg, mut new: VolumeGroup, dropped: &[usize]) -> anyhow::Result<()> {
        new.seqno = old.vg.seqno + 1;
        self.archive(&old.root, &old.vg.name)?;
        self.write(&new)?;
        for (v, s) in &mut self.vg_locks {
            if *v == old.vg.name || *v == new.name {
                *s = Some(new.seqno);
            }
        }
        for &i in dropped {
            orphan(&mut self.scan.pvs[i])?;
        }
        self.backup(&new)?;
        Ok(())
    }

    /// Writes `vg` (seqno as given) to every PV it lists; marks their labels used.
    pub fn write(&mut self, vg: &VolumeGroup) -> anyhow::Result<()> {
        let idx: Vec<usize> = vg
            .physical_volumes
            .iter()
            .map(|p| {
                self.scan.pv_by_uuid(&p.id).ok_or_else(|| failed(format!("PV {} of VG {} not found", p.id, vg.name)))
            })
            .collect::<anyhow::Result<_>>()?;
        let text = disk::vg_text(vg, &format!("Write from {}.", cmdline()), &self.env.host, self.env.now());
        let pvs: Vec<&Pv> = idx.iter().map(|&i| &self.scan.pvs[i]).collect();
        disk::commit(&pvs, &text).map_err(|e| failed(format!("Failed to write VG {}: {e}", vg.name)))?;
        for &i in &idx {
            let pv = &mut self.scan.pvs[i];
            disk::refresh(pv);
            let mut h = pv.label.pv_header.clone();
            if let Some(ext) = &mut h.extension {
                if ext.flags & PV_EXT_USED == 0 {
                    ext.flags |= PV_EXT_USED;
                    pv.write_label(h).map_err(|e| failed(e.to_string()))?;
                }
            }
        }
        Ok(())
    }

    /// Copies the text before a change to the archive directory (`VG_NNNNN-RAND.vg`).
    fn archive(&self, root: &Section, vg: &str) -> anyhow::Result<()> {
        if !self.env.archive_enabled() {
            return Ok(());
        }
        let dir = self.env.archive_dir();
        ensure_dir(&dir).map_err(|e| failed(format!("{}: {e}", dir.display())))?;
        let mut n = 0;
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(rest) = name.strip_prefix(&format!("{vg}_")) {
                    if let Some(k) = rest.get(..5).and_then(|d| d.parse::<u32>().ok()) {
                        n = n.max(k + 1);
                    }
                }
            }
        }
        let rand = u32::from_le_bytes(disk::random_id()[..4].try_into().unwrap_or([0; 4])) % 1_000_000_000;
        let path = dir.join(format!("{vg}_{n:05}-{rand}.vg"));
        let Ok(vgm) = VolumeGroup::from_root(root) else { return Ok(()) };
        let text =
            backup_text(&vgm, &format!("Created *before* executing '{}'", cmdline()), &self.env.host, self.env.now());
        daemon::write_atomic(&path, text.as_bytes()).map_err(|e| failed(format!("{}: {e}", path.display())))
    }

    /// Writes the backup file for `vg` (backup/backup_dir/VG).
    pub fn backup(&self, vg: &VolumeGroup) -> anyhow::Result<()> {
        if !self.env.backup_enabled() {
            return Ok(());
        }
        let dir = self.env.backup_dir();
        ensure_dir(&dir).map_err(|e| failed(format!("{}: {e}", dir.display())))?;
        let text =
            backup_text(vg, &format!("Created *after* executing '{}'", cmdline()), &self.env.host, self.env.now());
        let path = dir.join(&vg.name);
        daemon::write_atomic(&path, text.as_bytes()).map_err(|e| failed(format!("{}: {e}", path.display())))
    }

    /// The locks held (for messages).
    pub fn locks(&self) -> &[Held] {
        &self.locks
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        // Leave the new seqno in each VG lock's value block; closing the session releases
        // everything else.
        if let Some(c) = &mut self.clvmd {
            for (v, s) in &self.vg_locks {
                if s.is_some() {
                    if let Err(e) = c.unlock(&Scope::Vg(v.clone()), *s) {
                        eprintln!("  WARNING: {e}");
                    }
                }
            }
        }
    }
}

/// Empties the metadata areas of a PV that left its VG and clears `PV_EXT_USED`.
pub fn orphan(pv: &mut Pv) -> anyhow::Result<()> {
    for m in &pv.mdas {
        let h = MdaHeader::new(m.locn.offset, m.locn.size);
        let b = h.encode().map_err(|e| failed(e.to_string()))?;
        pv.dev.write_at(&b, m.locn.offset).map_err(|e| failed(format!("{}: {e}", pv.spec)))?;
    }
    let mut h = pv.label.pv_header.clone();
    if let Some(ext) = &mut h.extension {
        ext.flags &= !PV_EXT_USED;
    }
    pv.write_label(h).map_err(|e| failed(e.to_string()))?;
    disk::refresh(pv);
    Ok(())
}

/// A vgcfgbackup-format file: top-level keys, then the VG section.
pub fn backup_text(vg: &VolumeGroup, description: &str, host: &str, time: i64) -> String {
    let mut root = Section::new("");
    root.push("contents", Value::Str("Text Format Volume Group".into()));
    root.push("version", Value::Int(1));
    root.push("description", Value::Str(description.into()));
    root.push("creation_host", Value::Str(host.into()));
    root.push("creation_time", Value::Int(time));
    root.nodes.push(Node::Section(vg.to_section()));
    format!("# Generated by clvm {}\n\n{}", env!("CARGO_PKG_VERSION"), text::write(&root))
}

/// The command line, as LVM2 records it in descriptions.
pub fn cmdline() -> String {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(first) = args.first_mut() {
        *first = std::path::Path::new(first.as_str())
            .file_name()
            .map_or_else(|| first.clone(), |n| n.to_string_lossy().into_owned());
    }
    if args.first().is_some_and(|a| a == "clvm" || a == "lvm") && args.len() > 1 {
        args.remove(0);
    }
    args.join(" ")
}
