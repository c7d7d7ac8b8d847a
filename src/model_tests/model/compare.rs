//! Minimizing a failing list, and comparing a view (btrs, the kernel) with the model.

#![allow(dead_code, unused_imports)]

use super::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

// ---------------------------------------------------------------- minimizing

/// What kind of failure a message reports: its `[tag]` and first few words
/// that are not paths or numbers. A minimized list must fail the same way.
pub(crate) fn kind_of(msg: &str) -> String {
    let (tag, rest) = msg.split_once(']').unwrap_or((msg, ""));
    let words: Vec<&str> = rest.split_whitespace().filter(|w| !w.contains('/') && !w.chars().any(|c| c.is_ascii_digit())).take(4).collect();
    format!("{tag}] {}", words.join(" "))
}

/// Delta debugging (ddmin): drop chunks of the list, then single ops, while
/// `fails` still says yes. `budget` bounds the runs.
pub(crate) fn minimize(ops: Vec<Op>, fails: &mut dyn FnMut(&[Op]) -> bool, mut budget: usize) -> Vec<Op> {
    let mut cur = ops;
    let mut n = 2usize;
    while cur.len() >= 2 && budget > 0 {
        let chunk = cur.len().div_ceil(n);
        let mut reduced = false;
        let mut start = 0;
        while start < cur.len() && budget > 0 {
            let end = (start + chunk).min(cur.len());
            let mut cand = cur[..start].to_vec();
            cand.extend_from_slice(&cur[end..]);
            budget -= 1;
            if !cand.is_empty() && fails(&cand) {
                cur = cand;
                reduced = true;
                n = (n - 1).max(2);
            } else {
                start = end;
            }
        }
        if !reduced {
            if chunk <= 1 {
                break;
            }
            n = (n * 2).min(cur.len());
        }
    }
    cur
}

// ---------------------------------------------------------------- comparing views

/// What a view says of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) nlink: u32,
    pub(crate) size: u64,
    /// NODATASUM / NODATACOW bits (`None`: the view cannot tell).
    pub(crate) flags: Option<u64>,
}

/// A piece of a file's content as a view streams it.
pub(crate) enum Chunk<'a> {
    Data(&'a [u8]),
    Hole(u64),
}

/// A filesystem as seen by btrs (committed, or through a running
/// transaction) or by the kernel.
pub(crate) trait View {
    type Id: Copy + Eq + std::hash::Hash + std::fmt::Debug;
    fn root(&mut self) -> Self::Id;
    fn lookup(&mut self, dir: Self::Id, name: &[u8]) -> Result<Option<Self::Id>, String>;
    fn stat(&mut self, id: Self::Id) -> Result<Stat, String>;
    /// (name, id) of every entry.
    #[allow(clippy::type_complexity)] // a pair per entry reads plainer than a named type here
    fn entries(&mut self, dir: Self::Id) -> Result<Vec<(Vec<u8>, Self::Id)>, String>;
    fn xattrs(&mut self, id: Self::Id) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, String>;
    fn target(&mut self, id: Self::Id) -> Result<Vec<u8>, String>;
    fn read(&mut self, id: Self::Id, off: u64, len: u64) -> Result<Vec<u8>, String>;
    /// Whether `read` decompresses (a running transaction's reader does not).
    fn can_read_compressed(&self) -> bool {
        true
    }
    /// The whole content in order; the default reads it in pieces.
    fn stream(&mut self, id: Self::Id, size: u64, f: &mut dyn FnMut(u64, Chunk<'_>) -> Result<(), String>) -> Result<(), String> {
        let mut pos = 0;
        while pos < size {
            let n = (size - pos).min(4 << 20);
            let b = self.read(id, pos, n)?;
            f(pos, Chunk::Data(&b))?;
            pos += n;
        }
        Ok(())
    }
}

pub(crate) fn show(name: &[u8]) -> String {
    let s = String::from_utf8_lossy(name);
    if s.len() > 40 {
        format!("{}...({} bytes)", &s[..s.char_indices().nth(30).map_or(s.len(), |x| x.0)], name.len())
    } else {
        s.into_owned()
    }
}

pub(crate) fn first_diff(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()))
}

/// The model's stat of a node.
pub(crate) fn model_stat(m: &Model, id: Id) -> Stat {
    let n = m.node(id);
    let size = match &n.kind {
        Kind::File(f) => f.size,
        Kind::Dir { .. } => m.dir_size(id),
        Kind::Symlink(t) => t.len() as u64,
        Kind::Stub | Kind::Special => 0,
    };
    Stat { mode: n.mode, uid: n.uid, gid: n.gid, nlink: n.nlink, size, flags: Some(n.flags & (NODATASUM | NODATACOW)) }
}

pub(crate) fn cmp_stat(path: &str, want: &Stat, got: &Stat) -> Result<(), String> {
    let mut got = got.clone();
    let mut want = want.clone();
    if got.flags.is_none() {
        want.flags = None;
    }
    if want.flags.is_none() {
        got.flags = None;
    }
    if want != got {
        return Err(format!("{path}: stat differs: model {want:?}, btrs {got:?}"));
    }
    Ok(())
}

/// Compare one node (not below it): stat, xattrs, symlink target, the
/// entries' names, and file bytes (whole when small, else `range` and the
/// file's last 8 KiB).
pub(crate) fn compare_node<V: View>(v: &mut V, vid: V::Id, m: &Model, id: Id, path: &str, range: Option<(u64, u64)>) -> Result<(), String> {
    let mut want = model_stat(m, id);
    // A stub is owned as the directory it is in (the kernel's new_simple_dir).
    if matches!(m.node(id).kind, Kind::Stub) {
        let parent = split(path).map(|(d, _)| d).unwrap_or_else(|_| "/".into());
        if let Some(d) = m.find(&parent) {
            (want.uid, want.gid) = (m.node(d).uid, m.node(d).gid);
        }
    }
    let got = v.stat(vid)?;
    cmp_stat(path, &want, &got)?;
    let node = m.node(id);
    let xa = v.xattrs(vid)?;
    if xa != node.xattrs {
        let fmt = |x: &BTreeMap<Vec<u8>, Vec<u8>>| x.iter().map(|(k, v)| format!("{}={}b", show(k), v.len())).collect::<Vec<_>>().join(",");
        let diff: Vec<String> = node
            .xattrs
            .iter()
            .filter(|(k, val)| xa.get(*k) != Some(val))
            .map(|(k, _)| show(k))
            .chain(xa.keys().filter(|k| !node.xattrs.contains_key(*k)).map(|k| show(k)))
            .collect();
        return Err(format!("{path}: xattrs differ ({}): model {}, btrs {}", diff.join(","), fmt(&node.xattrs), fmt(&xa)));
    }
    match &node.kind {
        Kind::Symlink(t) => {
            let g = v.target(vid)?;
            if &g != t {
                return Err(format!("{path}: symlink target {:?}, model {:?}", show(&g), show(t)));
            }
        }
        Kind::Dir { entries, .. } => {
            let got: BTreeSet<Vec<u8>> = v.entries(vid)?.into_iter().map(|(n, _)| n).collect();
            let want: BTreeSet<Vec<u8>> = entries.keys().cloned().collect();
            if got != want {
                let extra: Vec<String> = got.difference(&want).map(|n| show(n)).collect();
                let missing: Vec<String> = want.difference(&got).map(|n| show(n)).collect();
                return Err(format!("{path}: entries differ: btrs has {extra:?} the model has not, lacks {missing:?}"));
            }
        }
        Kind::Stub => {
            if !v.entries(vid)?.is_empty() {
                return Err(format!("{path}: a subvolume stub with entries"));
            }
        }
        Kind::File(f) if !f.compressed.is_empty() && !v.can_read_compressed() => {}
        Kind::File(f) => {
            if f.size <= 1 << 20 {
                compare_bytes(v, vid, f, path, 0, f.size)?;
            } else {
                if let Some((s, e)) = range {
                    let s = s.saturating_sub(8192).min(f.size);
                    let e = e.saturating_add(8192).min(f.size);
                    compare_bytes(v, vid, f, path, s, e.saturating_sub(s).min(64 << 20))?;
                }
                let tail = f.size - f.size.min(8192);
                compare_bytes(v, vid, f, path, tail, f.size - tail)?;
            }
        }
        Kind::Special => {}
    }
    Ok(())
}

pub(crate) fn compare_bytes<V: View>(v: &mut V, vid: V::Id, f: &FileData, path: &str, off: u64, len: u64) -> Result<(), String> {
    if len == 0 {
        return Ok(());
    }
    let got = v.read(vid, off, len)?;
    let want = f.read(off, len as usize);
    if got != want {
        let i = first_diff(&got, &want);
        return Err(format!(
            "{path}: bytes differ at {} (read {off}+{len}): btrs {:02x?}, model {:02x?}",
            off + i as u64,
            &got[i..(i + 8).min(got.len())],
            &want[i..(i + 8).min(want.len())]
        ));
    }
    Ok(())
}

/// Compare a whole file by streaming it.
pub(crate) fn compare_file<V: View>(v: &mut V, vid: V::Id, f: &FileData, path: &str) -> Result<(), String> {
    v.stream(vid, f.size, &mut |off, c| match c {
        Chunk::Data(b) => {
            let want = f.read(off, b.len());
            if b != want.as_slice() {
                let i = first_diff(b, &want);
                return Err(format!(
                    "{path}: bytes differ at {}: btrs {:02x?}, model {:02x?}",
                    off + i as u64,
                    &b[i..(i + 8).min(b.len())],
                    &want[i..(i + 8).min(want.len())]
                ));
            }
            Ok(())
        }
        Chunk::Hole(n) => {
            if !f.zero(off, n) {
                return Err(format!("{path}: a hole at {off}+{n} where the model has data"));
            }
            Ok(())
        }
    })
}

/// Resolve `path` in a view (readers' rules: stubs are empty directories).
pub(crate) fn view_find<V: View>(v: &mut V, path: &str) -> Result<Option<V::Id>, String> {
    let mut cur = v.root();
    for comp in components(path) {
        match v.lookup(cur, comp.as_bytes())? {
            Some(x) => cur = x,
            None => return Ok(None),
        }
    }
    Ok(Some(cur))
}

/// After an op: each path it touched is there in both or neither, and the
/// same.
pub(crate) fn compare_paths<V: View>(v: &mut V, m: &Model, op: &Op) -> Result<(), String> {
    let range = match op {
        Op::Write { off, len, .. } => Some((*off, off.saturating_add(*len))),
        _ => None,
    };
    for p in op.touched() {
        let want = m.find(&p);
        // A path through a non-directory reads as absent in the model; the
        // views may refuse it instead.
        let got = match view_find(v, &p) {
            Ok(g) => g,
            Err(e) if want.is_none() => {
                let _ = e;
                None
            }
            Err(e) => return Err(e),
        };
        match (want, got) {
            (None, None) => {}
            (Some(_), None) => return Err(format!("{p}: in the model, not in btrs (after {op})")),
            (None, Some(_)) => return Err(format!("{p}: in btrs, not in the model (after {op})")),
            (Some(id), Some(vid)) => compare_node(v, vid, m, id, &p, range).map_err(|e| format!("{e} (after {op})"))?,
        }
    }
    Ok(())
}

/// The whole tree: every node as in the model, whole files streamed, hard
/// links the same inode in both and nowhere else.
pub(crate) fn compare_all<V: View>(v: &mut V, m: &Model) -> Result<usize, String> {
    let mut seen: HashMap<Id, V::Id> = HashMap::new();
    let mut back: HashMap<V::Id, (Id, String)> = HashMap::new();
    let mut stack = vec![("/".to_string(), m.root, v.root())];
    let mut count = 0;
    while let Some((path, id, vid)) = stack.pop() {
        count += 1;
        match (seen.get(&id), back.get(&vid)) {
            (Some(x), _) if *x != vid => return Err(format!("{path}: a hard link of the model leads to another inode in btrs")),
            (_, Some((x, other))) if *x != id => {
                return Err(format!("{path}: two model nodes are one inode in btrs (the other at {other})"))
            }
            (Some(_), _) => continue,
            _ => {}
        }
        seen.insert(id, vid);
        back.insert(vid, (id, path.clone()));
        compare_node(v, vid, m, id, &path, None)?;
        match &m.node(id).kind {
            Kind::File(f) if f.size > 1 << 20 => compare_file(v, vid, f, &path)?,
            Kind::Dir { entries, .. } => {
                let got: HashMap<Vec<u8>, V::Id> = v.entries(vid)?.into_iter().collect();
                for (n, e) in entries {
                    let child = got.get(n).copied().ok_or_else(|| format!("{path}: no entry {}", show(n)))?;
                    stack.push((format!("{}/{}", path.trim_end_matches('/'), String::from_utf8_lossy(n)), e.id, child));
                }
            }
            _ => {}
        }
    }
    Ok(count)
}
