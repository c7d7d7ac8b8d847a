//! The model's subvolume operations: `btrs subvolume create`, `snapshot`,
//! `delete` and `property set ro`, as `ops::subvol` and the engine's
//! `txn::subvol` must behave.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

impl Model {
    /// `ops::subvol::subvol_at`: the subvolume whose root `path` is.
    fn subvol_at(&self, path: &str) -> Result<u64, ErrClass> {
        let id = self.resolve(path)?.ok_or(ErrClass::NotFound)?;
        self.subvols.iter().find(|(_, s)| s.root == id).map(|(k, _)| *k).ok_or(ErrClass::NotSubvol)
    }

    /// A subvolume id no subvolume has.
    fn new_subvol_id(&self) -> u64 {
        self.subvols.keys().copied().max().unwrap_or(TOP).max(255) + 1
    }

    /// `ops::subvol::new_entry`: the directory a new subvolume's entry
    /// goes in and its name.
    fn new_entry(&mut self, path: &str) -> Result<(Id, Vec<u8>), ErrClass> {
        let (dir, name) = split(path)?;
        let d = self.dir_at(&dir, false)?;
        if self.entries(d).is_some_and(|e| e.contains_key(&name)) {
            return Err(ErrClass::Exists);
        }
        Ok((d, name))
    }

    /// Link the root of subvolume `sv` as `dir/name`.
    fn link_subvol(&mut self, dir: Id, name: &[u8], root: Id) -> Result<(), ErrClass> {
        self.ensure_writable(dir)?;
        let Kind::Dir { entries, next_index, .. } = &mut self.node_mut(dir).kind else { return Err(ErrClass::NotDir) };
        let index = *next_index;
        *next_index += 1;
        entries.insert(name.to_vec(), Entry { id: root, index });
        Ok(())
    }

    pub(crate) fn subvol_create(&mut self, path: &str) -> Result<(), ErrClass> {
        let (d, name) = self.new_entry(path)?;
        let sv = self.new_subvol_id();
        let root = self.add_node(Node {
            kind: Kind::Dir { entries: BTreeMap::new(), next_index: 2, parent: Some(d) },
            mode: S_IFDIR | 0o755,
            uid: 0,
            gid: 0,
            flags: 0,
            xattrs: BTreeMap::new(),
            subvol: sv,
            nlink: 1,
        });
        self.link_subvol(d, &name, root)?;
        self.subvols.insert(sv, Subvol { ro: false, root });
        Ok(())
    }

    /// `ops::subvol::snapshot`: SRC's tree copied whole (hard links stay
    /// links; subvolumes nested in it become stubs).
    pub(crate) fn snapshot(&mut self, src: &str, dest: &str, ro: bool) -> Result<(), ErrClass> {
        let from = self.subvol_at(src)?;
        let dest = match self.resolve(dest)? {
            Some(id) if self.node(id).is_dir() => {
                let base = src.trim_end_matches('/').rsplit('/').next().filter(|b| !b.is_empty()).ok_or(ErrClass::NotAName)?;
                format!("{}/{base}", dest.trim_end_matches('/'))
            }
            Some(_) => return Err(ErrClass::Exists),
            None => dest.to_string(),
        };
        let (d, name) = self.new_entry(&dest)?;
        let sv = self.new_subvol_id();
        let src_root = self.subvols[&from].root;
        let mut map: BTreeMap<Id, Id> = BTreeMap::new();
        let mut order = vec![src_root];
        let mut seen = BTreeSet::from([src_root]);
        let mut i = 0;
        while let Some(&old) = order.get(i) {
            i += 1;
            // What a nested subvolume holds is not copied (it is a stub).
            if old != src_root && (self.node(old).subvol != from || matches!(self.node(old).kind, Kind::Stub)) {
                continue;
            }
            if let Some(es) = self.entries(old) {
                for e in es.values() {
                    if seen.insert(e.id) {
                        order.push(e.id);
                    }
                }
            }
        }
        for &old in &order {
            let n = self.node(old);
            let copy = if old != src_root && (n.subvol != from || matches!(n.kind, Kind::Stub)) {
                // Not in SRC's tree: what the kernel shows in its place.
                Node { kind: Kind::Stub, mode: S_IFDIR | 0o755, uid: 0, gid: 0, flags: 0, xattrs: BTreeMap::new(), subvol: sv, nlink: 1 }
            } else {
                Node { subvol: sv, ..n.clone() }
            };
            let id = self.add_node(copy);
            map.insert(old, id);
        }
        for (&old, &new) in &map {
            if let Kind::Dir { entries, parent, .. } = &mut self.node_mut(new).kind {
                if old == src_root {
                    *parent = Some(d);
                } else if let Some(p) = parent {
                    *p = map.get(p).copied().unwrap_or(*p);
                }
                for e in entries.values_mut() {
                    e.id = map[&e.id];
                }
            }
        }
        let ext: Vec<(Id, Vec<u8>)> = self
            .extref
            .iter()
            .filter_map(|(dir, n)| map.get(dir).filter(|_| self.node(*dir).subvol == from).map(|nd| (*nd, n.clone())))
            .collect();
        self.extref.extend(ext);
        self.link_subvol(d, &name, map[&src_root])?;
        self.subvols.insert(sv, Subvol { ro, root: map[&src_root] });
        Ok(())
    }

    /// `ops::subvol::delete` of one subvolume (not recursive).
    pub(crate) fn subvol_delete(&mut self, path: &str) -> Result<(), ErrClass> {
        let sv = self.subvol_at(path)?;
        if sv == TOP {
            return Err(ErrClass::TopLevel);
        }
        let root = self.subvols[&sv].root;
        // A subvolume linked inside it (not a stub: those hold nothing).
        let inside: Vec<Id> = self.nodes.iter().filter(|(_, n)| n.subvol == sv).map(|(id, _)| *id).collect();
        let nested = inside.iter().any(|&dir| {
            self.entries(dir)
                .is_some_and(|es| es.values().any(|e| self.node(e.id).subvol != sv && !matches!(self.node(e.id).kind, Kind::Stub)))
        });
        if nested {
            return Err(ErrClass::HasNested);
        }
        let (parent_dir, name) = self
            .nodes
            .iter()
            .find_map(|(id, n)| match &n.kind {
                Kind::Dir { entries, .. } => entries.iter().find(|(_, e)| e.id == root).map(|(name, _)| (*id, name.clone())),
                _ => None,
            })
            .ok_or(ErrClass::NotFound)?;
        self.ensure_writable(parent_dir)?;
        let Kind::Dir { entries, .. } = &mut self.node_mut(parent_dir).kind else { return Err(ErrClass::NotDir) };
        entries.remove(&name);
        let gone: BTreeSet<Id> = inside.into_iter().collect();
        self.nodes.retain(|id, _| !gone.contains(id));
        self.extref.retain(|(d, _)| !gone.contains(d));
        self.subvols.remove(&sv);
        Ok(())
    }

    /// `btrs property set PATH ro true|false`.
    pub(crate) fn set_ro(&mut self, path: &str, ro: bool) -> Result<(), ErrClass> {
        let sv = self.subvol_at(path)?;
        if let Some(s) = self.subvols.get_mut(&sv) {
            s.ro = ro;
        }
        Ok(())
    }
}
