//! The generator: reproducible random operations from a seed.

#![allow(dead_code, unused_imports)]

use super::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

// ---------------------------------------------------------------- the generator

#[derive(Clone, Debug)]
pub(crate) struct GenCfg {
    /// The command-line entrance (crash = SIGKILL; commit/abort do nothing).
    pub(crate) cli: bool,
    /// A `check` op every this many ops.
    pub(crate) check_every: usize,
    /// On average one crash op in this many (0: none).
    pub(crate) crash_one_in: u64,
    /// Largest "big" write; a few writes are this big to fill the image.
    pub(crate) big_write: u64,
    /// About the data the images hold (their bytes over the copies kept):
    /// a few writes are this big, to run out of space.
    pub(crate) fill: u64,
    /// Whether the image has subvolumes the kernel made (targets for paths).
    pub(crate) gaps: Gaps,
    /// Devices of the layout, and its data profile (conversions keep the
    /// number of data copies, which the ENOSPC judgement counts on).
    pub(crate) devs: usize,
    pub(crate) data: &'static str,
}

pub(crate) struct Gen {
    pub(crate) rng: Rng,
    pub(crate) cfg: GenCfg,
    count: usize,
    /// Per mille chance of a commit after an op (changes every so often:
    /// runs of small transactions and a few large ones).
    commit_pm: u64,
    names: u64,
}

impl Gen {
    /// A conversion the devices allow: data to a profile with as many
    /// copies, metadata to any.
    fn convert(&mut self) -> Option<Op> {
        let devs = self.cfg.devs;
        let fits = |p: &str| super::super::lib_api::Profile::from_name(p).is_some_and(|p| p.min_devices() <= devs);
        let copies = |p: &str| super::super::lib_api::Profile::from_name(p).map_or(0, |p| p.copies());
        let all = ["single", "dup", "raid0", "raid1", "raid1c3", "raid1c4", "raid10"];
        let want = copies(self.cfg.data);
        let data: Vec<&str> = all.iter().copied().filter(|p| fits(p) && copies(p) == want).collect();
        let meta: Vec<&str> = all.iter().copied().filter(|p| fits(p)).collect();
        let d = *self.rng.pick(&data)?;
        let m = *self.rng.pick(&meta)?;
        Some(Op::Convert { data: d.into(), meta: m.into() })
    }

    pub(crate) fn new(seed: u64, cfg: GenCfg) -> Gen {
        Gen { rng: Rng::new(seed), cfg, count: 0, commit_pm: 300, names: 0 }
    }

    /// The next op for model state `m`.
    pub(crate) fn next(&mut self, m: &Model) -> Op {
        for _ in 0..20 {
            let op = self.next_any(m);
            if self.cfg.gaps.extref || !m.hits_extref(&op) {
                return op;
            }
        }
        Op::Check
    }

    fn next_any(&mut self, m: &Model) -> Op {
        self.count += 1;
        if self.cfg.check_every > 0 && self.count % self.cfg.check_every == 0 {
            return Op::Check;
        }
        if self.count % 97 == 0 {
            self.commit_pm = [400, 250, 100, 10, 2][self.rng.below(5) as usize];
        }
        let r = &mut self.rng;
        if !self.cfg.cli && r.below(1000) < self.commit_pm {
            return Op::Commit { reopen: r.chance(1, 5) };
        }
        if self.cfg.crash_one_in > 0 && r.chance(1, self.cfg.crash_one_in) {
            return if self.cfg.cli {
                Op::Crash { at: [r.below(4_000), r.range(2_000, 15_000), r.below(40_000)][r.below(3) as usize], torn: false }
            } else {
                Op::Crash { at: [r.below(8), r.below(60), r.below(400)][r.below(3) as usize], torn: r.chance(1, 2) }
            };
        }
        if !self.cfg.cli && r.chance(1, 150) {
            return Op::Abort;
        }
        if !self.cfg.cli && r.chance(1, 60) {
            return Op::WriteBack { blocks: [0, 1, 3, 16, 2048][r.below(5) as usize] };
        }
        if r.chance(1, 70) {
            if let Some(op) = self.convert() {
                return op;
            }
        }
        let all = m.paths();
        let files: Vec<&(String, Id)> = all.iter().filter(|(_, id)| matches!(m.node(*id).kind, Kind::File(_))).collect();
        let dirs: Vec<&(String, Id)> = all.iter().filter(|(_, id)| matches!(m.node(*id).kind, Kind::Dir { .. })).collect();
        let w = [30, 6, 7, 6, 3, 3, 8, 5, 4, 6, 2, 2, 4, 3];
        match self.rng.weighted(&w) {
            0 => self.write(m, &files, &dirs),
            1 => {
                let path = self.file_or_new(&files, &dirs);
                let size = self.size_for(m, &path);
                Op::Truncate { path, size }
            }
            2 => {
                let parents = self.rng.chance(1, 4);
                let path = if self.rng.chance(1, 12) {
                    self.any(&all)
                } else if parents {
                    let d = self.dir(&dirs);
                    format!("{}/{}/{}", d.trim_end_matches('/'), self.name(), self.name())
                } else {
                    self.new_path(&dirs)
                };
                Op::Mkdir { path, parents }
            }
            3 => {
                let n = 1 + self.rng.below(2) as usize + usize::from(self.rng.chance(1, 8));
                let paths = (0..n).map(|_| if self.rng.chance(1, 10) { self.new_path(&dirs) } else { self.any(&all) }).collect();
                Op::Rm { paths, recursive: false }
            }
            4 => Op::Rm { paths: vec![self.dir(&dirs)], recursive: true },
            5 => {
                // rmdir: an empty directory (or not).
                let empty: Vec<&(String, Id)> = dirs.iter().copied().filter(|(_, id)| m.dir_size(*id) == 0).collect();
                let p = if empty.is_empty() || self.rng.chance(1, 4) {
                    self.dir(&dirs)
                } else {
                    self.rng.pick(&empty).map(|x| x.0.clone()).unwrap_or_default()
                };
                Op::Rm { paths: vec![p], recursive: false }
            }
            6 => {
                let src = self.any(&all);
                let dst = match self.rng.below(10) {
                    0..=3 => {
                        let d = split(&src).map(|x| x.0).unwrap_or_else(|_| "/".into());
                        format!("{}/{}", d.trim_end_matches('/'), self.name())
                    }
                    4..=6 => self.new_path(&dirs),
                    7 => self.file_or_new(&files, &dirs),
                    8 => self.dir(&dirs),
                    _ => self.any(&all),
                };
                Op::Mv { src, dst }
            }
            7 => {
                let target = if self.rng.chance(1, 10) { self.any(&all) } else { self.file_or_new(&files, &dirs) };
                // Many links in one directory: some with long names, to fill
                // the inode ref item.
                let link = if self.rng.chance(1, 3) {
                    let d = split(&target).map(|x| x.0).unwrap_or_else(|_| "/".into());
                    let long = self.rng.chance(1, 2);
                    let n = if long {
                        let k = self.rng.range(150, 255) as usize;
                        self.long_name(k)
                    } else {
                        self.name()
                    };
                    format!("{}/{n}", d.trim_end_matches('/'))
                } else {
                    self.new_path(&dirs)
                };
                Op::Link { target, link }
            }
            8 => {
                let max = max_symlink(m.params.nodesize, m.params.sectorsize);
                let target = match self.rng.below(20) {
                    0 => String::new(),
                    1 => "t".repeat(max),
                    2 => "u".repeat(max + 1),
                    3 => "é".repeat(max / 2),
                    _ => format!("../{}/{}", self.name(), self.name()),
                };
                Op::Symlink { target, link: self.new_path(&dirs) }
            }
            9 | 10 => {
                let path = self.any(&all);
                let max = max_xattr(m.params.nodesize);
                let name = match self.rng.below(30) {
                    0 => format!("user.{}", "x".repeat(250)),
                    1 => format!("user.{}", "y".repeat(251)),
                    2 => String::new(),
                    3 => "trusted.t".into(),
                    4 => "security.s".into(),
                    5 => ["system.foo", "foo.bar", "user.", "trusted.", "security"][self.rng.below(5) as usize].into(),
                    n => format!("user.{}", ["a", "b", "c", "mime", "long"][(n % 5) as usize]),
                };
                let remove = self.rng.chance(1, 4);
                let value = if remove {
                    None
                } else {
                    let nl = name.len() as u64;
                    let len = match self.rng.below(12) {
                        0 => (max as u64).saturating_sub(nl),
                        1 => max as u64 + 1 - nl.min(max as u64),
                        2 => 0,
                        3 => self.rng.below(max as u64),
                        _ => self.rng.below(120),
                    };
                    Some((len as u32, self.rng.next()))
                };
                Op::SetXattr { path, name, value }
            }
            12 => self.subvol_op(m, &all, &dirs),
            13 => {
                let path = self.any(&all);
                if self.rng.chance(1, 2) {
                    let mode = match self.rng.below(6) {
                        0 => 0o7777,
                        1 => 0,
                        2 => 0o4755,
                        3 => 0o2711,
                        _ => self.rng.below(0o10000) as u32,
                    };
                    Op::Chmod { path, mode }
                } else {
                    // Numeric ids up to the largest the kernel stores (u32::MAX is "no change").
                    let id = |g: &mut Self| match g.rng.below(4) {
                        0 => None,
                        1 => Some(0),
                        2 => Some(u32::MAX - 1),
                        _ => Some(g.rng.below(70_000) as u32),
                    };
                    let gid = id(self);
                    let uid = id(self).or(if gid.is_none() { Some(1000) } else { None });
                    Op::Chown { path, uid, gid }
                }
            }
            _ => {
                let dest = if self.rng.chance(1, 2) { self.dir(&dirs) } else { self.new_path(&dirs) };
                Op::Put { dest, seed: self.rng.next() }
            }
        }
    }

    /// A subvolume made, snapshotted, deleted or made read-only (or
    /// writable): mostly on subvolumes, now and then on any path.
    fn subvol_op(&mut self, m: &Model, all: &[(String, Id)], dirs: &[&(String, Id)]) -> Op {
        let subvols: Vec<String> = all.iter().filter(|(_, id)| m.subvols.values().any(|s| s.root == *id)).map(|(p, _)| p.clone()).collect();
        let subvol = |g: &mut Self| -> String {
            if subvols.is_empty() || g.rng.chance(1, 10) {
                g.any(all)
            } else {
                g.rng.pick(&subvols).cloned().unwrap_or_else(|| "/".into())
            }
        };
        match self.rng.weighted(&[3, 4, 2, 2]) {
            0 => Op::SubvolCreate { path: self.new_path(dirs) },
            1 => {
                let src = subvol(self);
                let dest = if self.rng.chance(1, 5) { self.dir(dirs) } else { self.new_path(dirs) };
                Op::Snapshot { src, dest, ro: self.rng.chance(1, 4) }
            }
            2 => Op::SubvolDelete { path: subvol(self) },
            _ => Op::SetRo { path: subvol(self), ro: self.rng.chance(1, 3) },
        }
    }

    fn name(&mut self) -> String {
        self.names += 1;
        match self.rng.below(40) {
            0 => self.long_name(255),
            1 => self.long_name(256),
            2 => format!("é{}", self.names),
            3 => format!("sp ace{}", self.names),
            _ => {
                let l = ["a", "b", "c", "d", "e", "f", "g", "h"][self.rng.below(8) as usize];
                format!("{l}{}", self.rng.below(40))
            }
        }
    }

    fn long_name(&mut self, n: usize) -> String {
        let c = (b'k' + self.rng.below(10) as u8) as char;
        let tag = format!("{}", self.rng.below(1000));
        let mut s = c.to_string().repeat(n.saturating_sub(tag.len()));
        s.push_str(&tag);
        s
    }

    fn dir(&mut self, dirs: &[&(String, Id)]) -> String {
        self.rng.pick(dirs).map(|x| x.0.clone()).unwrap_or_else(|| "/".into())
    }

    fn any(&mut self, all: &[(String, Id)]) -> String {
        self.rng.pick(all).map(|x| x.0.clone()).unwrap_or_else(|| "/".into())
    }

    fn new_path(&mut self, dirs: &[&(String, Id)]) -> String {
        let d = self.dir(dirs);
        format!("{}/{}", d.trim_end_matches('/'), self.name())
    }

    fn file_or_new(&mut self, files: &[&(String, Id)], dirs: &[&(String, Id)]) -> String {
        if files.is_empty() || self.rng.chance(1, 5) {
            self.new_path(dirs)
        } else {
            self.rng.pick(files).map(|x| x.0.clone()).unwrap_or_default()
        }
    }

    /// A size or offset near what the file has: its end, its recent write
    /// edges, sector / node / stripe / MiB boundaries, past the end, the
    /// largest file size.
    fn size_for(&mut self, m: &Model, path: &str) -> u64 {
        let f = m.find(path).and_then(|id| m.node(id).file().cloned()).unwrap_or_default();
        let size = f.size;
        let r = &mut self.rng;
        let base = match r.below(12) {
            0 => 0,
            1 | 2 => size,
            3 => r.below(size + 1),
            4 => *r.pick(&f.edges).unwrap_or(&size),
            5 => (r.below(size / 4096 + 2)) * 4096,
            6 => (r.below(size / 65536 + 2)) * 65536,
            7 => (r.below(size / (1 << 20) + 2)) << 20,
            8 => size + r.below(3 << 20),
            9 => size + r.below(1 << 32) * [1, 4096][r.below(2) as usize],
            10 => {
                return match r.below(4) {
                    0 => MAX_FILE,
                    1 => MAX_FILE + 1,
                    _ => MAX_FILE - r.below(1 << 20),
                };
            }
            _ => size / 2,
        };
        let d = [0i64, 1, -1, 2, -2, 511, 4095, -4095, 100][r.below(9) as usize];
        base.saturating_add_signed(d).min(MAX_FILE)
    }

    fn write(&mut self, m: &Model, files: &[&(String, Id)], dirs: &[&(String, Id)]) -> Op {
        let existing = !files.is_empty() && self.rng.chance(7, 10);
        // Files with compressed extents (the kernel's) get their share.
        let compressed: Vec<&(String, Id)> =
            files.iter().copied().filter(|(_, id)| m.node(*id).file().is_some_and(|f| !f.compressed.is_empty())).collect();
        let (path, parents) = if existing && !compressed.is_empty() && self.rng.chance(1, 4) {
            (self.rng.pick(&compressed).map(|x| x.0.clone()).unwrap_or_default(), false)
        } else if existing {
            (self.rng.pick(files).map(|x| x.0.clone()).unwrap_or_default(), false)
        } else if self.rng.chance(1, 6) {
            let d = self.dir(dirs);
            (format!("{}/{}/{}", d.trim_end_matches('/'), self.name(), self.name()), true)
        } else {
            (self.new_path(dirs), false)
        };
        let r = &mut self.rng;
        let big = r.chance(1, 60);
        let len = if self.cfg.fill > 0 && r.chance(1, 120) {
            r.range(self.cfg.fill / 3, self.cfg.fill * 5 / 4)
        } else if big {
            r.range(self.cfg.big_write / 2, self.cfg.big_write)
        } else {
            match r.below(14) {
                0 => 0,
                1 => r.range(1, 16),
                2 => r.range(1, 2048),
                3 => [4095, 4096, 4097][r.below(3) as usize],
                4 => [65535, 65536, 65537, 131072][r.below(4) as usize],
                5 | 6 => r.range(1, 300_000),
                7 => [(1 << 20) - 1, 1 << 20, (1 << 20) + 1][r.below(3) as usize],
                8 => r.range(1 << 20, 6 << 20),
                _ => r.range(1, 40_000),
            }
        };
        let off = if r.chance(1, 40) {
            match r.below(3) {
                0 => MAX_FILE - len,
                1 => MAX_FILE - len + 1,
                _ => MAX_FILE - len - r.below(100_000),
            }
        } else {
            self.size_for(m, &path)
        };
        let r = &mut self.rng;
        let off = if off == MAX_FILE { off - len.min(off) } else { off };
        let create = match r.below(10) {
            0 => Create::NoSum,
            1 => Create::NoCow,
            _ => Create::Plain,
        };
        let seed = r.next();
        let direct = r.chance(3, 10);
        let truncate = r.chance(1, 20);
        let commit_every = big && r.chance(1, 2);
        let max_bio_k = [0, 0, 0, 64, 4, 256][r.below(6) as usize];
        // The command line refuses --compress with --direct, --nodatasum or
        // --nodatacow (the kernel compresses none of them): never asked together.
        let compress = self.cfg.gaps.compressed_write && r.chance(1, 6) && !direct && create == Create::Plain;
        Op::Write { path, off, len, seed, direct, truncate, parents, create, commit_every, max_bio_k, compress }
    }
}
