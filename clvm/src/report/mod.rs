//! Reports byte-identical to Debian's lvm2 2.03.16: `pvs`, `vgs`, `lvs` (and `--segments`),
//! `pvdisplay`, `vgdisplay`, `lvdisplay` (full, `-c`, `-s`, `-m`, `vgdisplay -v`), rendered
//! from our model without I/O.
//!
//! The command-line layer scans the devices and fills a [`Source`]: every labelled PV
//! ([`PvSource`]: device path, size, major:minor, label, metadata area headers) and the winning
//! metadata of every VG. PVs belong to a VG by UUID (the `vg` field is informational). It
//! passes a [`StateFn`] saying how each LV is activated ([`LvState::Unknown`] reproduces
//! stock lvm2 with activation off: `XX` in lv_attr). Then:
//!
//! - reports: [`ReportArgs::parse`] (or fill [`ReportArgs`] from clap) and [`report`];
//! - display commands: [`DisplayArgs::parse`] and [`display`].
//!
//! Both return an [`Output`]: print `stdout` and `stderr` as they are (every line already
//! has lvm2's two-space prefix) and exit with `status`. A [`ReportError`] is a refusal: print
//! [`ReportError::stderr`] (lvm2's full text, field list included where lvm2 prints one) and
//! exit with [`ReportError::exit_code`]; its `Display` is the one-line message.
//!
//! ```
//! use clvm::report::{report, Command, LvState, ReportArgs, Source};
//!
//! let src = Source::default();
//! let args = ReportArgs::parse(Command::Vgs, &["-o", "+vg_uuid", "--units", "g"]).unwrap();
//! let out = report(&args, &src, &|_, _| LvState::Inactive).unwrap();
//! assert_eq!(out.stdout, ""); // no VGs: lvm2 prints nothing, not even headings
//!
//! let err = report(&ReportArgs::parse(Command::Pvs, &["-o", "nope"]).unwrap(), &src, &|_, _| LvState::Inactive);
//! assert_eq!(err.unwrap_err().to_string(), "Unrecognised field: nope");
//! ```

mod data;
mod display;
mod engine;
mod fields;
mod regex;
mod select;
mod table;
mod units;
mod values;

pub use data::{ActiveLv, LvState, PvSource, Source, StateFn};
pub use display::{display, DisplayArgs, DisplayCommand};
pub use engine::{report, Command, Output, ReportArgs, ReportError, ReportFormat};
pub use fields::{all_fields, help_text, lookup, FieldDef, FieldRef, Kind, Obj};
pub use select::{parse as parse_selection, Op, SelectError, Selection};
pub use units::{display_size, SuffixType, Units, UnitsError};

#[cfg(test)]
mod tests;
