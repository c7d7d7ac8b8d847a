//! Names as GNU ls prints them (`--quoting-style`): as they are, quoted for
//! a shell with `$'…'` for control characters (ls's default on a terminal),
//! or with C backslash escapes (`ls -b`). A name is bytes: whatever is not
//! valid UTF-8 is escaped byte by byte.

/// How names are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Quoting {
    /// The bytes as they are (`ls -N`, ls's default into a pipe).
    #[default]
    Literal,
    /// Quoted where a shell would need it, control characters as `$'\n'`
    /// (ls's default on a terminal).
    ShellEscape,
    /// Backslash escapes, no quotes (`ls -b`).
    Escape,
}

/// One piece of a name: a printable character, or a byte that is not (a
/// control character, or part of an invalid or unprintable sequence).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Piece {
    Char(char),
    Byte(u8),
}

fn pieces(name: &[u8]) -> Vec<Piece> {
    let mut out = Vec::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                let mut buf = [0u8; 4];
                out.extend(c.encode_utf8(&mut buf).bytes().map(Piece::Byte));
            } else {
                out.push(Piece::Char(c));
            }
        }
        out.extend(chunk.invalid().iter().copied().map(Piece::Byte));
    }
    out
}

/// A byte as a C escape: `\n` and its kind, else three octal digits.
fn c_escape(out: &mut String, b: u8) {
    let named = match b {
        7 => Some('a'),
        8 => Some('b'),
        9 => Some('t'),
        10 => Some('n'),
        11 => Some('v'),
        12 => Some('f'),
        13 => Some('r'),
        _ => None,
    };
    match named {
        Some(c) => {
            out.push('\\');
            out.push(c);
        }
        None => out.push_str(&format!("\\{b:03o}")),
    }
}

/// Characters a shell reads specially anywhere in a word.
fn shell_special(c: char) -> bool {
    matches!(c, ' ' | '!' | '"' | '$' | '&' | '\'' | '(' | ')' | '*' | ';' | '<' | '=' | '>' | '?' | '[' | '\\' | '^' | '`' | '|')
}

/// Whether the shell-escape style quotes this name.
pub fn needs_quoting(name: &[u8]) -> bool {
    needs_quoting_as(name, false)
}

/// `dir`: a directory line of `ls -R`, where ':' is special too.
fn needs_quoting_as(name: &[u8], dir: bool) -> bool {
    let p = pieces(name);
    if dir && p.contains(&Piece::Char(':')) {
        return true;
    }
    if name == b"{" || name == b"}" || matches!(p.first(), Some(Piece::Char('#' | '~'))) {
        return true;
    }
    p.iter().any(|x| match x {
        Piece::Byte(_) => true,
        Piece::Char(c) => shell_special(*c),
    })
}

/// `name` printed in `style`.
pub fn quote(name: &[u8], style: Quoting) -> Vec<u8> {
    quote_as(name, style, false)
}

/// A directory's path as `ls -R` prints it above its entries: as a name, but
/// ':' (which ends the line) is quoted too, and `-b` leaves spaces alone, as
/// GNU ls does.
pub fn quote_dir_line(path: &[u8], style: Quoting) -> Vec<u8> {
    quote_as(path, style, true)
}

fn quote_as(name: &[u8], style: Quoting, dir: bool) -> Vec<u8> {
    match style {
        Quoting::Literal => name.to_vec(),
        Quoting::Escape => escape(name, dir).into_bytes(),
        Quoting::ShellEscape => shell_escape(name, dir).into_bytes(),
    }
}

fn escape(name: &[u8], dir: bool) -> String {
    let mut out = String::with_capacity(name.len());
    for p in pieces(name) {
        match p {
            Piece::Char(' ') if !dir => out.push_str("\\ "),
            Piece::Char(':') if dir => out.push_str("\\:"),
            Piece::Char('\\') => out.push_str("\\\\"),
            Piece::Char(c) => out.push(c),
            Piece::Byte(b) => c_escape(&mut out, b),
        }
    }
    out
}

fn shell_escape(name: &[u8], dir: bool) -> String {
    let p = pieces(name);
    if !needs_quoting_as(name, dir) {
        return String::from_utf8_lossy(name).into_owned();
    }
    let has_bytes = p.iter().any(|x| matches!(x, Piece::Byte(_)));
    let has_single = p.contains(&Piece::Char('\''));
    // Double quotes serve a name whose only trouble inside them is a single
    // quote; inside them a shell would still expand $, ` and \ (and ! in bash).
    if !has_bytes && has_single && !p.iter().any(|x| matches!(x, Piece::Char('"' | '$' | '`' | '\\' | '!'))) {
        return format!("\"{}\"", String::from_utf8_lossy(name));
    }
    let mut out = String::with_capacity(name.len() + 2);
    let mut quoted = true;
    let mut in_dollar = false;
    out.push('\'');
    for x in p {
        match x {
            Piece::Byte(b) => {
                if quoted {
                    out.push('\'');
                    quoted = false;
                }
                if !in_dollar {
                    out.push_str("$'");
                    in_dollar = true;
                }
                c_escape(&mut out, b);
            }
            Piece::Char(c) => {
                if in_dollar {
                    out.push('\'');
                    in_dollar = false;
                }
                if c == '\'' {
                    // Close, an escaped quote, open again.
                    out.push_str(if quoted { "'\\''" } else { "\\''" });
                    quoted = true;
                    continue;
                }
                if !quoted {
                    out.push('\'');
                    quoted = true;
                }
                out.push(c);
            }
        }
    }
    if in_dollar || quoted {
        out.push('\'');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What GNU ls 9.1 prints for these names (`--quoting-style=shell-escape`, `-b`), C.UTF-8.
    #[test]
    fn as_gnu_ls_prints_them() {
        let cases: &[(&[u8], &str, &str)] = &[
            (b"plain", "plain", "plain"),
            (b"\nb", "''$'\\n''b'", "\\nb"),
            (b"a\n\tb", "'a'$'\\n\\t''b'", "a\\n\\tb"),
            (b"a\x1b", "'a'$'\\033'", "a\\033"),
            (b"a'b\nc", "'a'\\''b'$'\\n''c'", "a'b\\nc"),
            (b"a]b", "a]b", "a]b"),
            (b"{", "'{'", "{"),
            (b"a{b", "a{b", "a{b"),
            (b"#a", "'#a'", "#a"),
            (b"a#", "a#", "a#"),
            (b"~a", "'~a'", "~a"),
            (b"a=b", "'a=b'", "a=b"),
            (b"a!b", "'a!b'", "a!b"),
            (b"it's", "\"it's\"", "it's"),
            (b"it's!", "'it'\\''s!'", "it's!"),
            (b"it's$x", "'it'\\''s$x'", "it's$x"),
            (b"a\\b", "'a\\b'", "a\\\\b"),
            (b"a\x7fb", "'a'$'\\177''b'", "a\\177b"),
            (b"a\x80b", "'a'$'\\200''b'", "a\\200b"),
            (b"sp ace", "'sp ace'", "sp\\ ace"),
            ("é".as_bytes(), "é", "é"),
        ];
        for (name, shell, esc) in cases {
            assert_eq!(quote(name, Quoting::ShellEscape), shell.as_bytes(), "{name:?}");
            assert_eq!(quote(name, Quoting::Escape), esc.as_bytes(), "{name:?}");
            assert_eq!(quote(name, Quoting::Literal), *name);
        }
        // Directory lines of ls -R (GNU: `'./c:d':`, `./c\:d:`, `./a b:`).
        assert_eq!(quote_dir_line(b"./c:d", Quoting::ShellEscape), b"'./c:d'");
        assert_eq!(quote_dir_line(b"./c:d", Quoting::Escape), b"./c\\:d");
        assert_eq!(quote_dir_line(b"./a b", Quoting::Escape), b"./a b");
        assert_eq!(quote_dir_line(b"/\xff", Quoting::ShellEscape), b"'/'$'\\377'");
        assert_eq!(quote_dir_line(b"/\xff", Quoting::Escape), b"/\\377");
    }
}
