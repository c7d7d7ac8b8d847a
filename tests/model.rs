//! Random-operation model testing through the `btrs` command line (issue
//! 20): what users run. The same generator and model as the library
//! entrance (`src/model_tests/`), whose files this test includes; every
//! op is one `btrs` command (one transaction); a crash op SIGKILLs the next
//! command after a random delay. After every command the paths it touched
//! equal the model (a refused command leaves the generation as it was);
//! every `check` op the whole tree, `btrfs check --check-data-csum` and
//! scrub; at the end (interop) the kernel's view, scrub, writes and balance.

#[path = "common/mod.rs"]
mod common;
#[path = "../src/model_tests/model/mod.rs"]
mod model;
#[path = "../src/model_tests/shared.rs"]
mod shared;

use common::interop;

/// The btrs items the shared files use (`crate::` in the library's copy).
#[allow(unused_imports)]
mod lib_api {
    pub use btrs::format::items::{parse_inode_refs, FileExtentKind};
    pub use btrs::format::{CsumType, FileType, Key, Profile, EMPTY_SUBVOL_DIR_OBJECTID, INODE_REF_KEY};
    pub use btrs::fs::{DirEnt, FileChunk, Filesystem, InodeId};
    pub use btrs::ops::mkfs::{mkfs, MkfsOptions};
    pub use btrs::ops::scrub::{scrub, Finding, FindingKind, ScrubOptions};
    pub use btrs::volumes::{raw, OpenOptions};
    pub use btrs::Error;
}

use std::path::{Path, PathBuf};
use std::process::Stdio;

use model::*;
use shared::*;

struct CliRunner {
    imgs: Vec<PathBuf>,
    /// Host files: write inputs, put trees.
    host: PathBuf,
    model: Model,
    kill_next: Option<u64>,
    stats: Stats,
    capacity: u64,
    copies: u64,
    chunks0: usize,
    n: u64,
    /// A kill left some superblock copies one generation behind; the next
    /// commit rewrites them.
    stale_supers: bool,
}

/// How a command ended.
enum End {
    Ok,
    Err(String),
    Killed,
}

impl CliRunner {
    fn new(imgs: Vec<PathBuf>, dir: &Path, model: Model, copies: u64) -> CliRunner {
        let host = dir.join("host");
        std::fs::create_dir_all(&host).unwrap();
        let capacity = imgs.iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();
        let chunks0 = chunk_count(&imgs);
        CliRunner { imgs, host, model, kill_next: None, stats: Stats::default(), capacity, copies, chunks0, n: 0, stale_supers: false }
    }

    fn img(&self) -> String {
        self.imgs[0].to_str().unwrap().to_string()
    }

    /// The command line for `op` (host inputs made ready).
    fn args(&mut self, op: &Op) -> Vec<String> {
        self.n += 1;
        let img = self.img();
        let s = |x: &str| x.to_string();
        match op {
            Op::Write { path, off, len, seed, direct, truncate, parents, create, commit_every, max_bio_k, compress } => {
                let from = self.host.join("input");
                std::fs::write(&from, data(*seed, *len as usize)).unwrap();
                let mut a = vec![
                    s("write"),
                    img,
                    path.clone(),
                    s("--from"),
                    from.to_str().unwrap().into(),
                    format!("--offset={off}"),
                    s("--quiet"),
                ];
                for (on, f) in [
                    (*direct, "--direct"),
                    (*truncate, "--truncate"),
                    (*parents, "-p"),
                    (*commit_every, "--commit-every=16M"),
                    (*compress, "--compress=zstd"),
                ] {
                    if on {
                        a.push(f.into());
                    }
                }
                match create {
                    Create::Plain => {}
                    Create::NoSum => a.push(s("--nodatasum")),
                    Create::NoCow => a.push(s("--nodatacow")),
                }
                if *max_bio_k != 0 {
                    a.push(format!("--max-bio={max_bio_k}K"));
                }
                a
            }
            Op::Truncate { path, size } => {
                let from = self.host.join("empty");
                std::fs::write(&from, b"").unwrap();
                vec![
                    s("write"),
                    img,
                    path.clone(),
                    s("--from"),
                    from.to_str().unwrap().into(),
                    format!("--offset={size}"),
                    s("--truncate"),
                    s("--quiet"),
                ]
            }
            Op::Mkdir { path, parents } => {
                let mut a = vec![s("mkdir"), img, path.clone()];
                if *parents {
                    a.push(s("-p"));
                }
                a
            }
            Op::Rm { paths, recursive } => {
                let mut a = vec![s("rm"), img];
                if *recursive {
                    a.push(s("-r"));
                }
                a.push(s("--"));
                a.extend(paths.iter().cloned());
                a
            }
            Op::Mv { src, dst } => vec![s("mv"), img, s("--"), src.clone(), dst.clone()],
            Op::Link { target, link } => vec![s("ln"), img, s("--"), target.clone(), link.clone()],
            Op::Symlink { target, link } => vec![s("ln"), s("-s"), img, s("--"), target.clone(), link.clone()],
            Op::SetXattr { path, name, value } => {
                let mut a = vec![s("setfattr"), img, format!("--name={name}")];
                match value {
                    // Hex, as attr's setfattr reads it: printable bytes could start with 0x, 0s or a quote.
                    Some((n, seed)) => a.push(format!(
                        "--value=0x{}",
                        printable(*seed, *n as usize).iter().map(|b| format!("{b:02x}")).collect::<String>()
                    )),
                    None => a.push(s("--remove")),
                }
                a.push(s("--"));
                a.push(path.clone());
                a
            }
            Op::Put { dest, seed } => {
                let dir = self.host.join(format!("put-{}", self.n));
                std::fs::create_dir_all(&dir).unwrap();
                let src = HostTree::generate(*seed).materialize(&dir).expect("host tree");
                vec![s("put"), img, s("--"), src.to_str().unwrap().into(), dest.clone()]
            }
            Op::Convert { data, meta } => vec![s("balance"), img, format!("--convert=data={data},metadata={meta}"), s("--no-progress")],
            Op::SubvolCreate { path } => vec![s("subvolume"), s("create"), img, s("--"), path.clone()],
            Op::Snapshot { src, dest, ro } => {
                let mut a = vec![s("subvolume"), s("snapshot")];
                if *ro {
                    a.push(s("-r"));
                }
                a.extend([img, s("--"), src.clone(), dest.clone()]);
                a
            }
            Op::SubvolDelete { path } => vec![s("subvolume"), s("delete"), img, s("--"), path.clone()],
            Op::SetRo { path, ro } => vec![s("property"), s("set"), img, s("--"), path.clone(), s("ro"), ro.to_string()],
            // Five digits: the mode exactly, as the model (and the chmod
            // system call) sets it; GNU chmod keeps a directory's set-ID bits
            // for a shorter number (soak seed 2617).
            Op::Chmod { path, mode } => vec![s("chmod"), img, s("--"), format!("{mode:05o}"), path.clone()],
            Op::Chown { path, uid, gid } => {
                let owner =
                    format!("{}{}", uid.map(|u| u.to_string()).unwrap_or_default(), gid.map(|g| format!(":{g}")).unwrap_or_default());
                vec![s("chown"), img, s("--"), owner, path.clone()]
            }
            _ => Vec::new(),
        }
    }

    /// Run a command, killed after `kill` µs if asked.
    fn run(&self, args: &[String], kill: Option<u64>) -> Result<End, String> {
        let mut child = common::btrs_cmd()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        if let Some(us) = kill {
            std::thread::sleep(std::time::Duration::from_micros(us));
            let _ = child.kill();
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        use std::os::unix::process::ExitStatusExt;
        if out.status.signal() == Some(9) && kill.is_some() {
            return Ok(End::Killed);
        }
        if err.contains("panicked") {
            return Err(format!("[panic] btrs {args:?}: {err}"));
        }
        match out.status.code() {
            Some(0) => Ok(End::Ok),
            Some(1) => Ok(End::Err(err.trim().strip_prefix("btrs: error: ").unwrap_or(err.trim()).to_string())),
            // A usage error (an option's value out of its range) is a refusal too.
            Some(2) if err.starts_with("error: invalid value") => Ok(End::Err(err.trim().to_string())),
            c => Err(format!("[exit] btrs {args:?} ended with {c:?}: {err}")),
        }
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        self.stats.ops += 1;
        *self.stats.by_op.entry(op_name(op)).or_default() += 1;
        match op {
            Op::Check => return self.full_check(),
            Op::Crash { at, .. } => {
                self.kill_next = Some(*at);
                return Ok(());
            }
            Op::Commit { .. } | Op::Abort => return Ok(()),
            _ => {}
        }
        let applied = self.model.apply(op);
        let cands = in_place_of(&self.model, op);
        let args = self.args(op);
        let before = generation(&self.imgs)?;
        let kill = self.kill_next.take();
        let end = self.run(&args, kill)?;
        let _ = std::fs::remove_dir_all(self.host.join(format!("put-{}", self.n)));
        let now = generation(&self.imgs)?;
        let k = now.checked_sub(before).ok_or("[generation] went back")? as usize;
        if k > 0 {
            self.stale_supers = false;
        }
        match (end, applied.result) {
            (End::Killed, result) => {
                // Any commit the command reached: before it, between its steps, or all.
                let mut states = vec![self.model.clone()];
                states.extend(applied.commits.iter().cloned());
                if let Ok(m) = &result {
                    if states.len() <= k {
                        states.push(m.clone());
                    }
                }
                let mut st =
                    states.get(k).cloned().ok_or_else(|| format!("[kill] {op}: killed {k} generations on, {} states", states.len()))?;
                let fs = open_after_crash(&self.imgs)?;
                let torn = torn_paths(&st, &cands);
                let unreconciled = st.clone();
                reconcile_in_place(&fs, &mut st, &cands).map_err(|e| format!("[kill] {e}"))?;
                compare_all(&mut FsView { fs: &fs }, &st).map_err(|e| format!("[kill] {op} killed after {}µs: {e}", kill.unwrap_or(0)))?;
                drop(fs);
                judge(&self.imgs, true, &torn).map_err(|e| format!("[kill] {op}: {e}"))?;
                st = settle_in_place(&self.imgs, unreconciled, &cands).map_err(|e| format!("[kill] {op}: after the repair: {e}"))?;
                self.stats.crashes += 1;
                self.stale_supers = true;
                self.model = st;
                return Ok(());
            }
            (End::Ok, Ok(m)) => self.model = m,
            (End::Ok, Err(want)) => return Err(format!("[accepted] {op}: btrs did it, the model expects {want:?}")),
            (End::Err(e), want) => {
                if k > 0 {
                    self.model =
                        applied.commits.get(k - 1).cloned().ok_or_else(|| format!("[commits] {op}: {k} commits landed before: {e}"))?;
                }
                if !cands.is_empty() {
                    let fs = open_ro(&self.imgs)?;
                    reconcile_in_place(&fs, &mut self.model, &cands).map_err(|e| format!("[nocow] {e}"))?;
                }
                match (classify(&e), want) {
                    (ErrClass::NoSpace, _) => {
                        let held = self.model.data_bytes() + if let Op::Write { len, .. } = op { *len } else { 1 << 20 };
                        if held * self.copies * 4 < self.capacity && !no_room_to_restripe(op, &e) {
                            return Err(format!(
                                "[enospc] {op}: {e}, with about {} MiB of data on {} MiB of images",
                                held >> 20,
                                self.capacity >> 20
                            ));
                        }
                        self.stats.enospc += 1;
                    }
                    (got, Err(want)) if got == want => {
                        *self.stats.refused.entry(format!("{got:?}")).or_default() += 1;
                        if k > applied.commits.len() {
                            return Err(format!("[unchanged] {op}: refused, yet the generation moved from {before} to {now}"));
                        }
                    }
                    (got, Err(want)) => {
                        return Err(format!("[error-class] {op}: btrs refused with {got:?} ({e}), the model expects {want:?}"))
                    }
                    (_, Ok(_)) => return Err(format!("[refused] {op}: btrs refused ({e}), the model expects success")),
                }
            }
        }
        let fs = open_ro(&self.imgs)?;
        compare_paths(&mut FsView { fs: &fs }, &self.model, op).map_err(|e| format!("[view] {e}"))
    }

    fn full_check(&mut self) -> Result<(), String> {
        let t = std::time::Instant::now();
        let r = self.full_check_timed();
        self.stats.check_time += t.elapsed();
        r
    }

    fn full_check_timed(&mut self) -> Result<(), String> {
        self.stats.checks += 1;
        let fs = open_ro(&self.imgs)?;
        compare_all(&mut FsView { fs: &fs }, &self.model).map_err(|e| format!("[tree] {e}"))?;
        drop(fs);
        judge(&self.imgs, self.stale_supers, &[]).map_err(|e| format!("[judge] {e}"))?;
        self.stats.new_chunks = chunk_count(&self.imgs).saturating_sub(self.chunks0);
        Ok(())
    }
}

fn copies(l: &Layout) -> u64 {
    btrs::format::Profile::from_name(l.data).map_or(1, |p| p.copies() as u64)
}

/// Run ops from `source` on fresh images of `l`; the ops run up to a
/// failure, with it.
fn run(
    l: &'static Layout,
    dir: &Path,
    mut source: impl FnMut(&Model) -> Option<Op>,
    kernel: bool,
) -> Option<Result<Stats, (Vec<Op>, String)>> {
    if l.kernel_init && !interop::interop_enabled(l.name) {
        return None;
    }
    let imgs = make_images(dir, l)?;
    let gaps = Gaps::from_env();
    let model =
        if l.kernel_init { kernel_init(&imgs, dir, gaps).unwrap_or_else(|e| panic!("{}: {e}", l.name)) } else { fresh_model(&imgs, gaps) };
    let mut r = CliRunner::new(imgs.clone(), dir, model, copies(l));
    let mut ops = Vec::new();
    let res = (|| -> Result<(), String> {
        while let Some(op) = source(&r.model) {
            ops.push(op.clone());
            r.step(&op)?;
        }
        ops.push(Op::Check);
        r.step(&Op::Check)?;
        if kernel {
            kernel_end(&imgs, dir, &mut r.model, l.name).map_err(|e| format!("[kernel] {e}"))?;
        }
        Ok(())
    })();
    Some(res.map(|()| r.stats.clone()).map_err(|e| (ops, e)))
}

fn replay(l: &'static Layout, ops: &[Op], kernel: bool) -> Option<Result<Stats, (Vec<Op>, String)>> {
    let tmp = tempfile::tempdir().unwrap();
    let mut it = ops.iter().cloned();
    run(l, tmp.path(), |_| it.next(), kernel)
}

/// Run `n` generated ops from `seed`; a failure is minimized and reported
/// with its seed and ops.
fn run_seed(l: &'static Layout, seed: u64, n: usize, check_every: usize, kernel: bool) -> Option<Stats> {
    let tmp = tempfile::tempdir().unwrap();
    let fill = (l.size_mb << 20) * l.devs as u64 / copies(l);
    let cfg =
        GenCfg { cli: true, check_every, crash_one_in: 30, big_write: 40 << 20, fill, gaps: Gaps::from_env(), devs: l.devs, data: l.data };
    let mut g = Gen::new(seed, cfg);
    let mut i = 0;
    let r = run(
        l,
        tmp.path(),
        |m| {
            i += 1;
            (i <= n).then(|| g.next(m))
        },
        kernel,
    )?;
    match r {
        Ok(s) => Some(s),
        Err((ops, msg)) => {
            let kind = kind_of(&msg);
            let full = std::env::temp_dir().join(format!("btrs-model-cli-{}-{seed}.ops", l.name));
            let _ = std::fs::write(&full, format!("# layout {}\n{}", l.name, ops_text(&ops)));
            eprintln!("seed {seed} on {} failed after {} ops (in {}): {msg}", l.name, ops.len(), full.display());
            // Kills land at random moments: only deterministic failures shrink.
            let budget = if ops.iter().any(|o| matches!(o, Op::Crash { .. })) { 60 } else { 200 };
            let kernel = kind.starts_with("[kernel");
            let small = minimize(ops, &mut |c| matches!(replay(l, c, kernel), Some(Err((_, m))) if kind_of(&m) == kind), budget);
            panic!("seed {seed} on layout {} fails: {msg}\nminimized to {} ops:\n{}", l.name, small.len(), ops_text(&small));
        }
    }
}

fn fixed(layout: &str, seed: u64, n: usize, check_every: usize) -> Option<Stats> {
    let l = shared::layout(layout);
    let t = std::time::Instant::now();
    let s = run_seed(l, seed, n, check_every, true)?;
    report(&format!("cli {layout} seed {seed}"), &s, t.elapsed());
    for k in ["write", "truncate", "mkdir", "rm", "mv", "ln", "symlink", "setxattr", "check"] {
        assert!(s.by_op.get(k).copied().unwrap_or(0) > 0, "{layout}: no {k} op ran");
    }
    Some(s)
}

/// Seed 107: its crash ops fall before commands long enough for the kill to
/// land (4 or 5 kills a run here). Seed 101 came to have 2, both on quick
/// commands, once chmod and chown joined the ops: in a busy full-suite run
/// neither landed now and then, and the kill path went unchecked.
#[test]
fn model_cli_single_crc32c_btrs() {
    if let Some(s) = fixed("single-crc32c-16k-btrs", 107, 400, 50) {
        assert!(s.crashes > 0, "no command was killed: {s:?}");
    }
}

#[test]
fn model_cli_raid1_sha256_progs() {
    fixed("raid1-sha256-16k-progs-noholes", 102, 300, 50);
}

#[test]
fn model_cli_raid10_and_raid1c3_4k() {
    fixed("raid10-crc32c-4k-btrs-holes", 103, 220, 55);
    fixed("raid1c3-blake2-4k-progs-holes-fst", 104, 220, 55);
}

#[test]
fn model_cli_kernel_subvols() {
    fixed("kernel-subvols-16k", 105, 300, 50);
}

/// The CLI soak: random seeds for `BTRS_SOAK_SECONDS` (see benches/soak.sh).
#[test]
#[ignore]
fn soak_cli() {
    let secs: u64 = std::env::var("BTRS_SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let base: u64 = std::env::var("BTRS_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0));
    let t = std::time::Instant::now();
    let mut total = Stats::default();
    let mut seeds = 0u64;
    let layouts: Vec<&'static Layout> = LAYOUTS.iter().filter(|l| !l.kernel_init || interop::interop_enabled("soak_cli")).collect();
    while t.elapsed().as_secs() < secs {
        let seed = base.wrapping_add(seeds);
        let l = layouts[(seed % layouts.len() as u64) as usize];
        eprintln!("soak_cli: seed {seed} on {}", l.name);
        if let Some(s) = run_seed(l, seed, 300, 60, false) {
            total.add(&s);
        }
        seeds += 1;
    }
    report(&format!("soak_cli: {seeds} seeds from {base}"), &total, t.elapsed());
    eprintln!("soak_cli: clean: {} ops, {seeds} seeds, {} s", total.ops, t.elapsed().as_secs());
}
