//! LVM2's configuration-text grammar (the language of metadata texts, `vgcfgbackup` files and
//! `lvm.conf`): a tree of sections and key/value pairs.
//!
//! ```text
//! file    := item*
//! item    := NAME '{' item* '}'                  a section
//!          | NAME '=' value                      a key
//! value   := scalar | '[' (scalar (',' scalar)* ','?)? ']'
//! scalar  := INT | FLOAT | STRING
//! INT     := [+-]? digits | [+-]? 0x hexdigits   (64-bit signed)
//! FLOAT   := [+-]? digits? '.' digits?           (a number with a dot)
//! STRING  := '"' (char | '\' char)* '"'          (backslash takes the next char literally)
//!          | '\'' char* '\''
//! NAME    := any run of characters but blanks and { } [ ] , = " ' #
//! comment := '#' to the end of the line; whitespace (spaces, tabs, newlines) anywhere
//! ```
//!
//! [`write()`] produces LVM2's layout: one key per line, sections opened by `name {` and
//! indented by one tab per level, arrays on one line, strings with `"` and `\` escaped.

use std::fmt::Write as _;

/// Deepest nesting of sections accepted (LVM2 metadata uses 4).
pub const MAX_DEPTH: usize = 64;

/// A parse failure with the line it happened on (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct ParseError {
    /// Line of the offending token.
    pub line: usize,
    /// What went wrong.
    pub kind: ParseErrorKind,
}

/// What a parse failure was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    /// The input is not UTF-8.
    #[error("metadata text is not valid UTF-8")]
    NotUtf8,
    /// A string runs to the end of the input.
    #[error("unterminated string")]
    UnterminatedString,
    /// A token the grammar does not allow here.
    #[error("expected {expected}, found {found}")]
    Unexpected { expected: &'static str, found: String },
    /// A number that does not parse or does not fit 64 bits.
    #[error("bad number {text:?}")]
    BadNumber { text: String },
    /// A `}` with no open section, or a section left open at the end.
    #[error("unbalanced braces: {what}")]
    Unbalanced { what: &'static str },
    /// Sections nested deeper than [`MAX_DEPTH`].
    #[error("sections nested deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// A scalar or an array value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A 64-bit signed integer.
    Int(i64),
    /// A floating-point number (always written with a dot).
    Float(f64),
    /// A string (unescaped).
    Str(String),
    /// An array of scalars, possibly empty, possibly mixed.
    Array(Vec<Value>),
}

/// One entry of a section: a key with a value, or a subsection.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// `key = value`.
    Pair { key: String, value: Value },
    /// `name { ... }`.
    Section(Section),
}

/// A named section; the file itself is a section with an empty name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Section {
    /// The section's name.
    pub name: String,
    /// Its entries in file order.
    pub nodes: Vec<Node>,
}

impl Section {
    /// A new, empty section.
    pub fn new(name: impl Into<String>) -> Section {
        Section { name: name.into(), nodes: Vec::new() }
    }

    /// The value of the first `key` in this section.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.nodes.iter().find_map(|n| match n {
            Node::Pair { key: k, value } if k == key => Some(value),
            _ => None,
        })
    }

    /// The first subsection called `name`.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections().find(|s| s.name == name)
    }

    /// The subsections in order.
    pub fn sections(&self) -> impl Iterator<Item = &Section> {
        self.nodes.iter().filter_map(|n| match n {
            Node::Section(s) => Some(s),
            Node::Pair { .. } => None,
        })
    }

    /// Appends `key = value`.
    pub fn push(&mut self, key: impl Into<String>, value: Value) {
        self.nodes.push(Node::Pair { key: key.into(), value });
    }

    /// Sets the first `key` to `value`, appending it when absent.
    pub fn set(&mut self, key: &str, value: Value) {
        for n in &mut self.nodes {
            if let Node::Pair { key: k, value: v } = n {
                if k == key {
                    *v = value;
                    return;
                }
            }
        }
        self.push(key, value);
    }
}

/// Parses a whole text into its root section (named "").
pub fn parse(input: &[u8]) -> Result<Section, ParseError> {
    let text = std::str::from_utf8(input).map_err(|e| {
        let line = 1 + input[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count();
        ParseError { line, kind: ParseErrorKind::NotUtf8 }
    })?;
    let mut p = Parser { lx: Lexer { s: text.as_bytes(), src: text, pos: 0, line: 1 } };
    let mut root = Section::default();
    // An explicit stack instead of recursion: garbage cannot overflow ours.
    let mut stack: Vec<Section> = Vec::new();
    loop {
        let (line, tok) = p.lx.next()?;
        match tok {
            Tok::End => {
                if !stack.is_empty() {
                    return Err(ParseError { line, kind: ParseErrorKind::Unbalanced { what: "section not closed" } });
                }
                return Ok(root);
            }
            Tok::Close => {
                let Some(done) = stack.pop() else {
                    return Err(ParseError { line, kind: ParseErrorKind::Unbalanced { what: "'}' without '{'" } });
                };
                stack.last_mut().unwrap_or(&mut root).nodes.push(Node::Section(done));
            }
            Tok::Name(name) => {
                let (line2, t2) = p.lx.next()?;
                match t2 {
                    Tok::Open => {
                        if stack.len() >= MAX_DEPTH {
                            return Err(ParseError { line: line2, kind: ParseErrorKind::TooDeep });
                        }
                        stack.push(Section::new(name));
                    }
                    Tok::Eq => {
                        let value = p.value()?;
                        stack.last_mut().unwrap_or(&mut root).push(name, value);
                    }
                    other => return Err(unexpected(line2, "'=' or '{' after a name", &other)),
                }
            }
            other => return Err(unexpected(line, "a name or '}'", &other)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Open,
    Close,
    LBracket,
    RBracket,
    Comma,
    Eq,
    Str(String),
    Int(i64),
    Float(f64),
    Name(String),
    End,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Open => "'{'".into(),
        Tok::Close => "'}'".into(),
        Tok::LBracket => "'['".into(),
        Tok::RBracket => "']'".into(),
        Tok::Comma => "','".into(),
        Tok::Eq => "'='".into(),
        Tok::Str(s) => format!("string {:?}", truncate(s)),
        Tok::Int(i) => format!("number {i}"),
        Tok::Float(f) => format!("number {f}"),
        Tok::Name(n) => format!("name {:?}", truncate(n)),
        Tok::End => "end of text".into(),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

fn unexpected(line: usize, expected: &'static str, found: &Tok) -> ParseError {
    ParseError { line, kind: ParseErrorKind::Unexpected { expected, found: describe(found) } }
}

struct Lexer<'a> {
    s: &'a [u8],
    src: &'a str,
    pos: usize,
    line: usize,
}

fn is_name_byte(b: u8) -> bool {
    !b.is_ascii_whitespace() && !matches!(b, b'{' | b'}' | b'[' | b']' | b',' | b'=' | b'"' | b'\'' | b'#')
}

impl Lexer<'_> {
    /// The next token and the line it starts on.
    fn next(&mut self) -> Result<(usize, Tok), ParseError> {
        loop {
            match self.s.get(self.pos) {
                None => return Ok((self.line, Tok::End)),
                Some(b'\n') => {
                    self.line += 1;
                    self.pos += 1;
                }
                Some(b) if b.is_ascii_whitespace() => self.pos += 1,
                Some(b'#') => {
                    while self.s.get(self.pos).is_some_and(|&b| b != b'\n') {
                        self.pos += 1;
                    }
                }
                Some(_) => break,
            }
        }
        let line = self.line;
        let b = self.s[self.pos];
        let single = match b {
            b'{' => Some(Tok::Open),
            b'}' => Some(Tok::Close),
            b'[' => Some(Tok::LBracket),
            b']' => Some(Tok::RBracket),
            b',' => Some(Tok::Comma),
            b'=' => Some(Tok::Eq),
            _ => None,
        };
        if let Some(t) = single {
            self.pos += 1;
            return Ok((line, t));
        }
        if b == b'"' || b == b'\'' {
            return self.string(b).map(|s| (line, Tok::Str(s)));
        }
        let start = self.pos;
        while self.s.get(self.pos).is_some_and(|&c| is_name_byte(c)) {
            self.pos += 1;
        }
        let word = &self.src[start..self.pos];
        if matches!(b, b'0'..=b'9' | b'+' | b'-' | b'.') && word.bytes().any(|c| c.is_ascii_digit()) {
            return number(word)
                .map(|t| (line, t))
                .ok_or(ParseError { line, kind: ParseErrorKind::BadNumber { text: truncate(word) } });
        }
        Ok((line, Tok::Name(word.to_owned())))
    }

    fn string(&mut self, quote: u8) -> Result<String, ParseError> {
        let start_line = self.line;
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.pos) else {
                return Err(ParseError { line: start_line, kind: ParseErrorKind::UnterminatedString });
            };
            self.pos += 1;
            match c {
                b'\n' => {
                    self.line += 1;
                    out.push(c);
                }
                b'\\' if quote == b'"' => {
                    let Some(&n) = self.s.get(self.pos) else {
                        return Err(ParseError { line: start_line, kind: ParseErrorKind::UnterminatedString });
                    };
                    if n == b'\n' {
                        self.line += 1;
                    }
                    out.push(n);
                    self.pos += 1;
                }
                c if c == quote => break,
                c => out.push(c),
            }
        }
        // Only ASCII bytes were removed from valid UTF-8 (quotes and backslashes), so the rest
        // stays valid.
        Ok(String::from_utf8(out).expect("removing ASCII from UTF-8 keeps it UTF-8"))
    }
}

/// An integer or a float token, or `None` when `w` is not a number.
fn number(w: &str) -> Option<Tok> {
    if w.contains('.') {
        let f: f64 = w.parse().ok()?;
        return f.is_finite().then_some(Tok::Float(f));
    }
    let (neg, digits) = match w.as_bytes().first() {
        Some(b'-') => (true, &w[1..]),
        Some(b'+') => (false, &w[1..]),
        _ => (false, w),
    };
    let mag: u64 = if let Some(hex) = digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        if hex.is_empty() || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(hex, 16).ok()?
    } else {
        if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()?
    };
    let v = if neg {
        if mag == 1 << 63 {
            i64::MIN
        } else {
            -i64::try_from(mag).ok()?
        }
    } else {
        i64::try_from(mag).ok()?
    };
    Some(Tok::Int(v))
}

struct Parser<'a> {
    lx: Lexer<'a>,
}

impl Parser<'_> {
    fn scalar(&mut self, line: usize, t: Tok) -> Result<Value, ParseError> {
        match t {
            Tok::Int(i) => Ok(Value::Int(i)),
            Tok::Float(f) => Ok(Value::Float(f)),
            Tok::Str(s) => Ok(Value::Str(s)),
            other => Err(unexpected(line, "a number, a string or '['", &other)),
        }
    }

    fn value(&mut self) -> Result<Value, ParseError> {
        let (line, t) = self.lx.next()?;
        if t != Tok::LBracket {
            return self.scalar(line, t);
        }
        let mut items = Vec::new();
        loop {
            let (line, t) = self.lx.next()?;
            if t == Tok::RBracket {
                return Ok(Value::Array(items));
            }
            items.push(self.scalar(line, t)?);
            let (line, t) = self.lx.next()?;
            match t {
                Tok::Comma => {}
                Tok::RBracket => return Ok(Value::Array(items)),
                other => return Err(unexpected(line, "',' or ']' in an array", &other)),
            }
        }
    }
}

/// Writes `root`'s entries (its name is not written) in LVM2's layout.
pub fn write(root: &Section) -> String {
    let mut out = String::new();
    write_nodes(&mut out, &root.nodes, 0);
    out
}

fn write_nodes(out: &mut String, nodes: &[Node], depth: usize) {
    for n in nodes {
        indent(out, depth);
        match n {
            Node::Pair { key, value } => {
                out.push_str(key);
                out.push_str(" = ");
                write_value(out, value);
                out.push('\n');
            }
            Node::Section(s) => {
                out.push_str(&s.name);
                out.push_str(" {\n");
                write_nodes(out, &s.nodes, depth + 1);
                indent(out, depth);
                out.push_str("}\n");
            }
        }
    }
}

fn indent(out: &mut String, depth: usize) {
    for _ in 0..depth {
        out.push('\t');
    }
}

/// Writes one value as LVM2 writes it.
pub fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => {
            // Display prints the shortest text that parses back to the same f64, never in
            // exponent form; a dot keeps it a float. Non-finite values have no spelling in
            // the grammar and are written as 0.0.
            let t = if f.is_finite() { format!("{f}") } else { "0".to_owned() };
            out.push_str(&t);
            if !t.contains('.') {
                out.push_str(".0");
            }
        }
        Value::Str(s) => {
            out.push('"');
            for c in s.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = "# Generated by LVM2\ncontents = \"Text Format Volume Group\"\nversion = 1\n\n\
        vg0 {\n\tid = \"abc\"\t# trailing comment\n\tstatus = [\"READ\", \"WRITE\"]\n\tflags = []\n\
        \tratio = -1.5\n\tmixed = [1, \"two\", 3.0,]\n\tesc = \"a \\\"q\\\" \\\\ b\"\n\
        \tsingle = 'it is'\n\tneg = -42\n\thex = 0x1F\n\tlogical_volumes {\n\t\tlv0 {\n\t\t}\n\t}\n}\n";

    #[test]
    fn parses_every_construct() {
        let root = parse(SAMPLE.as_bytes()).expect("sample parses");
        assert_eq!(root.get("version"), Some(&Value::Int(1)));
        let vg = root.section("vg0").expect("vg0");
        assert_eq!(vg.get("flags"), Some(&Value::Array(vec![])));
        assert_eq!(vg.get("ratio"), Some(&Value::Float(-1.5)));
        assert_eq!(
            vg.get("mixed"),
            Some(&Value::Array(vec![Value::Int(1), Value::Str("two".into()), Value::Float(3.0)]))
        );
        assert_eq!(vg.get("esc"), Some(&Value::Str("a \"q\" \\ b".into())));
        assert_eq!(vg.get("single"), Some(&Value::Str("it is".into())));
        assert_eq!(vg.get("neg"), Some(&Value::Int(-42)));
        assert_eq!(vg.get("hex"), Some(&Value::Int(31)));
        assert!(vg.section("logical_volumes").and_then(|l| l.section("lv0")).is_some());
        assert_eq!(parse(write(&root).as_bytes()).expect("reparses"), root);
    }

    #[test]
    fn writer_layout_is_lvm2s() {
        let mut vg = Section::new("vg0");
        vg.push("seqno", Value::Int(3));
        vg.push("status", Value::Array(vec![Value::Str("READ".into()), Value::Str("WRITE".into())]));
        let mut root = Section::default();
        root.nodes.push(Node::Section(vg));
        assert_eq!(write(&root), "vg0 {\n\tseqno = 3\n\tstatus = [\"READ\", \"WRITE\"]\n}\n");
    }

    #[test]
    fn errors_carry_lines() {
        let cases: [(&str, usize); 8] = [
            ("a = 1\nb = \n", 3),
            ("a {\n b = 1\n", 3),
            ("}\n", 1),
            ("a = 1\n\nb = \"open\n\n", 3),
            ("x = [1 2]", 1),
            ("\n\ny = 12abc", 3),
            ("z = 99999999999999999999", 1),
            ("a b", 1),
        ];
        for (text, line) in cases {
            let e = parse(text.as_bytes()).expect_err(text);
            assert_eq!(e.line, line, "{text:?}: {e}");
        }
        assert_eq!(parse(b"a = \"\xff\"").map_err(|e| e.kind), Err(ParseErrorKind::NotUtf8));
        let deep = "a {".repeat(MAX_DEPTH + 1);
        assert_eq!(parse(deep.as_bytes()).map_err(|e| e.kind), Err(ParseErrorKind::TooDeep));
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::Int),
            (-1e12f64..1e12).prop_map(Value::Float),
            any::<String>().prop_map(Value::Str),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![scalar(), proptest::collection::vec(scalar(), 0..5).prop_map(Value::Array)]
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z_][a-zA-Z0-9_.+-]{0,12}"
    }

    fn section() -> impl Strategy<Value = Section> {
        let leaf = proptest::collection::vec((name(), value()), 0..5).prop_map(|kv| Section {
            name: String::new(),
            nodes: kv.into_iter().map(|(key, value)| Node::Pair { key, value }).collect(),
        });
        leaf.prop_recursive(4, 40, 5, |inner| {
            (proptest::collection::vec((name(), value()), 0..4), proptest::collection::vec((name(), inner), 0..4))
                .prop_map(|(kv, subs)| {
                    let mut nodes: Vec<Node> = kv.into_iter().map(|(key, value)| Node::Pair { key, value }).collect();
                    nodes.extend(subs.into_iter().map(|(n, mut s)| {
                        s.name = n;
                        Node::Section(s)
                    }));
                    Section { name: String::new(), nodes }
                })
        })
    }

    proptest! {
        #[test]
        fn text_roundtrips(root in section()) {
            let text = write(&root);
            prop_assert_eq!(parse(text.as_bytes()).expect("own output parses"), root);
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse(&b);
        }

        #[test]
        fn grammar_garbage_never_panics(s in "[a-z0-9{}\\[\\]=,\"'#\\\\ .+\n-]{0,200}") {
            // And whatever parses comes back unchanged through the writer (as the fuzz target checks).
            if let Ok(root) = parse(s.as_bytes()) {
                prop_assert_eq!(parse(write(&root).as_bytes()).expect("our output parses"), root);
            }
        }
    }
}
