//! How a name or path from an image (bytes, UTF-8 or not) is shown in text:
//! one line, unambiguous, and what bash's `$'...'` reads back as the same
//! bytes. Printable UTF-8 stays as it is; a backslash is `\\`; newline, tab
//! and carriage return are `\n`, `\t`, `\r`; NUL (only ever in a damaged
//! image) is `\0`; other control characters are `\xNN` (C1 ones `\uHHHH`),
//! and so is every byte that is not UTF-8. Output that must carry the bytes
//! themselves, as `cat`, `stat`'s File line or `ls -N` do, writes them raw.

use std::fmt::{self, Write};

/// A name shown as the module says: `{}` bare, `{:?}` in double quotes
/// (a `"` inside then `\"`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Name<'a>(pub &'a [u8]);

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
                    // C1 controls: bash's `\uHHHH` (in a UTF-8 locale).
                    c if c.is_control() => write!(f, "\\u{:04x}", u32::from(c))?,
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
        // UTF-8 text is quoted as `{:?}` quotes a str.
        for s in ["a\"b\tc", "it's", "x\\y", "new\nline"] {
            assert_eq!(format!("{:?}", Name(s.as_bytes())), format!("{s:?}"));
        }
    }

    #[test]
    fn bash_reads_the_shown_form_back_as_the_same_bytes() {
        let names: [&[u8]; 6] = [b"a\x80b", b"sl\\xfe", b"new\nline\ttab\r", b"\x01\x1f\x7f", "caf\u{e9}\u{85}".as_bytes(), b"q'uote\"d"];
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
