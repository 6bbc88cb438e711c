//! `-S/--select`: the subset of lvm2's selection language that compares fields with values:
//! `field=value`, `!=`, `<`, `<=`, `>`, `>=`, combined with `&&` (or `,`), `||` (or `#`), `!`
//! and parentheses. Sizes without a unit are in MiB, as in lvm2.

use super::fields::{help_text_with_types, lookup, FieldRef, Kind};
use super::regex::Regex;
use super::units::Units;

/// A parsed selection.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    /// `field OP value`
    Cmp {
        /// The field.
        field: FieldRef,
        /// The operator.
        op: Op,
        /// The value as given.
        value: String,
    },
    /// `a && b`
    And(Box<Selection>, Box<Selection>),
    /// `a || b`
    Or(Box<Selection>, Box<Selection>),
    /// `!a`
    Not(Box<Selection>),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `=~` (regular expression search)
    Match,
    /// `!~`
    NotMatch,
}

/// A selection lvm2 would refuse (its message). `at` is the text from the comparison that
/// failed, for lvm2's "Selection syntax error at '...'" line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// Unknown field name.
    #[error("Unrecognised selection field: {name}")]
    UnknownField { name: String, at: String },
    /// No operator after the field.
    #[error("Unrecognised comparison operator: {rest}")]
    BadOperator { rest: String, at: String },
    /// A regular expression that does not compile.
    #[error("Failed to parse regex {value}.")]
    BadRegex { value: String, at: String },
    /// A value that is not a number where one is needed.
    #[error("Failed to parse numeric value for selection field {field}.")]
    BadNumber { field: String, at: String },
    /// Anything else.
    #[error("Selection syntax error at '{at}'.")]
    Syntax { at: String },
}

impl SelectError {
    /// Everything lvm2 prints on stderr for it, lines prefixed.
    pub fn stderr(&self) -> String {
        let pre = |s: &str| -> String { s.lines().map(|l| format!("  {l}\n")).collect() };
        let tail =
            |at: &str| format!("  Selection syntax error at '{at}'.\n  Use 'help' for selection to get more help.\n");
        match self {
            SelectError::UnknownField { at, .. } => {
                format!("{}   \n  {self}\n{}", pre(&help_text_with_types()).trim_end_matches("   \n"), tail(at))
            }
            SelectError::BadOperator { at, .. } => format!("{}  {self}\n{}", pre(SELECTION_HELP), tail(at)),
            SelectError::BadRegex { at, .. } | SelectError::BadNumber { at, .. } => format!("  {self}\n{}", tail(at)),
            SelectError::Syntax { .. } => format!("  {self}\n  Use 'help' for selection to get more help.\n"),
        }
    }
}

/// lvm2 2.03.16's selection help (`_display_selection_help`), printed before an operator error.
pub(crate) const SELECTION_HELP: &str = concat!(
    "Selection operands\n",
    "------------------\n",
    "  field               - Reporting field.\n",
    "  number              - Non-negative integer value.\n",
    "  size                - Floating point value with units, 'm' unit used by default if not specified.\n",
    "  percent             - Non-negative integer with or without % suffix.\n",
    "  string              - Characters quoted by ' or \" or unquoted.\n",
    "  string list         - Strings enclosed by [ ] or { } and elements delimited by either\n",
    "                        \"all items must match\" or \"at least one item must match\" operator.\n",
    "  regular expression  - Characters quoted by ' or \" or unquoted.\n",
    " \n",
    "Reserved values\n",
    "---------------\n",
    "  -1, unknown, undefined, undef   - Reserved value for undefined numeric value. [number]\n",
    "  allocatable, yes                -  [unknown]\n",
    "  allocatable, no                 -  [unknown]\n",
    "  exported, yes                   -  [unknown]\n",
    "  exported, no                    -  [unknown]\n",
    "  missing, yes                    -  [unknown]\n",
    "  missing, no                     -  [unknown]\n",
    "  used, in use, yes               -  [unknown]\n",
    "  used, in use, no                -  [unknown]\n",
    "  duplicate, yes                  -  [unknown]\n",
    "  duplicate, no                   -  [unknown]\n",
    "  extendable, yes                 -  [unknown]\n",
    "  extendable, no                  -  [unknown]\n",
    "  exported, yes                   -  [unknown]\n",
    "  exported, no                    -  [unknown]\n",
    "  partial, yes                    -  [unknown]\n",
    "  partial, no                     -  [unknown]\n",
    "  clustered, yes                  -  [unknown]\n",
    "  clustered, no                   -  [unknown]\n",
    "  shared, yes                     -  [unknown]\n",
    "  shared, no                      -  [unknown]\n",
    "  writeable, rw, read-write       -  [unknown]\n",
    "  read-only, r, ro                -  [unknown]\n",
    " \n",
    "Selection operators\n",
    "-------------------\n",
    "  Comparison operators:\n",
    "        =~  - Matching regular expression. [regex]\n",
    "        !~  - Not matching regular expression. [regex]\n",
    "         =  - Equal to. [number, size, percent, string, string list, time]\n",
    "        !=  - Not equal to. [number, size, percent, string, string_list, time]\n",
    "        >=  - Greater than or equal to. [number, size, percent, time]\n",
    "         >  - Greater than. [number, size, percent, time]\n",
    "        <=  - Less than or equal to. [number, size, percent, time]\n",
    "         <  - Less than. [number, size, percent, time]\n",
    "     since  - Since specified time (same as '>='). [time]\n",
    "     after  - After specified time (same as '>'). [time]\n",
    "     until  - Until specified time (same as '<='). [time]\n",
    "    before  - Before specified time (same as '<'). [time]\n",
    " \n",
    "  Logical and grouping operators:\n",
    "      &&  - All fields must match\n",
    "       ,  - All fields must match\n",
    "      ||  - At least one field must match\n",
    "       #  - At least one field must match\n",
    "       !  - Logical negation\n",
    "       (  - Left parenthesis\n",
    "       )  - Right parenthesis\n",
    "       [  - List start\n",
    "       ]  - List end\n",
    "       {  - List subset start\n",
    "       }  - List subset end\n",
    " \n",
);

struct P<'a> {
    s: &'a str,
    prefix: &'a str,
}

impl<'a> P<'a> {
    fn ws(&mut self) {
        self.s = self.s.trim_start();
    }

    fn or(&mut self) -> Result<Selection, SelectError> {
        let mut left = self.and()?;
        loop {
            self.ws();
            if let Some(r) = self.s.strip_prefix("||").or_else(|| self.s.strip_prefix('#')) {
                self.s = r;
                let right = self.and()?;
                left = Selection::Or(Box::new(left), Box::new(right));
            } else {
                return Ok(left);
            }
        }
    }

    fn and(&mut self) -> Result<Selection, SelectError> {
        let mut left = self.unary()?;
        loop {
            self.ws();
            if let Some(r) = self.s.strip_prefix("&&").or_else(|| self.s.strip_prefix(',')) {
                self.s = r;
                let right = self.unary()?;
                left = Selection::And(Box::new(left), Box::new(right));
            } else {
                return Ok(left);
            }
        }
    }

    fn unary(&mut self) -> Result<Selection, SelectError> {
        self.ws();
        if let Some(r) = self.s.strip_prefix('!') {
            self.s = r;
            return Ok(Selection::Not(Box::new(self.unary()?)));
        }
        if let Some(r) = self.s.strip_prefix('(') {
            self.s = r;
            let inner = self.or()?;
            self.ws();
            return match self.s.strip_prefix(')') {
                Some(r) => {
                    self.s = r;
                    Ok(inner)
                }
                None => Err(SelectError::Syntax { at: self.s.to_owned() }),
            };
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Result<Selection, SelectError> {
        let at = self.s.to_owned();
        let end = self.s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(self.s.len());
        let name = &self.s[..end];
        if name.is_empty() {
            return Err(SelectError::Syntax { at });
        }
        let field = lookup(name, self.prefix)
            .ok_or_else(|| SelectError::UnknownField { name: name.to_owned(), at: at.clone() })?;
        self.s = self.s[end..].trim_start();
        let ops: [(&str, Op); 8] = [
            ("=~", Op::Match),
            ("!~", Op::NotMatch),
            ("!=", Op::Ne),
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("=", Op::Eq),
            ("<", Op::Lt),
            (">", Op::Gt),
        ];
        let (op, rest) = ops
            .iter()
            .find_map(|(t, op)| self.s.strip_prefix(t).map(|r| (*op, r)))
            .ok_or_else(|| SelectError::BadOperator { rest: self.s.to_owned(), at: at.clone() })?;
        let rest = rest.trim_start();
        let (value, rest) = if let Some(q) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') {
            let body = &rest[1..];
            let close = body.find(q).ok_or_else(|| SelectError::Syntax { at: rest.to_owned() })?;
            (body[..close].to_owned(), &body[close + 1..])
        } else {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '&' || c == '|' || c == ',' || c == '#' || c == ')')
                .unwrap_or(rest.len());
            (rest[..end].to_owned(), &rest[end..])
        };
        let d = field.def();
        if matches!(op, Op::Match | Op::NotMatch) {
            if Regex::new(&value).is_err() {
                return Err(SelectError::BadRegex { value, at });
            }
        } else if d.kind.numeric() && d.kind != Kind::Time && parse_number(&value, d.kind).is_none() {
            return Err(SelectError::BadNumber { field: d.id.to_owned(), at });
        }
        self.s = rest;
        Ok(Selection::Cmp { field, op, value })
    }
}

/// A selection value for a numeric field, in the unit the field's sort value uses (sectors for
/// sizes, MiB when no unit is given).
pub(crate) fn parse_number(v: &str, kind: Kind) -> Option<f64> {
    let end = v.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-')).unwrap_or(v.len());
    let n: f64 = v[..end].parse().ok()?;
    let unit = &v[end..];
    if kind == Kind::Size {
        let factor = if unit.is_empty() {
            1024.0 * 1024.0
        } else {
            let u = Units::parse(unit).ok()?;
            if u.factor == 0 {
                return None;
            }
            u.factor as f64
        };
        Some(n * factor / 512.0)
    } else if unit.is_empty() || (kind == Kind::Pct && unit == "%") {
        Some(n)
    } else {
        None
    }
}

/// Parses a `-S` string for a report whose field prefix is `prefix`.
pub fn parse(s: &str, prefix: &str) -> Result<Selection, SelectError> {
    let mut p = P { s, prefix };
    let sel = p.or()?;
    p.ws();
    if !p.s.is_empty() {
        return Err(SelectError::Syntax { at: p.s.to_owned() });
    }
    Ok(sel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_simple_forms() {
        let s = parse("vg_name=vga", "pv_").unwrap();
        assert!(matches!(s, Selection::Cmp { op: Op::Eq, ref value, .. } if value == "vga"));
        let s = parse("vg_name!=vga&&pv_name=/dev/loop3", "pv_").unwrap();
        assert!(matches!(s, Selection::And(..)));
        let s = parse("(name=a || name='b c') && !size>10m", "lv_").unwrap();
        assert!(matches!(s, Selection::And(..)));
        assert_eq!(parse("foo=1", "pv_"), Err(SelectError::UnknownField { name: "foo".into(), at: "foo=1".into() }));
        assert!(matches!(parse("pv_name", "pv_"), Err(SelectError::BadOperator { .. })));
        assert!(matches!(parse("pv_pe_count=x", "pv_"), Err(SelectError::BadNumber { .. })));
        assert_eq!(parse_number("2", Kind::Size), Some(4096.0));
        assert_eq!(parse_number("1k", Kind::Size), Some(2.0));
    }
}
