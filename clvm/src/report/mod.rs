//! Reports byte-identical to Debian's lvm2 2.03: `pvs`, `vgs`, `lvs` (and `--segments`), and
//! the `pvdisplay`, `vgdisplay`, `lvdisplay` layouts, rendered from our model without I/O.
//!
//! The caller (the command-line layer) scans the devices, fills a [`Source`] (every labelled
//! PV with its device name, size, label and metadata area headers; every VG's winning
//! metadata), says how each LV is activated through a [`StateFn`], parses the command line
//! into [`ReportArgs`] and prints [`Output::stdout`] / [`Output::stderr`] (each line already
//! carries lvm2's two-space message prefix). A [`ReportError`] is one line for stderr (also
//! without the prefix) and exit status 5 (3 for a bad command line, see [`ReportError::exit_code`]).
//!
//! ```
//! use clvm::report::{report, Command, LvState, ReportArgs, Source};
//!
//! let src = Source::default();
//! let args = ReportArgs::new(Command::Vgs);
//! let out = report(&args, &src, &|_, _| LvState::Inactive).unwrap();
//! assert_eq!(out.stdout, ""); // no VGs: lvm2 prints nothing, not even headings
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
