//! `-S/--select`: the subset of lvm2's selection language that compares fields with values:
//! `field=value`, `!=`, `<`, `<=`, `>`, `>=`, combined with `&&` (or `,`), `||` (or `#`), `!`
//! and parentheses. Sizes without a unit are in MiB, as in lvm2.

use super::fields::{lookup, FieldRef, Kind};
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
}

/// A selection lvm2 would refuse (its message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// Unknown field name.
    #[error("Unrecognised selection field: {0}")]
    UnknownField(String),
    /// No operator after the field.
    #[error("Unrecognised comparison operator: {0}")]
    BadOperator(String),
    /// Anything else.
    #[error("Selection syntax error at '{0}'.")]
    Syntax(String),
    /// A value that is not a number where one is needed.
    #[error("Failed to parse numeric value for selection field {0}.")]
    BadNumber(String),
}

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
                None => Err(SelectError::Syntax(self.s.to_owned())),
            };
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Result<Selection, SelectError> {
        let end = self.s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(self.s.len());
        let name = &self.s[..end];
        if name.is_empty() {
            return Err(SelectError::Syntax(self.s.to_owned()));
        }
        let field = lookup(name, self.prefix).ok_or_else(|| SelectError::UnknownField(name.to_owned()))?;
        self.s = self.s[end..].trim_start();
        let ops: [(&str, Op); 6] =
            [("!=", Op::Ne), ("<=", Op::Le), (">=", Op::Ge), ("=", Op::Eq), ("<", Op::Lt), (">", Op::Gt)];
        let (op, rest) = ops
            .iter()
            .find_map(|(t, op)| self.s.strip_prefix(t).map(|r| (*op, r)))
            .ok_or_else(|| SelectError::BadOperator(self.s.to_owned()))?;
        let rest = rest.trim_start();
        let (value, rest) = if let Some(q) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') {
            let body = &rest[1..];
            let close = body.find(q).ok_or_else(|| SelectError::Syntax(rest.to_owned()))?;
            (body[..close].to_owned(), &body[close + 1..])
        } else {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '&' || c == '|' || c == ',' || c == '#' || c == ')')
                .unwrap_or(rest.len());
            (rest[..end].to_owned(), &rest[end..])
        };
        let d = field.def();
        if d.kind.numeric() && d.kind != Kind::Time && parse_number(&value, d.kind).is_none() {
            return Err(SelectError::BadNumber(d.id.to_owned()));
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
        return Err(SelectError::Syntax(p.s.to_owned()));
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
        assert_eq!(parse("foo=1", "pv_"), Err(SelectError::UnknownField("foo".into())));
        assert!(matches!(parse("pv_name", "pv_"), Err(SelectError::BadOperator(_))));
        assert!(matches!(parse("pv_pe_count=x", "pv_"), Err(SelectError::BadNumber(_))));
        assert_eq!(parse_number("2", Kind::Size), Some(4096.0));
        assert_eq!(parse_number("1k", Kind::Size), Some(2.0));
    }
}
