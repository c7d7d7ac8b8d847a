//! How a name or path from an image (bytes, UTF-8 or not) is shown in text:
//! one line, unambiguous, and what bash's `$'...'` reads back as the same
//! bytes. Printable UTF-8 stays as it is; a backslash is `\\`; newline, tab
//! and carriage return are `\n`, `\t`, `\r`; NUL (only ever in a damaged
//! image) is `\0`; other control characters are `\xNN`, and so is every
//! byte that is not UTF-8; C1 controls and the invisible format characters
//! (line separators, bidirectional overrides) are `\uHHHH`. Output that must
//! carry the bytes themselves, as `cat`, `stat`'s File line or `ls -N` do,
//! writes them raw. Below every layer, beside [`crate::error`], which shows
//! host paths the same way.

use std::fmt::{self, Write};

/// A name shown as the module says: `{}` bare, `{:?}` in double quotes
/// (a `"` inside then `\"`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Name<'a>(pub &'a [u8]);

impl<'a> Name<'a> {
    /// A host path, shown the same way.
    pub fn of_path(path: &'a std::path::Path) -> Self {
        Name(path.as_os_str().as_encoded_bytes())
    }
}

impl Name<'_> {
    fn write(&self, f: &mut fmt::Formatter<'_>, quoted: bool) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    '\n' => f.write_str("\\n")?,
                    '\t' => f.write_str("\\t")?,
                    '\r' => f.write_str("\\r")?,
                    // (Never in a name the kernel made; a damaged image's.)
                    '\0' => f.write_str("\\0")?,
                    '"' if quoted => f.write_str("\\\"")?,
                    c if c.is_ascii_control() => write!(f, "\\x{:02x}", u32::from(c))?,
                    // C1 controls and the invisible format characters that
                    // would break a line or reorder it on screen: bash's
                    // `\uHHHH` / `\UHHHHHHHH` (in a UTF-8 locale).
                    c if c.is_control() || invisible(c) => match u32::from(c) {
                        n @ 0..=0xffff => write!(f, "\\u{n:04x}")?,
                        n => write!(f, "\\U{n:08x}")?,
                    },
                    c => f.write_char(c)?,
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// Unicode's line and paragraph separators and format characters
/// (bidirectional overrides, zero-width ones, the byte order mark, tags):
/// shown as escapes, so that a name cannot hide or reorder text around it.
fn invisible(c: char) -> bool {
    matches!(u32::from(c),
        0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x180e | 0x200b..=0x200f | 0x2028..=0x202e
        | 0x2060..=0x2064 | 0x2066..=0x206f | 0xfeff | 0xfff9..=0xfffb | 0xe0001 | 0xe0020..=0xe007f)
}

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, false)
    }
}

impl fmt::Debug for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        self.write(f, true)?;
        f.write_char('"')
    }
}

#[cfg(test)]
mod tests {
    use super::Name;

    #[test]
    fn names_show_on_one_line_and_unambiguously() {
        assert_eq!(Name(b"plain/caf\xc3\xa9").to_string(), "plain/caf\u{e9}");
        assert_eq!(Name(b"a\x80b\xff").to_string(), "a\\x80b\\xff");
        // A literal backslash-x is not a byte: the two names differ when shown.
        assert_eq!(Name(b"sl\\xfe").to_string(), "sl\\\\xfe");
        assert_ne!(Name(b"sl\\xfe").to_string(), Name(b"sl\xfe").to_string());
        assert_eq!(Name(b"a\nb\tc\rd\x01e\x7f\0").to_string(), "a\\nb\\tc\\rd\\x01e\\x7f\\0");
        assert_eq!(Name("\u{85}".as_bytes()).to_string(), "\\u0085");
        assert_eq!(format!("{:?}", Name(b"q\"d\x80")), "\"q\\\"d\\x80\"");
        assert_eq!(Name("a\u{2028}b\u{202e}c\u{e0041}".as_bytes()).to_string(), "a\\u2028b\\u202ec\\U000e0041");
        // UTF-8 text is quoted as `{:?}` quotes a str.
        for s in ["a\"b\tc", "it's", "x\\y", "new\nline"] {
            assert_eq!(format!("{:?}", Name(s.as_bytes())), format!("{s:?}"));
        }
    }

    #[test]
    fn bash_reads_the_shown_form_back_as_the_same_bytes() {
        let names: [&[u8]; 7] = [
            b"a\x80b",
            b"sl\\xfe",
            b"new\nline\ttab\r",
            b"\x01\x1f\x7f",
            "caf\u{e9}\u{85}".as_bytes(),
            b"q'uote\"d",
            "rtl\u{202e}x\u{2028}\u{e0041}".as_bytes(),
        ];
        for n in names {
            let shown = Name(n).to_string().replace('\'', "\\'");
            let o = std::process::Command::new("bash")
                .env("LC_ALL", "C.UTF-8")
                .arg("-c")
                .arg(format!("printf %s $'{shown}'"))
                .output()
                .expect("bash");
            assert_eq!(o.stdout, n, "{shown}");
        }
    }
}
