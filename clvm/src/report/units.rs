//! Sizes as lvm2 prints them (`dm_size_to_string` with `si_unit_consistency = 1`): `--units`
//! parsing, the human forms (`r`, the default, with `<` when rounding hides a remainder; `h`;
//! `H`/`R` in powers of 1000) and the fixed units (`b s k m g t p e`, upper case = powers of
//! 1000, a leading number = a custom unit).

/// How sizes are shown: the unit letter and its factor in bytes (0 = human-readable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Units {
    /// The unit character as lvm2 keeps it (`r`, `h`, `H`, `R`, `b`, `s`, `k`, ..., `U` for a
    /// custom number of bytes).
    pub unit_type: char,
    /// Bytes per unit; 0 for the human-readable forms.
    pub factor: u64,
    /// Print the unit suffix (`--nosuffix` clears it; human forms always print one).
    pub suffix: bool,
}

impl Default for Units {
    /// lvm2's default: `r` (human-readable, powers of 1024, `<` on rounding).
    fn default() -> Self {
        Units { unit_type: 'r', factor: 0, suffix: true }
    }
}

/// Which suffix form: reports use [`SuffixType::Unit`] (`m`), the display commands
/// [`SuffixType::Short`] (` MiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuffixType {
    /// ` Mebibyte`
    Long,
    /// ` MiB`
    Short,
    /// `m`
    Unit,
}

/// `--units` that lvm2 does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid units specification")]
pub struct UnitsError;

impl Units {
    /// Parses a `--units` argument as `dm_units_to_factor(..., strict = 1)` does.
    pub fn parse(arg: &str) -> Result<Units, UnitsError> {
        let digits = arg.bytes().take_while(|b| b.is_ascii_digit()).count();
        let (num, rest) = arg.split_at(digits);
        let v: u64 = if num.is_empty() { 1 } else { num.parse().map_err(|_| UnitsError)? };
        if num.is_empty() && rest.starts_with('.') {
            return Err(UnitsError);
        }
        let mut chars = rest.chars();
        let c = chars.next().ok_or(UnitsError)?;
        if chars.next().is_some() {
            return Err(UnitsError);
        }
        let k: u64 = 1024;
        let s: u64 = 1000;
        let (mult, human) = match c {
            'h' | 'H' | 'r' | 'R' => (0, true),
            'b' | 'B' => (1, false),
            's' | 'S' => (512, false),
            'k' => (k, false),
            'm' => (k.pow(2), false),
            'g' => (k.pow(3), false),
            't' => (k.pow(4), false),
            'p' => (k.pow(5), false),
            'e' => (k.pow(6), false),
            'K' => (s, false),
            'M' => (s.pow(2), false),
            'G' => (s.pow(3), false),
            'T' => (s.pow(4), false),
            'P' => (s.pow(5), false),
            'E' => (s.pow(6), false),
            _ => return Err(UnitsError),
        };
        if human {
            return Ok(Units { unit_type: c, factor: 0, suffix: true });
        }
        if v == 0 {
            return Err(UnitsError);
        }
        let unit_type = if v == 1 { c } else { 'U' };
        let factor = v.checked_mul(mult).ok_or(UnitsError)?;
        Ok(Units { unit_type, factor, suffix: true })
    }

    /// Human-readable (`r`, `h`, `R`, `H`): the suffix is always printed.
    pub fn is_human(&self) -> bool {
        matches!(self.unit_type, 'r' | 'h' | 'R' | 'H')
    }

    /// A size given in 512-byte sectors, as lvm2 shows it.
    pub fn size(&self, sectors: u64, suffix_type: SuffixType) -> String {
        display_size(sectors, *self, suffix_type)
    }
}

const SHARED_1024: [[&str; 3]; 7] = [
    [" Exbibyte", " EiB", "e"],
    [" Pebibyte", " PiB", "p"],
    [" Tebibyte", " TiB", "t"],
    [" Gibibyte", " GiB", "g"],
    [" Mebibyte", " MiB", "m"],
    [" Kibibyte", " KiB", "k"],
    [" Byte    ", " B", "b"],
];
const SHARED_1000: [[&str; 3]; 7] = [
    [" Exabyte", " EB", "E"],
    [" Petabyte", " PB", "P"],
    [" Terabyte", " TB", "T"],
    [" Gigabyte", " GB", "G"],
    [" Megabyte", " MB", "M"],
    [" Kilobyte", " kB", "K"],
    // BASE_SPECIAL's first entry follows BASE_1000's six in lvm2's table.
    [" Byte    ", " B ", "B"],
];
const SPECIAL: [[&str; 3]; 3] = [[" Byte    ", " B ", "B"], [" Units   ", " Un", "U"], [" Sectors ", " Se", "S"]];
const UNKNOWN: [&str; 3] = ["         ", "   ", " "];

fn idx(t: SuffixType) -> usize {
    match t {
        SuffixType::Long => 0,
        SuffixType::Short => 1,
        SuffixType::Unit => 2,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Base {
    Unknown,
    B1024,
    B1000,
    Special,
}

/// `dm_size_to_string` for `size` sectors.
pub fn display_size(sectors: u64, units: Units, suffix_type: SuffixType) -> String {
    let ut = units.unit_type;
    let mut base = Base::Unknown;
    let mut s = 0usize;
    if let Some(i) = SHARED_1000[..6].iter().position(|e| e[2].starts_with(ut)) {
        base = Base::B1000;
        s = i;
    } else if let Some(i) = SHARED_1024[..6].iter().position(|e| e[2].starts_with(ut)) {
        base = Base::B1024;
        s = i;
    } else if let Some(i) = SPECIAL.iter().position(|e| e[2].starts_with(ut.to_ascii_uppercase())) {
        base = Base::Special;
        s = i;
    }
    let entry = |base: Base, s: usize| -> [&'static str; 3] {
        match base {
            Base::Unknown => UNKNOWN,
            Base::B1024 => SHARED_1024[s],
            Base::B1000 => SHARED_1000[s],
            Base::Special => SPECIAL[s],
        }
    };
    let mut include_suffix = units.suffix;
    if sectors == 0 {
        let sfx = if include_suffix { entry(base, s)[idx(suffix_type)] } else { "" };
        return format!("0{sfx}");
    }
    let size = u128::from(sectors) * 512;
    let mut prefix = "";
    let byte: u128;
    if base != Base::Unknown {
        byte = u128::from(units.factor.max(1));
    } else {
        let unit: u128 = if ut == 'H' || ut == 'R' { 1000 } else { 1024 };
        base = if unit == 1000 { Base::B1000 } else { Base::B1024 };
        let mut b = unit.pow(6);
        s = 0;
        while s < 6 && size < b {
            b /= unit;
            s += 1;
        }
        if s < 6 && (ut == 'R' || ut == 'r') {
            let d = 100.0 * size as f64 / b as f64;
            if (d.floor() - d.round_ties_even()).abs() >= f64::EPSILON {
                prefix = "<";
            }
        }
        byte = b;
        include_suffix = true;
    }
    let e = entry(base, s);
    let precision = match e[2].chars().next().map(|c| c.to_ascii_uppercase()) {
        Some('B') | Some('S') => 0,
        _ => 2,
    };
    let value = size as f64 / byte as f64;
    let sfx = if include_suffix { e[idx(suffix_type)] } else { "" };
    format!("{prefix}{value:.precision$}{sfx}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(sectors: u64) -> String {
        display_size(sectors, Units::default(), SuffixType::Unit)
    }

    #[test]
    fn human_forms() {
        assert_eq!(r(0), "0 ");
        assert_eq!(r(122880), "60.00m");
        assert_eq!(r(2040), "1020.00k");
        assert_eq!(r(1015), "507.50k");
        // 63 MiB minus one sector rounds up to 63.00 and is marked.
        assert_eq!(r(63 * 2048 - 1), "<63.00m");
        assert_eq!(display_size(122880, Units::default(), SuffixType::Short), "60.00 MiB");
        let h = Units::parse("H").unwrap();
        assert_eq!(display_size(368640, h, SuffixType::Unit), "188.74M");
    }

    #[test]
    fn fixed_units() {
        let b = Units::parse("b").unwrap();
        assert_eq!(display_size(368640, b, SuffixType::Unit), "188743680B");
        let s = Units::parse("s").unwrap();
        assert_eq!(display_size(368640, s, SuffixType::Unit), "368640S");
        let mut k = Units::parse("k").unwrap();
        assert_eq!(display_size(368640, k, SuffixType::Unit), "184320.00k");
        k.suffix = false;
        assert_eq!(display_size(368640, k, SuffixType::Unit), "184320.00");
        assert_eq!(display_size(0, k, SuffixType::Unit), "0");
        let m = Units::parse("m").unwrap();
        assert_eq!(display_size(0, m, SuffixType::Unit), "0m");
        assert_eq!(display_size(0, s, SuffixType::Unit), "0S");
        assert_eq!(Units::parse("x"), Err(UnitsError));
        assert_eq!(Units::parse("mm"), Err(UnitsError));
        assert_eq!(Units::parse(""), Err(UnitsError));
        assert_eq!(Units::parse("2k").unwrap().factor, 2048);
    }

    proptest! {
        #[test]
        fn sectors_unit_is_exact(n in 1u64..(1u64 << 44)) {
            let s = Units::parse("s").unwrap();
            prop_assert_eq!(display_size(n, s, SuffixType::Unit), format!("{n}S"));
        }

        #[test]
        fn human_never_panics(n in any::<u64>(), u in prop::sample::select(vec!["r", "h", "R", "H", "k", "M", "b", "3s"])) {
            let units = Units::parse(u).unwrap();
            let out = display_size(n, units, SuffixType::Unit);
            prop_assert!(!out.is_empty());
        }
    }
}
