//! The regular expressions of `-S field=~RE` / `field!~RE`: unanchored search with `^`, `$`,
//! `.`, `[...]`, `[^...]`, `*`, `+`, `?`, `|`, `( )` and `\` escapes (what lvm2's dm_regex
//! accepts for selections).

#[derive(Debug, Clone, PartialEq)]
enum Atom {
    Char(char),
    Any,
    Class { negated: bool, items: Vec<(char, char)> },
    Group(Vec<Vec<Piece>>),
    Start,
    End,
}

#[derive(Debug, Clone, PartialEq)]
struct Piece {
    atom: Atom,
    min: usize,
    max: Option<usize>,
}

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Regex {
    alts: Vec<Vec<Piece>>,
}

/// A pattern that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid regular expression {0:?}")]
pub struct RegexError(pub String);

struct Parser<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    src: &'a str,
}

impl Parser<'_> {
    fn err(&self) -> RegexError {
        RegexError(self.src.to_owned())
    }

    fn alts(&mut self, in_group: bool) -> Result<Vec<Vec<Piece>>, RegexError> {
        let mut alts = vec![Vec::new()];
        loop {
            match self.chars.peek().copied() {
                None => {
                    if in_group {
                        return Err(self.err());
                    }
                    return Ok(alts);
                }
                Some(')') if in_group => {
                    self.chars.next();
                    return Ok(alts);
                }
                Some('|') => {
                    self.chars.next();
                    alts.push(Vec::new());
                }
                Some(_) => {
                    let atom = self.atom()?;
                    let (min, max) = match self.chars.peek() {
                        Some('*') => (0, None),
                        Some('+') => (1, None),
                        Some('?') => (0, Some(1)),
                        _ => (1, Some(1)),
                    };
                    if (min, max) != (1, Some(1)) {
                        self.chars.next();
                    }
                    alts.last_mut().expect("one alternative at least").push(Piece { atom, min, max });
                }
            }
        }
    }

    fn atom(&mut self) -> Result<Atom, RegexError> {
        let c = self.chars.next().ok_or_else(|| self.err())?;
        Ok(match c {
            '.' => Atom::Any,
            '^' => Atom::Start,
            '$' => Atom::End,
            '(' => Atom::Group(self.alts(true)?),
            '\\' => Atom::Char(self.chars.next().ok_or_else(|| self.err())?),
            '[' => {
                let negated = self.chars.peek() == Some(&'^');
                if negated {
                    self.chars.next();
                }
                let mut items = Vec::new();
                let mut first = true;
                loop {
                    let c = self.chars.next().ok_or_else(|| self.err())?;
                    if c == ']' && !first {
                        break;
                    }
                    first = false;
                    let c = if c == '\\' { self.chars.next().ok_or_else(|| self.err())? } else { c };
                    let mut ahead = self.chars.clone();
                    if ahead.next() == Some('-') && ahead.peek().is_some_and(|&e| e != ']') {
                        self.chars.next();
                        let e = self.chars.next().ok_or_else(|| self.err())?;
                        items.push((c, e));
                    } else {
                        items.push((c, c));
                    }
                }
                Atom::Class { negated, items }
            }
            '*' | '+' | '?' | ')' => return Err(self.err()),
            c => Atom::Char(c),
        })
    }
}

impl Regex {
    /// Compiles a pattern.
    pub fn new(src: &str) -> Result<Regex, RegexError> {
        let mut p = Parser { chars: src.chars().peekable(), src };
        Ok(Regex { alts: p.alts(false)? })
    }

    /// Whether the pattern matches anywhere in `text`.
    pub fn is_match(&self, text: &str) -> bool {
        let t: Vec<char> = text.chars().collect();
        (0..=t.len()).any(|start| match_alts(&self.alts, &t, start, &mut |_| true))
    }
}

fn match_alts(alts: &[Vec<Piece>], t: &[char], at: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    alts.iter().any(|seq| match_seq(seq, t, at, k))
}

fn match_seq(seq: &[Piece], t: &[char], at: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    match seq.split_first() {
        None => k(at),
        Some((p, rest)) => match_piece(p, 0, t, at, &mut |next| match_seq(rest, t, next, k)),
    }
}

/// Matches `p` repeated (count so far `n`), then the continuation.
fn match_piece(p: &Piece, n: usize, t: &[char], at: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    // Greedy: one more repetition first, then stop if allowed.
    if p.max.is_none_or(|m| n < m) {
        let mut more = |next: usize| (next != at || p.max.is_some()) && match_piece(p, n + 1, t, next, k);
        if match_atom(&p.atom, t, at, &mut more) {
            return true;
        }
    }
    n >= p.min && k(at)
}

fn match_atom(a: &Atom, t: &[char], at: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    match a {
        Atom::Start => at == 0 && k(at),
        Atom::End => at == t.len() && k(at),
        Atom::Any => at < t.len() && k(at + 1),
        Atom::Char(c) => t.get(at) == Some(c) && k(at + 1),
        Atom::Class { negated, items } => match t.get(at) {
            Some(c) => (items.iter().any(|&(lo, hi)| (lo..=hi).contains(c)) != *negated) && k(at + 1),
            None => false,
        },
        Atom::Group(alts) => match_alts(alts, t, at, k),
    }
}

#[cfg(test)]
mod tests {
    use super::Regex;

    fn m(re: &str, t: &str) -> bool {
        Regex::new(re).unwrap().is_match(t)
    }

    #[test]
    fn matches_like_posix_ere() {
        assert!(m("^m", "mwi-a-m---"));
        assert!(!m("^m", "-wi-a-----"));
        assert!(m("lv$", "mylv"));
        assert!(m("a.c", "xxabcxx"));
        assert!(m("^ab*c$", "ac"));
        assert!(m("^ab+c$", "abbbc"));
        assert!(!m("^ab+c$", "ac"));
        assert!(m("^(lin|str)$", "str"));
        assert!(!m("^(lin|str)$", "stri"));
        assert!(m("[0-9]+", "pv12"));
        assert!(m("^[^-]", "mwi"));
        assert!(!m("^[^-]", "-wi"));
        assert!(m("x?y", "y"));
        assert!(m("\\.", "a.b"));
        assert!(!m("\\.", "ab"));
        assert!(m("", "anything"));
        assert!(Regex::new("(").is_err());
        assert!(Regex::new("*a").is_err());
    }
}
