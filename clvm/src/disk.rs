//! Physical volumes on devices: reading a PV's label, metadata area headers and texts;
//! `pvcreate`'s layout; and the commit of a new VG text in LVM2's three steps (texts, then
//! precommit headers, then commit headers), each step made stable before the next.
//!
//! The devices are `blockdev` devices: files, block devices (`/dev/gnbd/NAME` imports
//! included) and `gnbd://SERVER[:PORT]/NAME` exports through the client library.

use crate::crc::{calc_crc, INITIAL_CRC};
use crate::label::{DiskLocn, Label, LabelError, PvHeader, PvHeaderExtension, ID_LEN, LABEL_SCAN_SIZE, SECTOR_SIZE};
use crate::mda::{MdaError, MdaHeader, RawLocn, MDA_HEADER_SIZE};
use crate::text::{self, Section};
use crate::vg::{VgError, VolumeGroup};
use blockdev::{Device, DeviceError};
use std::sync::Arc;

/// Bytes per sector in sizes LVM2 keeps in sectors.
pub const SECTOR: u64 = 512;
/// Where pvcreate puts the first metadata area.
pub const MDA1_OFFSET: u64 = 4096;
/// pvcreate's default data alignment (and so pe_start): 1 MiB.
pub const DEFAULT_DATA_ALIGNMENT: u64 = 1 << 20;
/// The smallest device pvcreate accepts (LVM2: 2 MiB).
pub const MIN_PV_SIZE: u64 = 2 << 20;
/// The smallest metadata area we make.
pub const MIN_MDA_SIZE: u64 = 8 << 10;

/// Why reading or writing a PV failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{spec}: {source}")]
    Device { spec: String, source: DeviceError },
    #[error("{spec}: {source}")]
    Label { spec: String, source: LabelError },
    #[error("{spec}: metadata area at byte {offset}: {source}")]
    Mda { spec: String, offset: u64, source: MdaError },
    #[error("{spec}: metadata area at byte {offset}: {source}")]
    Text { spec: String, offset: u64, source: text::ParseError },
    #[error("{spec}: metadata area at byte {offset}: {source}")]
    Vg { spec: String, offset: u64, source: VgError },
    #[error("{spec}: {reason}")]
    Layout { spec: String, reason: String },
}

impl DiskError {
    fn dev(spec: &str, source: DeviceError) -> DiskError {
        DiskError::Device { spec: spec.to_owned(), source }
    }
}

/// One metadata area of a PV as found on the device.
#[derive(Debug, Clone)]
pub struct Mda {
    /// Where the area is (from the pv_header).
    pub locn: DiskLocn,
    /// Its header, or why it could not be read.
    pub header: Result<MdaHeader, String>,
}

/// A metadata text read from an area, checksum checked, parsed.
#[derive(Debug, Clone)]
pub struct MdaText {
    /// The slot it was read through.
    pub locn: RawLocn,
    /// The whole parsed text (VG section and top-level keys).
    pub root: Section,
    /// The VG in it.
    pub vg: VolumeGroup,
}

/// A device that carries an LVM2 label.
#[derive(Clone)]
pub struct Pv {
    /// How the device was named (`/dev/loop0`, `gnbd://srv/disk0`, a file).
    pub spec: String,
    /// The open device.
    pub dev: Arc<dyn Device>,
    /// The label and its pv_header.
    pub label: Label,
    /// The metadata areas the pv_header lists.
    pub mdas: Vec<Mda>,
}

impl std::fmt::Debug for Pv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pv").field("spec", &self.spec).field("label", &self.label).field("mdas", &self.mdas).finish()
    }
}

impl Pv {
    /// The PV UUID, dashed.
    pub fn uuid(&self) -> String {
        self.label.pv_header.uuid_string()
    }

    /// The device size now (the pv_header keeps the size at pvcreate time).
    pub fn dev_size(&self) -> u64 {
        self.dev.size()
    }

    /// The first data area's offset: where extent 0 starts when the PV joins a VG.
    pub fn pe_start(&self) -> u64 {
        self.label.pv_header.data_areas.first().map_or(DEFAULT_DATA_ALIGNMENT, |d| d.offset)
    }

    /// Reads the text in slot 0 (committed) or 1 (precommitted) of metadata area `i`; `None`
    /// when the slot is empty (an orphan PV) or the area is unreadable.
    pub fn read_text(&self, i: usize, precommitted: bool) -> Result<Option<MdaText>, DiskError> {
        let Some(Mda { locn, header: Ok(h) }) = self.mdas.get(i) else { return Ok(None) };
        let slot = if precommitted { h.precommitted() } else { h.committed() };
        let Some(r) = slot.copied() else { return Ok(None) };
        let mda_err = |source| DiskError::Mda { spec: self.spec.clone(), offset: locn.offset, source };
        let mut bytes = Vec::with_capacity(usize::try_from(r.size).unwrap_or(0));
        for (off, len) in h.text_extents(&r).map_err(mda_err)? {
            let mut piece = vec![0u8; usize::try_from(len).map_err(|_| mda_err(MdaError::BadSize { size: len }))?];
            self.dev.read_at(&mut piece, locn.offset + off).map_err(|e| DiskError::dev(&self.spec, e))?;
            bytes.extend_from_slice(&piece);
        }
        let computed = calc_crc(INITIAL_CRC, &bytes);
        if computed != r.checksum {
            return Err(mda_err(MdaError::BadTextChecksum { offset: r.offset, stored: r.checksum, computed }));
        }
        let body = bytes.strip_suffix(&[0]).unwrap_or(&bytes);
        let body = match body.iter().position(|&b| b == 0) {
            Some(n) => &body[..n],
            None => body,
        };
        let root = text::parse(body).map_err(|source| DiskError::Text {
            spec: self.spec.clone(),
            offset: locn.offset,
            source,
        })?;
        let vg = VolumeGroup::from_root(&root).map_err(|source| DiskError::Vg {
            spec: self.spec.clone(),
            offset: locn.offset,
            source,
        })?;
        Ok(Some(MdaText { locn: r, root, vg }))
    }

    /// Writes a new label (a changed pv_header: the `PV_EXT_USED` flag, say) and makes it
    /// stable.
    pub fn write_label(&mut self, pv_header: PvHeader) -> Result<(), DiskError> {
        let label = Label { sector: self.label.sector, offset: self.label.offset, pv_header };
        let sector = label.encode().map_err(|source| DiskError::Label { spec: self.spec.clone(), source })?;
        let at = self.label.sector * SECTOR_SIZE as u64;
        self.dev.write_at(&sector, at).map_err(|e| DiskError::dev(&self.spec, e))?;
        self.dev.sync().map_err(|e| DiskError::dev(&self.spec, e))?;
        self.label = label;
        Ok(())
    }
}

/// Reads the label and metadata area headers of a device; `Ok(None)` when it carries no
/// LVM2 label. A corrupt label is an error (pvck tells more); a corrupt metadata area header
/// is kept as an unreadable area.
pub fn read_pv(spec: &str, dev: Arc<dyn Device>) -> Result<Option<Pv>, DiskError> {
    let size = dev.size();
    if size < LABEL_SCAN_SIZE as u64 {
        return Ok(None);
    }
    let mut start = vec![0u8; LABEL_SCAN_SIZE];
    dev.read_at(&mut start, 0).map_err(|e| DiskError::dev(spec, e))?;
    let label = match Label::find(&start) {
        Ok(l) => l,
        Err(LabelError::NotFound) => return Ok(None),
        Err(source) => return Err(DiskError::Label { spec: spec.to_owned(), source }),
    };
    let mut mdas = Vec::new();
    for &locn in &label.pv_header.metadata_areas {
        let header = read_mda_header(&*dev, locn);
        mdas.push(Mda { locn, header });
    }
    Ok(Some(Pv { spec: spec.to_owned(), dev, label, mdas }))
}

fn read_mda_header(dev: &dyn Device, locn: DiskLocn) -> Result<MdaHeader, String> {
    let mut b = vec![0u8; MDA_HEADER_SIZE];
    dev.read_at(&mut b, locn.offset).map_err(|e| e.to_string())?;
    let h = MdaHeader::decode(&b).map_err(|e| e.to_string())?;
    if h.start != locn.offset || h.size != locn.size {
        return Err(format!(
            "mda_header says the area is {} bytes at {}, the pv_header says {} at {}",
            h.size, h.start, locn.size, locn.offset
        ));
    }
    Ok(h)
}

/// pvcreate's choices.
#[derive(Debug, Clone)]
pub struct PvcreateOptions {
    /// The PV UUID (`--uuid`), 32 characters; a random one when `None`.
    pub uuid: Option<[u8; ID_LEN]>,
    /// `--metadatasize`: bytes wanted for each metadata area (rounded so the data area is
    /// aligned); `None` = LVM2's default (the area fills up to the first aligned MiB).
    pub metadata_size: Option<u64>,
    /// `--dataalignment` in bytes (a multiple of 512).
    pub data_alignment: u64,
    /// `--pvmetadatacopies` 0, 1 or 2 (a second area at the end of the device).
    pub metadata_copies: u32,
}

impl Default for PvcreateOptions {
    fn default() -> Self {
        PvcreateOptions { uuid: None, metadata_size: None, data_alignment: DEFAULT_DATA_ALIGNMENT, metadata_copies: 1 }
    }
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// The label and empty metadata area headers pvcreate writes on a device of `dev_size`
/// bytes (sans-IO; [`pvcreate`] writes them).
pub fn pvcreate_layout(dev_size: u64, opts: &PvcreateOptions) -> Result<(Label, Vec<MdaHeader>), String> {
    if dev_size < MIN_PV_SIZE {
        return Err(format!(
            "device is {dev_size} bytes, smaller than the minimum PV size of {MIN_PV_SIZE} bytes (2 MiB)"
        ));
    }
    let align = opts.data_alignment;
    if align == 0 || !align.is_multiple_of(SECTOR) {
        return Err(format!("data alignment {align} is not a positive multiple of 512 bytes"));
    }
    if opts.metadata_copies > 2 {
        return Err(format!("metadata copies must be 0, 1 or 2, not {}", opts.metadata_copies));
    }
    let uuid = opts.uuid.unwrap_or_else(random_id);
    let (pe_start, mut mdas) = match opts.metadata_copies {
        0 => (align_up(LABEL_SCAN_SIZE as u64, align), Vec::new()),
        _ => {
            let want = opts.metadata_size.unwrap_or(0).max(MIN_MDA_SIZE);
            let want = align_up(want, SECTOR);
            let pe_start = align_up(MDA1_OFFSET + want, align);
            (pe_start, vec![MdaHeader::new(MDA1_OFFSET, pe_start - MDA1_OFFSET)])
        }
    };
    if opts.metadata_copies == 2 {
        let size = mdas[0].size;
        let start = (dev_size - size) / SECTOR * SECTOR;
        if start < pe_start + SECTOR {
            return Err("the device is too small for two metadata areas".into());
        }
        mdas.push(MdaHeader::new(start, dev_size - start));
    }
    let data_end = mdas.get(1).map_or(dev_size, |m| m.start);
    if pe_start >= data_end {
        return Err(format!(
            "the data area would start at byte {pe_start}, past the usable end of the device ({data_end} bytes)"
        ));
    }
    let pv_header = PvHeader {
        uuid,
        device_size: dev_size,
        data_areas: vec![DiskLocn { offset: pe_start, size: 0 }],
        metadata_areas: mdas.iter().map(|m| DiskLocn { offset: m.start, size: m.size }).collect(),
        extension: Some(PvHeaderExtension { version: 2, flags: 0, bootloader_areas: Vec::new() }),
    };
    Ok((Label::new(pv_header), mdas))
}

/// Writes a new PV on `dev`: clears any other label in the first four sectors, writes the
/// empty metadata area headers and then the label, and makes it stable.
pub fn pvcreate(spec: &str, dev: Arc<dyn Device>, opts: &PvcreateOptions) -> Result<Pv, DiskError> {
    let layout = |reason: String| DiskError::Layout { spec: spec.to_owned(), reason };
    let (label, mdas) = pvcreate_layout(dev.size(), opts).map_err(layout)?;
    for h in &mdas {
        let b = h.encode().map_err(|source| DiskError::Mda { spec: spec.to_owned(), offset: h.start, source })?;
        dev.write_at(&b, h.start).map_err(|e| DiskError::dev(spec, e))?;
    }
    // Sectors 0..4 other than the label's: clear an old LABELONE there (sector 0 is
    // otherwise left alone: a boot sector may live there).
    let mut start = vec![0u8; LABEL_SCAN_SIZE];
    dev.read_at(&mut start, 0).map_err(|e| DiskError::dev(spec, e))?;
    for s in 0..(LABEL_SCAN_SIZE / SECTOR_SIZE) as u64 {
        let at = s as usize * SECTOR_SIZE;
        if s != label.sector && &start[at..at + 8] == crate::label::LABEL_ID {
            dev.write_at(&[0u8; SECTOR_SIZE], s * SECTOR).map_err(|e| DiskError::dev(spec, e))?;
        }
    }
    let sector = label.encode().map_err(|source| DiskError::Label { spec: spec.to_owned(), source })?;
    dev.write_at(&sector, label.sector * SECTOR).map_err(|e| DiskError::dev(spec, e))?;
    dev.sync().map_err(|e| DiskError::dev(spec, e))?;
    let mdas =
        mdas.into_iter().map(|h| Mda { locn: DiskLocn { offset: h.start, size: h.size }, header: Ok(h) }).collect();
    Ok(Pv { spec: spec.to_owned(), dev, label, mdas })
}

/// Wipes the label of a PV (pvremove): the label sector and the metadata area headers.
pub fn pvremove(pv: &Pv) -> Result<(), DiskError> {
    for m in &pv.mdas {
        pv.dev.write_at(&[0u8; MDA_HEADER_SIZE], m.locn.offset).map_err(|e| DiskError::dev(&pv.spec, e))?;
    }
    pv.dev.write_at(&[0u8; SECTOR_SIZE], pv.label.sector * SECTOR).map_err(|e| DiskError::dev(&pv.spec, e))?;
    pv.dev.sync().map_err(|e| DiskError::dev(&pv.spec, e))
}

/// A random 32-character ID (PV, VG and LV UUIDs) in LVM2's alphabet, from the kernel's
/// random source.
pub fn random_id() -> [u8; ID_LEN] {
    const CHARS: &[u8; 64] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!#";
    let mut raw = [0u8; ID_LEN];
    let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw));
    if filled.is_err() {
        // No /dev/urandom: mix the clock, the pid and a counter (uniqueness, not secrecy).
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        h.write_u32(std::process::id());
        for (i, b) in raw.iter_mut().enumerate() {
            h.write_usize(i);
            *b = h.finish() as u8;
        }
    }
    // Like LVM2's id_create: letters and digits only ('!' and '#' are valid but never made).
    let mut id = [0u8; ID_LEN];
    for (o, r) in id.iter_mut().zip(raw) {
        *o = CHARS[(r as usize) % 62];
    }
    id
}

/// The new VG text, as one commit writes it: the VG's section then LVM2's top-level keys.
pub fn vg_text(vg: &VolumeGroup, description: &str, host: &str, time: i64) -> String {
    let mut root = Section::new("");
    root.nodes.push(text::Node::Section(vg.to_section()));
    root.push("contents", text::Value::Str("Text Format Volume Group".into()));
    root.push("version", text::Value::Int(1));
    root.push("description", text::Value::Str(description.into()));
    root.push("creation_host", text::Value::Str(host.into()));
    root.push("creation_time", text::Value::Int(time));
    text::write(&root)
}

/// One metadata area of a commit in flight.
#[derive(Debug)]
struct Step {
    pv: usize,
    at: u64,
    old: MdaHeader,
    new: RawLocn,
}

/// Writes `text` as the new committed metadata of every PV in `pvs` (each of their readable
/// metadata areas), in LVM2's order: the text everywhere, then every precommit header, then
/// every commit header, each step synced on every device before the next. A crash at any
/// point leaves each area with its old or its new committed text, never a torn one; the
/// highest seqno wins on the next read and the stale areas are rewritten then.
pub fn commit(pvs: &[&Pv], text: &str) -> Result<(), DiskError> {
    let mut steps = Vec::new();
    let sync_all = |pvs: &[&Pv]| -> Result<(), DiskError> {
        for pv in pvs {
            pv.dev.sync().map_err(|e| DiskError::dev(&pv.spec, e))?;
        }
        Ok(())
    };
    for (i, pv) in pvs.iter().enumerate() {
        for m in &pv.mdas {
            let Ok(h) = &m.header else { continue };
            let mda_err = |source| DiskError::Mda { spec: pv.spec.clone(), offset: m.locn.offset, source };
            let plan = h.plan_write(text.as_bytes()).map_err(mda_err)?;
            for (off, bytes) in &plan.writes {
                pv.dev.write_at(bytes, m.locn.offset + off).map_err(|e| DiskError::dev(&pv.spec, e))?;
            }
            steps.push(Step { pv: i, at: m.locn.offset, old: h.clone(), new: plan.locn });
        }
    }
    if steps.is_empty() {
        return Err(DiskError::Layout {
            spec: pvs.iter().map(|p| p.spec.as_str()).collect::<Vec<_>>().join(", "),
            reason: "no usable metadata area on any PV of the volume group".into(),
        });
    }
    sync_all(pvs)?;
    for precommit in [true, false] {
        for s in &steps {
            let pv = pvs[s.pv];
            let h = if precommit { s.old.precommit(s.new) } else { s.old.commit(s.new) };
            let b = h.encode().map_err(|source| DiskError::Mda { spec: pv.spec.clone(), offset: s.at, source })?;
            pv.dev.write_at(&b, s.at).map_err(|e| DiskError::dev(&pv.spec, e))?;
        }
        sync_all(pvs)?;
    }
    Ok(())
}

/// Re-reads the metadata area headers of `pv` (after a commit).
pub fn refresh(pv: &mut Pv) {
    for m in &mut pv.mdas {
        m.header = read_mda_header(&*pv.dev, m.locn);
    }
}
