//! `btrs subvolume` and `btrs property`: subvolumes and snapshots made,
//! deleted, listed and shown, the default subvolume, the read-only
//! property (btrfs-progs' `btrfs subvolume` and `btrfs property` names and
//! output). Each change is one transaction; on an error nothing is
//! committed.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::types::uuid_string;
use crate::format::*;
use crate::fs::txn::{Place, Transaction};
use crate::fs::{Filesystem, ImagePath};
use crate::volumes::OpenOptions;

use super::write::{begin, dir_at, split};

/// The subvolume whose root directory `path` is (refused otherwise).
fn subvol_at(tx: &mut Transaction, path: ImagePath<'_>) -> Result<u64> {
    let p = tx.resolve(path)?.ok_or_else(|| Error::NotFound(path.to_string()))?;
    if p.root() == FS_TREE_OBJECTID && p.ino() == FIRST_FREE_OBJECTID {
        return Ok(FS_TREE_OBJECTID);
    }
    let dirid = tx.root_item_now(p.root())?.map_or(FIRST_FREE_OBJECTID, |(_, ri)| ri.root_dirid.get());
    if p.ino() != dirid {
        return Err(Error::Invalid(format!("{path}: not a subvolume")));
    }
    Ok(p.root())
}

/// Where a new subvolume or snapshot named by `path` goes: its directory
/// and name, refused when the name is taken.
fn new_entry(tx: &mut Transaction, path: ImagePath<'_>, parents: bool) -> Result<(Place, Vec<u8>)> {
    let (dir, name) = split(path)?;
    let d = dir_at(tx, dir, parents)?;
    if tx.lookup_entry(d.root(), d.ino(), &name)?.is_some() {
        return Err(Error::Invalid(format!("{path} already exists")));
    }
    Ok((d, name))
}

/// `btrs subvolume create IMAGE PATH...`: new, empty subvolumes; their ids.
pub fn create<P: AsRef<[u8]>>(opts: &OpenOptions, paths: &[P], parents: bool) -> Result<(Vec<u64>, Vec<String>)> {
    let mut tx = begin(opts)?;
    let mut ids = Vec::new();
    for path in paths {
        ids.push(create_in(&mut tx, ImagePath::new(path), parents)?);
    }
    Ok((ids, tx.commit_with_warnings()?))
}

/// One new subvolume at `path` inside a running transaction (not committed).
pub(crate) fn create_in<'p>(tx: &mut Transaction, path: impl Into<ImagePath<'p>>, parents: bool) -> Result<u64> {
    let path = path.into();
    let (d, name) = new_entry(tx, path, parents)?;
    tx.create_subvolume(d.id, &name)
}

/// `btrs subvolume snapshot IMAGE SRC DEST [-r]`: DEST names the snapshot,
/// or, when it is an existing directory, the directory it goes in under
/// SRC's name (as `btrfs subvolume snapshot`). Its id and path.
pub fn snapshot<'p>(
    opts: &OpenOptions,
    src: impl Into<ImagePath<'p>>,
    dest: impl Into<ImagePath<'p>>,
    readonly: bool,
) -> Result<(u64, String, Vec<String>)> {
    let mut tx = begin(opts)?;
    let (id, dest) = snapshot_in(&mut tx, src.into(), dest.into(), readonly)?;
    Ok((id, ImagePath::from(&dest).to_string(), tx.commit_with_warnings()?))
}

/// [`snapshot`] inside a running transaction (not committed) in which
/// SRC's tree has not changed: a snapshot copies SRC as last committed.
pub(crate) fn snapshot_in<'p>(
    tx: &mut Transaction,
    src: impl Into<ImagePath<'p>>,
    dest: impl Into<ImagePath<'p>>,
    readonly: bool,
) -> Result<(u64, Vec<u8>)> {
    let src = src.into();
    let dest = dest.into();
    let from = subvol_at(tx, src)?;
    let dest = match tx.resolve(dest)? {
        Some(p) if p.dir_type == FT_DIR => {
            let base = Some(src.parent_and_name().1)
                .filter(|b| !b.is_empty())
                .ok_or_else(|| Error::Invalid(format!("{src}: not a name for the snapshot inside {dest}: name the snapshot itself")))?;
            let mut inside = dest.as_bytes().to_vec();
            while inside.last() == Some(&b'/') {
                inside.pop();
            }
            inside.push(b'/');
            inside.extend_from_slice(base);
            inside
        }
        Some(_) => return Err(Error::Invalid(format!("{dest} already exists"))),
        None => dest.as_bytes().to_vec(),
    };
    let (d, name) = new_entry(tx, ImagePath::from(&dest), false)?;
    let id = tx.snapshot(from, d.id, &name, readonly)?;
    Ok((id, dest))
}

/// `btrs subvolume delete IMAGE PATH...`: each subvolume deleted, its tree
/// dropped; with `recursive`, the subvolumes inside it first. The ids
/// deleted, in order.
pub fn delete<P: AsRef<[u8]>>(opts: &OpenOptions, paths: &[P], recursive: bool) -> Result<(Vec<u64>, Vec<String>)> {
    let mut tx = begin(opts)?;
    // Every path first: a missing one changes nothing.
    let mut order = Vec::new();
    for path in paths {
        let id = subvol_at(&mut tx, ImagePath::new(path))?;
        if recursive {
            nested_first(&mut tx, id, &mut order, 0)?;
        } else {
            order.push(id);
        }
    }
    // Every refusal before the first delete commits. (-R: the nested
    // ones go first; a parent read-only or immutable refuses all alike.)
    for id in &order {
        tx.check_delete(*id, recursive).map_err(|e| e.within(format!("deleting subvolume {id}")))?;
    }
    // One commit each: a drop reads its tree as last committed, and a
    // nested one's unlinking changed its parent's.
    let mut gone = Vec::new();
    for (i, id) in order.iter().enumerate() {
        if gone.contains(id) {
            continue;
        }
        tx.delete_subvolume(*id).map_err(|e| e.within(format!("deleting subvolume {id}")))?;
        gone.push(*id);
        if i + 1 < order.len() {
            tx = tx.commit_and_continue()?;
        }
    }
    Ok((gone, tx.commit_with_warnings()?))
}

/// One subvolume deleted (none inside it) in a running transaction (not
/// committed) in which its tree has not changed; its id. (The command
/// checks every path before it deletes any, and commits between them: the
/// model test's library runner uses this one.)
#[cfg(test)]
pub(crate) fn delete_in<'p>(tx: &mut Transaction, path: impl Into<ImagePath<'p>>) -> Result<u64> {
    let path = path.into();
    let id = subvol_at(tx, path)?;
    tx.delete_subvolume(id)?;
    Ok(id)
}

/// The subvolumes inside `id` (depth first), then `id`.
fn nested_first(tx: &mut Transaction, id: u64, out: &mut Vec<u64>, depth: usize) -> Result<()> {
    if depth > 4096 {
        return Err(Error::corrupt(crate::error::CorruptKind::Loop, format!("subvolume {id}"), "subvolumes nested deeper than 4096"));
    }
    let refs = tx.range(ROOT_TREE_OBJECTID, Key::new(id, ROOT_REF_KEY, 0), Key::new(id, ROOT_REF_KEY, u64::MAX))?;
    for (k, _) in refs {
        nested_first(tx, k.offset, out, depth + 1)?;
    }
    out.push(id);
    Ok(())
}

/// `btrs subvolume set-default IMAGE PATH|ID`.
pub fn set_default<'p>(opts: &OpenOptions, target: impl Into<ImagePath<'p>>) -> Result<(u64, Vec<String>)> {
    let target = target.into();
    let mut tx = begin(opts)?;
    let id = match std::str::from_utf8(target.as_bytes()).map(str::parse::<u64>) {
        Ok(Ok(id)) if !target.as_bytes().starts_with(b"/") => id,
        _ => subvol_at(&mut tx, target)?,
    };
    if id != FS_TREE_OBJECTID && tx.root_item_now(id)?.is_none_or(|(_, ri)| ri.refs.get() == 0) {
        return Err(Error::NotFound(format!("subvolume {id}")));
    }
    tx.set_default_subvol(id)?;
    Ok((id, tx.commit_with_warnings()?))
}

/// `btrs property set IMAGE PATH ro true|false`: whether it changed.
pub fn set_readonly<'p>(opts: &OpenOptions, path: impl Into<ImagePath<'p>>, readonly: bool) -> Result<(bool, Vec<String>)> {
    let mut tx = begin(opts)?;
    let changed = set_readonly_in(&mut tx, path.into(), readonly)?;
    Ok((changed, tx.commit_with_warnings()?))
}

/// [`set_readonly`] inside a running transaction (not committed).
pub(crate) fn set_readonly_in<'p>(tx: &mut Transaction, path: impl Into<ImagePath<'p>>, readonly: bool) -> Result<bool> {
    let path = path.into();
    let id = subvol_at(tx, path)?;
    tx.set_subvol_readonly(id, readonly)
}

/// The properties `btrs property` knows, as btrfs-progs names them.
pub const PROPERTIES: [&str; 3] = ["ro", "compression", "label"];

/// `btrs property set IMAGE PATH NAME VALUE`: ro (true/false) of the
/// subvolume at PATH, compression (an algorithm, `no`/`none`, or empty to
/// remove it) of the inode at PATH, label of the filesystem (PATH any).
pub fn set_property<'p>(opts: &OpenOptions, path: impl Into<ImagePath<'p>>, name: &str, value: &str) -> Result<Vec<String>> {
    let path = path.into();
    let mut tx = begin(opts)?;
    match name {
        "ro" => {
            let ro = match value {
                "true" => true,
                "false" => false,
                v => return Err(Error::Invalid(format!("ro takes true or false, not {v:?}"))),
            };
            set_readonly_in(&mut tx, path, ro)?;
        }
        "compression" => {
            let v = if value.is_empty() { None } else { Some(value.as_bytes()) };
            super::write::setfattr_in(&mut tx, path, b"btrfs.compression", v)?;
        }
        "label" => {
            tx.resolve(path)?.ok_or_else(|| Error::NotFound(path.to_string()))?;
            tx.set_label(value.as_bytes())?;
        }
        n => return Err(Error::Invalid(format!("unknown property {n:?} (btrs knows: {})", PROPERTIES.join(", ")))),
    }
    tx.commit_with_warnings()
}

/// `btrs property get IMAGE PATH [NAME]`: (name, value) of each property
/// PATH has (ro on a subvolume, compression when set, label on the top
/// level's root), or of NAME.
pub fn get_properties<'p>(fs: &Filesystem, path: impl Into<ImagePath<'p>>, name: Option<&str>) -> Result<Vec<(String, String)>> {
    let path = path.into();
    if let Some(n) = name.filter(|n| !PROPERTIES.contains(n)) {
        return Err(Error::Invalid(format!("unknown property {n:?} (btrs knows: {})", PROPERTIES.join(", "))));
    }
    let e = fs.resolve(path)?;
    let want = |n: &str| name.is_none_or(|x| x == n);
    let mut out = Vec::new();
    let subvol = subvol_of_path(fs, path);
    let is_subvol = subvol.is_ok();
    if want("ro") {
        match subvol {
            Ok(id) => {
                let ro = fs.root_item(id)?.is_some_and(|(_, ri)| ri.flags.get() & ROOT_SUBVOL_RDONLY != 0);
                out.push(("ro".to_string(), ro.to_string()));
            }
            Err(err) if name.is_some() => return Err(err),
            Err(_) => {}
        }
    }
    if want("label") && (name.is_some() || (is_subvol && e.id.subvol == FS_TREE_OBJECTID)) {
        let l = &fs.sb.label;
        let end = l.iter().position(|&b| b == 0).unwrap_or(l.len());
        out.push(("label".to_string(), String::from_utf8_lossy(&l[..end]).into_owned()));
    }
    if want("compression") {
        if let Some((_, v)) = fs.xattrs(e.id)?.into_iter().find(|(n, _)| n == crate::fs::props::COMPRESSION) {
            out.push(("compression".to_string(), String::from_utf8_lossy(&v).into_owned()));
        }
    }
    Ok(out)
}

/// One subvolume as `btrfs subvolume list` and `show` describe it.
#[derive(Clone, Debug, Serialize)]
pub struct SubvolInfo {
    pub id: u64,
    /// Root item generation (the last transaction that changed the tree).
    pub generation: u64,
    /// The generation it was made in (otransid).
    pub cgen: u64,
    /// The subvolume it is linked in (0 for the top level).
    pub parent: u64,
    /// Shown as messages show names (see [`crate::name`]).
    pub path: String,
    /// The path's bytes, as `subvolume list` and `show` print them (as progs).
    #[serde(skip)]
    pub path_bytes: Vec<u8>,
    pub name: String,
    pub uuid: String,
    pub parent_uuid: String,
    pub received_uuid: String,
    pub readonly: bool,
    /// A snapshot (its root item key records the generation it was taken in).
    pub snapshot: bool,
    pub otime: i64,
    pub ctime: i64,
    pub ctransid: u64,
    pub stransid: u64,
    pub rtransid: u64,
    pub stime: i64,
    pub rtime: i64,
}

fn uuid_or_dash(u: &[u8; 16]) -> String {
    if *u == [0; 16] {
        "-".into()
    } else {
        uuid_string(u)
    }
}

fn secs(t: Timespec) -> i64 {
    t.sec.get() as i64
}

/// Every subvolume (the top level first, then by id), deleted ones left out.
pub fn subvolumes(fs: &Filesystem) -> Result<Vec<SubvolInfo>> {
    let root = fs.tree_root(ROOT_TREE_OBJECTID)?;
    let mut out = Vec::new();
    let mut c = fs.reader.seek(&root, Key::new(FS_TREE_OBJECTID, ROOT_ITEM_KEY, 0))?;
    while let Some(item) = c.next_item()? {
        let k = item.key;
        if k.objectid > LAST_FREE_OBJECTID {
            break;
        }
        if k.item_type != ROOT_ITEM_KEY || !(k.objectid == FS_TREE_OBJECTID || k.objectid >= FIRST_FREE_OBJECTID) {
            continue;
        }
        let ri = crate::format::items::parse_root_item(item.data()).map_err(|e| e.within(format!("root item {k}")))?;
        if ri.refs.get() == 0 {
            continue;
        }
        let link = if k.objectid == FS_TREE_OBJECTID {
            None
        } else {
            let r = fs.reader.range(&root, Key::new(k.objectid, ROOT_BACKREF_KEY, 0), Key::new(k.objectid, ROOT_BACKREF_KEY, u64::MAX))?;
            match r.into_iter().next() {
                Some((bk, body)) => Some((bk.offset, crate::format::items::parse_root_ref(&body)?)),
                // Unlinked: deleted by the kernel, its cleaner not run yet.
                None => continue,
            }
        };
        let path_bytes = if k.objectid == FS_TREE_OBJECTID {
            Vec::new()
        } else {
            super::backref::inode_path_bytes(fs, k.objectid, ri.root_dirid.get())?
        };
        let path = crate::name::Name(&path_bytes).to_string();
        out.push(SubvolInfo {
            id: k.objectid,
            generation: ri.generation.get(),
            cgen: ri.otransid.get(),
            parent: link.as_ref().map_or(0, |l| l.0),
            name: link.as_ref().map_or_else(|| "<FS_TREE>".into(), |l| ImagePath::from(&l.1.name).to_string()),
            path,
            path_bytes,
            uuid: uuid_or_dash(&ri.uuid),
            parent_uuid: uuid_or_dash(&ri.parent_uuid),
            received_uuid: uuid_or_dash(&ri.received_uuid),
            readonly: ri.flags.get() & ROOT_SUBVOL_RDONLY != 0,
            snapshot: k.offset != 0,
            otime: secs(ri.otime),
            ctime: secs(ri.ctime),
            ctransid: ri.ctransid.get(),
            stransid: ri.stransid.get(),
            rtransid: ri.rtransid.get(),
            stime: secs(ri.stime),
            rtime: secs(ri.rtime),
        });
    }
    Ok(out)
}

/// What `btrs subvolume list` shows (btrfs-progs' flags).
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// -p: the parent's id.
    pub parent: bool,
    /// -c: the generation it was made in.
    pub cgen: bool,
    /// -g: the generation (always shown, as progs does).
    pub gen: bool,
    /// -u, -q, -R: uuid, parent uuid, received uuid.
    pub uuid: bool,
    pub parent_uuid: bool,
    pub received_uuid: bool,
    /// -s: only snapshots (with their creation time).
    pub snapshots_only: bool,
    /// -r: only read-only subvolumes.
    pub readonly_only: bool,
    /// -o: only the subvolumes directly inside this one.
    pub below: Option<u64>,
}

/// The subvolumes `opts` selects (the top level never listed, as progs).
pub fn select(all: Vec<SubvolInfo>, opts: &ListOptions) -> Vec<SubvolInfo> {
    all.into_iter()
        .filter(|s| s.id != FS_TREE_OBJECTID)
        .filter(|s| !opts.snapshots_only || s.snapshot)
        .filter(|s| !opts.readonly_only || s.readonly)
        .filter(|s| opts.below.is_none_or(|b| s.parent == b))
        .collect()
}

/// Paths as `btrfs subvolume list` prints them for a filesystem opened at
/// subvolume `top` (the one its PATH is in): subvolumes below `top` by their
/// path from it, the others from the top level.
pub fn relative_to(all: &mut [SubvolInfo], top: u64) {
    if top == FS_TREE_OBJECTID {
        return;
    }
    let parents: std::collections::BTreeMap<u64, u64> = all.iter().map(|s| (s.id, s.parent)).collect();
    let Some(prefix) = all.iter().find(|s| s.id == top).map(|s| [&s.path_bytes[..], b"/"].concat()) else { return };
    for s in all.iter_mut() {
        let mut p = s.parent;
        let mut below = false;
        for _ in 0..parents.len() {
            if p == top {
                below = true;
                break;
            }
            match parents.get(&p) {
                Some(&q) if p != FS_TREE_OBJECTID => p = q,
                _ => break,
            }
        }
        if below {
            if let Some(rest) = s.path_bytes.strip_prefix(&prefix[..]) {
                s.path_bytes = rest.to_vec();
                s.path = crate::name::Name(&s.path_bytes).to_string();
            }
        }
    }
}

/// One line of `btrfs subvolume list` (no newline), the path as its bytes.
pub fn list_line(s: &SubvolInfo, opts: &ListOptions) -> Vec<u8> {
    let mut l = format!("ID {} gen {}", s.id, s.generation);
    if opts.cgen || opts.snapshots_only {
        l.push_str(&format!(" cgen {}", s.cgen));
    }
    if opts.parent {
        l.push_str(&format!(" parent {}", s.parent));
    }
    l.push_str(&format!(" top level {}", s.parent));
    if opts.snapshots_only {
        l.push_str(&format!(" otime {}", datetime(s.otime)));
    }
    if opts.parent_uuid {
        l.push_str(&format!(" parent_uuid {:<36}", s.parent_uuid));
    }
    if opts.received_uuid {
        l.push_str(&format!(" received_uuid {:<36}", s.received_uuid));
    }
    if opts.uuid {
        l.push_str(&format!(" uuid {:<36}", s.uuid));
    }
    l.push_str(" path ");
    [l.into_bytes(), s.path_bytes.clone()].concat()
}

/// "YYYY-MM-DD HH:MM:SS" of seconds since the epoch, in UTC.
pub fn datetime(t: i64) -> String {
    crate::ops::dump::utc_datetime(t)
}

/// The subvolumes in the order `btrfs subvolume show` lists snapshots:
/// depth first from the top level, each one's subvolumes by id.
pub fn tree_order(all: &[SubvolInfo]) -> Vec<u64> {
    let mut kids: std::collections::BTreeMap<u64, Vec<u64>> = std::collections::BTreeMap::new();
    for s in all.iter().filter(|s| s.id != FS_TREE_OBJECTID) {
        kids.entry(s.parent).or_default().push(s.id);
    }
    let mut out = Vec::new();
    let mut stack = vec![FS_TREE_OBJECTID];
    while let Some(id) = stack.pop() {
        if out.len() > all.len() {
            break;
        }
        out.push(id);
        if let Some(k) = kids.get(&id) {
            stack.extend(k.iter().rev());
        }
    }
    out
}

/// The subvolume at `path` (read-only filesystem).
pub fn subvol_of_path<'p>(fs: &Filesystem, path: impl Into<ImagePath<'p>>) -> Result<u64> {
    let path = path.into();
    let e = fs.resolve(path)?;
    if e.id.subvol == FS_TREE_OBJECTID && e.id.ino == FIRST_FREE_OBJECTID {
        return Ok(FS_TREE_OBJECTID);
    }
    let dirid = fs.root_item(e.id.subvol)?.map_or(FIRST_FREE_OBJECTID, |(_, ri)| ri.root_dirid.get());
    if e.id.ino != dirid || !e.subvol {
        return Err(Error::Invalid(format!("{path}: not a subvolume")));
    }
    Ok(e.id.subvol)
}

/// The default subvolume's id (read-only filesystem).
pub fn get_default(fs: &Filesystem) -> Result<u64> {
    let root = fs.tree_root(ROOT_TREE_OBJECTID)?;
    let key = Key::new(ROOT_TREE_DIR_OBJECTID, DIR_ITEM_KEY, crate::format::items::name_hash(b"default"));
    let Some(body) = fs.reader.lookup(&root, key)? else { return Ok(FS_TREE_OBJECTID) };
    Ok(crate::format::items::parse_dir_items(&body)?
        .into_iter()
        .find(|e| e.name == b"default")
        .map_or(FS_TREE_OBJECTID, |e| e.location.objectid))
}

#[cfg(test)]
mod tests {
    //! Crash safety by fault injection: the k-th image I/O of a snapshot,
    //! and of deleting a snapshotted subvolume, fails or is torn. Whatever
    //! k, the filesystem opens, keeps the format's rules, passes `btrfs
    //! check`, and holds the old tree or the new one, every file intact.
    use super::*;
    use crate::fs::txn::Transaction;
    use crate::volumes::fault::{arm_for_writers, Fault, FaultPlan};
    use std::sync::Arc;

    fn files() -> Vec<(String, Vec<u8>, bool)> {
        let mut v = vec![
            ("big".to_string(), (0..2_000_000u32).map(|i| (i * 7 % 251) as u8).collect(), false),
            ("nosum".to_string(), (0..300_000u32).map(|i| (i % 13) as u8).collect(), true),
        ];
        // Enough names for a tree of two levels.
        v.extend((0..250).map(|i| (format!("file-with-a-long-name-{i:04}"), format!("{i}").into_bytes(), false)));
        v
    }

    /// Which of /sv and /snap exist, each checked to hold every file; the
    /// filesystem checked by btrs's block rules and by `btrfs check`.
    fn state(opts: &OpenOptions, what: &str) -> (bool, bool) {
        let mut ro = OpenOptions { writable: false, ..opts.clone() };
        if Filesystem::open(&ro).is_err_and(|e| e.to_string().contains("one commit behind")) {
            ro.accept_lagging = true;
        }
        let fs = Filesystem::open(&ro).unwrap_or_else(|e| panic!("{what}: open: {e}"));
        let problems = crate::fs::check::check_filesystem(&fs).unwrap();
        assert!(problems.is_empty(), "{what}: {problems:?}");
        let mut present = Vec::new();
        for top in ["/sv", "/snap"] {
            let Ok(d) = fs.resolve(top) else {
                present.push(false);
                continue;
            };
            assert!(d.subvol, "{what}: {top} is not a subvolume");
            for (name, want, _) in files() {
                let id = fs.resolve(&format!("{top}/{name}")).unwrap_or_else(|e| panic!("{what}: {top}/{name}: {e}")).id;
                assert!(fs.read_file_bytes(id).unwrap() == want, "{what}: {top}/{name} differs");
            }
            present.push(true);
        }
        drop(fs);
        let out = std::process::Command::new("btrfs").args(["check", "--readonly"]).arg(&opts.image).output().unwrap();
        assert!(
            out.status.success(),
            "{what}: btrfs check: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (present[0], present[1])
    }

    #[test]
    fn a_fault_at_any_io_leaves_the_old_tree_or_the_new_one() {
        let Some((_tmp, imgs)) = crate::fs::testutil::mkfs_btrfs(1, &[]) else { return };
        let opts = OpenOptions { image: imgs[0].clone(), writable: true, ..Default::default() };
        let mut tx = Transaction::begin(Filesystem::open(&opts).unwrap()).unwrap();
        create_in(&mut tx, "/sv", false).unwrap();
        let sv = tx.resolve("/sv").unwrap().unwrap().id;
        for (name, data, nosum) in files() {
            let flags = if nosum { INODE_NODATASUM | INODE_NODATACOW } else { 0 };
            let id = tx.create(sv, name.as_bytes(), S_IFREG | 0o644, flags).unwrap();
            tx.write_at(id, 0, &data, &Default::default(), &mut Default::default()).unwrap();
        }
        tx.commit().unwrap();
        assert_eq!(state(&opts, "before"), (true, false));
        type Op<'a> = Box<dyn Fn(&OpenOptions) -> Result<()> + 'a>;
        // (name, the op, (/sv, /snap) before it, and after it)
        type Case<'a> = (&'a str, Op<'a>, (bool, bool), (bool, bool));
        let ops: Vec<Case> = vec![
            ("snapshot", Box::new(|o| snapshot(o, "/sv", "/snap", false).map(drop)), (true, false), (true, true)),
            // Deleting the source of a snapshot: its blocks the snapshot
            // shares turn FULL_BACKREF first.
            ("delete", Box::new(|o| delete(o, &["/sv".to_string()], false).map(drop)), (true, true), (false, true)),
        ];
        for (name, op, old, new) in &ops {
            // Count its I/Os, then undo them.
            let counter = Arc::new(FaultPlan::new(u64::MAX, Fault::Fail));
            arm_for_writers(Some(counter.clone()));
            op(&opts).unwrap();
            arm_for_writers(None);
            let total = counter.count();
            assert_eq!(state(&opts, &format!("{name} without a fault")), *new);
            counter.restore().unwrap();
            assert_eq!(state(&opts, &format!("{name} undone")), *old);
            assert!(total > 10, "{name}: only {total} I/Os counted");
            let stride = (total / 30).max(1);
            let (mut failed, mut done) = (0, 0);
            for fault in [Fault::Fail, Fault::Torn] {
                for k in (0..total).filter(|k| k % stride == 0 || *k + 12 > total) {
                    let what = format!("{name}: {fault:?} at I/O {k} of {total}");
                    let plan = Arc::new(FaultPlan::new(k, fault));
                    arm_for_writers(Some(plan.clone()));
                    let r = op(&opts);
                    arm_for_writers(None);
                    failed += usize::from(r.is_err());
                    let now = state(&opts, &what);
                    assert!(now == *old || now == *new, "{what}: {now:?} is neither {old:?} nor {new:?}");
                    done += usize::from(now == *new);
                    plan.restore().unwrap();
                }
            }
            assert!(failed > 0, "{name}: no fault made it fail");
            eprintln!("{name}: {total} I/Os, {failed} faults failed it, {done} left it done");
            // The next op starts from this one done.
            op(&opts).unwrap();
            assert_eq!(state(&opts, &format!("{name} done")), *new);
        }
    }
}
