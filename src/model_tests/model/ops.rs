//! Operations and their text form (regression seeds are pasted from it).

#![allow(dead_code, unused_imports)]

use super::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

// ---------------------------------------------------------------- operations

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Create {
    Plain,
    NoSum,
    NoCow,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// `btrs write PATH --offset OFF` of `len` bytes from `seed`.
    Write {
        path: String,
        off: u64,
        len: u64,
        seed: u64,
        direct: bool,
        truncate: bool,
        parents: bool,
        create: Create,
        /// `--commit-every 16M`.
        commit_every: bool,
        /// `--max-bio` in KiB (0: default).
        max_bio_k: u32,
        /// Compressed (zstd): a known gap, generated only with
        /// BTRS_MODEL_GAPS=compress-write.
        compress: bool,
    },
    /// `btrs write PATH --truncate --offset SIZE` of nothing (creates a missing file).
    Truncate {
        path: String,
        size: u64,
    },
    Mkdir {
        path: String,
        parents: bool,
    },
    Rm {
        paths: Vec<String>,
        recursive: bool,
    },
    Mv {
        src: String,
        dst: String,
    },
    Link {
        target: String,
        link: String,
    },
    Symlink {
        target: String,
        link: String,
    },
    /// Value: (length, seed) of printable bytes; `None` removes.
    SetXattr {
        path: String,
        name: String,
        value: Option<(u32, u64)>,
    },
    Put {
        dest: String,
        seed: u64,
    },
    /// Library: commit (and with `reopen`, open the images afresh, as a new
    /// process would). Command line: every command commits; nothing to do.
    Commit {
        reopen: bool,
    },
    /// Library: drop the running transaction. Command line: nothing.
    Abort,
    /// Library: from now on (this transaction and later ones) write dirty
    /// tree blocks out before the commit once more than `blocks` are held
    /// (0: any), as a long put or rm does past its budget; and do so now.
    /// Command line: nothing.
    WriteBack {
        blocks: u32,
    },
    /// Library: the `at`-th image I/O from now fails (or is torn) and every
    /// later one too. Command line: the next command is killed (SIGKILL)
    /// `at` microseconds after it starts.
    Crash {
        at: u64,
        torn: bool,
    },
    /// Whole tree against the model, `btrfs check`, scrub.
    Check,
    /// `btrs balance --convert data=DATA,metadata=META`: every chunk
    /// re-striped, nothing in the tree changes.
    Convert {
        data: String,
        meta: String,
    },
    /// `btrs subvolume create PATH`.
    SubvolCreate {
        path: String,
    },
    /// `btrs subvolume snapshot [-r] SRC DEST`.
    Snapshot {
        src: String,
        dest: String,
        ro: bool,
    },
    /// `btrs subvolume delete PATH`.
    SubvolDelete {
        path: String,
    },
    /// `btrs property set PATH ro true|false`.
    SetRo {
        path: String,
        ro: bool,
    },
    /// `btrs chmod MODE PATH` (octal).
    Chmod {
        path: String,
        mode: u32,
    },
    /// `btrs chown [UID][:GID] PATH`.
    Chown {
        path: String,
        uid: Option<u32>,
        gid: Option<u32>,
    },
}

impl Op {
    /// Whether the op changes the filesystem (a command runs for it).
    pub(crate) fn mutates(&self) -> bool {
        !matches!(self, Op::Commit { .. } | Op::Abort | Op::WriteBack { .. } | Op::Crash { .. } | Op::Check)
    }

    /// Paths whose state the op may change (checked right after it).
    pub(crate) fn touched(&self) -> Vec<String> {
        let parent = |p: &str| split(p).map(|(d, _)| d).unwrap_or_else(|_| "/".into());
        match self {
            Op::Write { path, .. } | Op::Truncate { path, .. } | Op::Mkdir { path, .. } => vec![path.clone(), parent(path)],
            Op::Rm { paths, .. } => paths.iter().flat_map(|p| [p.clone(), parent(p)]).collect(),
            Op::Mv { src, dst } => {
                let mut v = vec![src.clone(), dst.clone(), parent(src), parent(dst)];
                if let Ok((_, n)) = split(src) {
                    v.push(format!("{}/{}", dst.trim_end_matches('/'), String::from_utf8_lossy(&n)));
                }
                v
            }
            Op::Link { target, link } => vec![target.clone(), link.clone(), parent(link)],
            Op::Symlink { link, .. } => vec![link.clone(), parent(link)],
            Op::SetXattr { path, .. } | Op::SetRo { path, .. } | Op::Chmod { path, .. } | Op::Chown { path, .. } => vec![path.clone()],
            Op::SubvolCreate { path } | Op::SubvolDelete { path } => vec![path.clone(), parent(path)],
            Op::Snapshot { src, dest, .. } => {
                let mut v = vec![src.clone(), dest.clone(), parent(dest)];
                if let Some(base) = src.trim_end_matches('/').rsplit('/').next().filter(|b| !b.is_empty()) {
                    v.push(format!("{}/{base}", dest.trim_end_matches('/')));
                }
                v
            }
            Op::Put { dest, seed } => {
                let n = String::from_utf8_lossy(&HostTree::generate(*seed).name).into_owned();
                vec![dest.clone(), format!("{}/{n}", dest.trim_end_matches('/')), parent(dest)]
            }
            _ => Vec::new(),
        }
    }
}

/// Path and name text in op lists: bytes outside a safe set as %XX.
pub(crate) fn enc(s: &str) -> String {
    let mut o = String::new();
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"._/-~+,:".contains(&b) {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    if o.is_empty() {
        o.push_str("%%");
    }
    o
}

pub(crate) fn dec(s: &str) -> Result<String, String> {
    if s == "%%" {
        return Ok(String::new());
    }
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s.get(i + 1..i + 3).ok_or_else(|| format!("bad escape in {s:?}"))?;
            out.push(u8::from_str_radix(h, 16).map_err(|_| format!("bad escape in {s:?}"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("not UTF-8: {s:?}"))
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Write { path, off, len, seed, direct, truncate, parents, create, commit_every, max_bio_k, compress } => {
                write!(f, "write {} off={off} len={len} seed={seed}", enc(path))?;
                for (on, w) in [(*direct, "direct"), (*truncate, "trunc"), (*parents, "p"), (*commit_every, "ce"), (*compress, "zstd")] {
                    if on {
                        write!(f, " {w}")?;
                    }
                }
                match create {
                    Create::Plain => {}
                    Create::NoSum => write!(f, " nosum")?,
                    Create::NoCow => write!(f, " nocow")?,
                }
                if *max_bio_k != 0 {
                    write!(f, " bio={max_bio_k}")?;
                }
                Ok(())
            }
            Op::Truncate { path, size } => write!(f, "truncate {} size={size}", enc(path)),
            Op::Mkdir { path, parents } => write!(f, "mkdir {}{}", enc(path), if *parents { " p" } else { "" }),
            Op::Rm { paths, recursive } => {
                write!(f, "rm{}", if *recursive { " -r" } else { "" })?;
                for p in paths {
                    write!(f, " {}", enc(p))?;
                }
                Ok(())
            }
            Op::Mv { src, dst } => write!(f, "mv {} {}", enc(src), enc(dst)),
            Op::Link { target, link } => write!(f, "ln {} {}", enc(target), enc(link)),
            Op::Symlink { target, link } => write!(f, "symlink {} {}", enc(target), enc(link)),
            Op::SetXattr { path, name, value } => match value {
                Some((n, s)) => write!(f, "setxattr {} {} len={n} seed={s}", enc(path), enc(name)),
                None => write!(f, "rmxattr {} {}", enc(path), enc(name)),
            },
            Op::Put { dest, seed } => write!(f, "put {} seed={seed}", enc(dest)),
            Op::Commit { reopen } => write!(f, "commit{}", if *reopen { " reopen" } else { "" }),
            Op::Abort => write!(f, "abort"),
            Op::WriteBack { blocks } => write!(f, "writeback blocks={blocks}"),
            Op::Crash { at, torn } => write!(f, "crash at={at}{}", if *torn { " torn" } else { "" }),
            Op::Check => write!(f, "check"),
            Op::Convert { data, meta } => write!(f, "convert data={data} meta={meta}"),
            Op::SubvolCreate { path } => write!(f, "subvol-create {}", enc(path)),
            Op::Snapshot { src, dest, ro } => write!(f, "snapshot {} {}{}", enc(src), enc(dest), if *ro { " ro" } else { "" }),
            Op::SubvolDelete { path } => write!(f, "subvol-delete {}", enc(path)),
            Op::SetRo { path, ro } => write!(f, "set-ro {} {ro}", enc(path)),
            Op::Chmod { path, mode } => write!(f, "chmod {} mode={mode:o}", enc(path)),
            Op::Chown { path, uid, gid } => {
                write!(f, "chown {}", enc(path))?;
                if let Some(u) = uid {
                    write!(f, " uid={u}")?;
                }
                if let Some(g) = gid {
                    write!(f, " gid={g}")?;
                }
                Ok(())
            }
        }
    }
}

/// Parse one line of an op list (as `Display` writes it).
pub(crate) fn parse_op(line: &str) -> Result<Op, String> {
    let w: Vec<&str> = line.split_whitespace().collect();
    let kv = |k: &str| -> Result<u64, String> {
        w.iter()
            .find_map(|x| x.strip_prefix(&format!("{k}=")))
            .ok_or_else(|| format!("{line:?}: no {k}="))?
            .parse()
            .map_err(|_| format!("{line:?}: bad {k}"))
    };
    let flag = |k: &str| w.iter().skip(1).any(|x| *x == k);
    let arg = |i: usize| -> Result<String, String> { dec(w.get(i).ok_or_else(|| format!("{line:?}: missing argument {i}"))?) };
    Ok(match w.first().copied() {
        Some("write") => Op::Write {
            path: arg(1)?,
            off: kv("off")?,
            len: kv("len")?,
            seed: kv("seed")?,
            direct: flag("direct"),
            truncate: flag("trunc"),
            parents: flag("p"),
            create: if flag("nosum") {
                Create::NoSum
            } else if flag("nocow") {
                Create::NoCow
            } else {
                Create::Plain
            },
            commit_every: flag("ce"),
            max_bio_k: kv("bio").unwrap_or(0) as u32,
            compress: flag("zstd"),
        },
        Some("truncate") => Op::Truncate { path: arg(1)?, size: kv("size")? },
        Some("mkdir") => Op::Mkdir { path: arg(1)?, parents: flag("p") },
        Some("rm") => {
            let recursive = w.get(1) == Some(&"-r");
            let paths = w.iter().skip(if recursive { 2 } else { 1 }).map(|p| dec(p)).collect::<Result<_, _>>()?;
            Op::Rm { paths, recursive }
        }
        Some("mv") => Op::Mv { src: arg(1)?, dst: arg(2)? },
        Some("ln") => Op::Link { target: arg(1)?, link: arg(2)? },
        Some("symlink") => Op::Symlink { target: arg(1)?, link: arg(2)? },
        Some("setxattr") => Op::SetXattr { path: arg(1)?, name: arg(2)?, value: Some((kv("len")? as u32, kv("seed")?)) },
        Some("rmxattr") => Op::SetXattr { path: arg(1)?, name: arg(2)?, value: None },
        Some("put") => Op::Put { dest: arg(1)?, seed: kv("seed")? },
        Some("commit") => Op::Commit { reopen: flag("reopen") },
        Some("abort") => Op::Abort,
        Some("writeback") => Op::WriteBack { blocks: kv("blocks")? as u32 },
        Some("crash") => Op::Crash { at: kv("at")?, torn: flag("torn") },
        Some("check") => Op::Check,
        Some("convert") => {
            let v = |k: &str| w.iter().find_map(|x| x.strip_prefix(k)).map(str::to_string).ok_or_else(|| format!("{line:?}: no {k}"));
            Op::Convert { data: v("data=")?, meta: v("meta=")? }
        }
        Some("subvol-create") => Op::SubvolCreate { path: arg(1)? },
        Some("snapshot") => Op::Snapshot { src: arg(1)?, dest: arg(2)?, ro: flag("ro") },
        Some("subvol-delete") => Op::SubvolDelete { path: arg(1)? },
        Some("set-ro") => Op::SetRo { path: arg(1)?, ro: w.get(2) == Some(&"true") },
        Some("chmod") => {
            let m = w.iter().find_map(|x| x.strip_prefix("mode=")).ok_or_else(|| format!("{line:?}: no mode="))?;
            Op::Chmod { path: arg(1)?, mode: u32::from_str_radix(m, 8).map_err(|_| format!("{line:?}: bad mode"))? }
        }
        Some("chown") => {
            let id = |k: &str| kv(k).ok().map(|v| v as u32);
            Op::Chown { path: arg(1)?, uid: id("uid"), gid: id("gid") }
        }
        _ => return Err(format!("unknown op {line:?}")),
    })
}

/// An op list from text: one op a line; blank lines and `#` comments skipped.
pub(crate) fn parse_ops(text: &str) -> Result<Vec<Op>, String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(parse_op).collect()
}

pub(crate) fn ops_text(ops: &[Op]) -> String {
    ops.iter().map(|o| format!("{o}\n")).collect()
}
