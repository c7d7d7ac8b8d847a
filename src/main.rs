//! The `btrs` binary: parse arguments, call the library, print, set the exit code.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use btrs::cli::{Cli, Command, DeviceCommand};
use btrs::fs::ImagePath;
use btrs::volumes::OpenOptions;
use btrs::Filesystem;
use clap::Parser;

/// `eprintln!` that ignores a failed write: with stderr closed (`2>&1 | head -c 60`)
/// a warning or the error text cannot be shown, and that must not turn into a
/// panic (exit 101) that hides the command's own exit code.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

fn main() -> ExitCode {
    // A write past the file size limit (`ulimit -f`) must fail with EFBIG and
    // be reported like any full disk, not kill the process with SIGXFSZ: a
    // handler that only sets a flag stands in for ignoring the signal.
    let _ = signal_hook::flag::register(signal_hook::consts::SIGXFSZ, std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)));
    let args = match btrs::cli::progs_habits(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(why) => {
            say!("btrs: {why}");
            return ExitCode::from(1);
        }
    };
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e, &args),
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // A closed pipe (e.g. `btrs cat ... | head`) is not an error worth reporting.
            if e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)) {
                return ExitCode::SUCCESS;
            }
            say!("btrs: error: {}", error_text(&e));
            ExitCode::from(if e.chain().any(|c| c.is::<Usage>()) { 2 } else { 1 })
        }
    }
}

/// A bar over bytes done of a total on stderr, when `wanted` and stderr is a
/// terminal (mkfs --rootdir, put).
fn bytes_bar(wanted: bool) -> Option<indicatif::ProgressBar> {
    (wanted && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}") {
            b.set_style(style);
        }
        b
    })
}

/// The set the global options name, with the images after the first of a
/// command's positionals as more devices (`btrs scrub a.img b.img`).
fn with_images(mut set: Set, images: &[std::path::PathBuf]) -> anyhow::Result<(&std::path::Path, Set)> {
    let (image, more) = images.split_first().context("an image is needed")?;
    set.devices.extend(more.iter().cloned());
    Ok((image, set))
}

/// Paths inside the image as the shell gave them (bytes, UTF-8 or not).
fn image_paths(args: &[std::ffi::OsString]) -> Vec<ImagePath<'_>> {
    args.iter().map(ImagePath::from).collect()
}

/// A path the filesystem lacks that is an image file on the host: the user
/// meant another device of the set (`btrs ls a.img b.img`), which goes with
/// --device.
fn device_hint<T, E: Into<anyhow::Error>>(r: Result<T, E>, path: &std::ffi::OsStr) -> anyhow::Result<T> {
    r.map_err(|e| {
        let e = e.into();
        if btrs::volumes::has_btrfs_magic(std::path::Path::new(path)) {
            let path = ImagePath::from(path);
            e.context(format!("{path} is a btrfs image on the host, not a path in this filesystem: other devices go with --device {path}"))
        } else {
            e
        }
    })
}

/// clap's error, with its tip for an unknown option that might have been a
/// value (`to pass '-R' as a value, use '-- -R'`) said as what it is: the
/// option does not exist here, and only a path that starts with '-' goes
/// after `--`.
fn usage_error(e: clap::Error, args: &[std::ffi::OsString]) -> ExitCode {
    let text = e.render().to_string();
    // clap names no argument here. Paths may be any bytes, so the first
    // argument that is not UTF-8 need not be the one: the culprit is the one
    // whose replacement by text makes the complaint go away.
    if e.kind() == clap::error::ErrorKind::InvalidUtf8 {
        let culprit = args.iter().enumerate().filter(|(_, a)| a.to_str().is_none()).find(|&(i, _)| {
            let mut t = args.to_vec();
            t[i] = "x".into();
            !matches!(Cli::try_parse_from(&t), Err(e) if e.kind() == clap::error::ErrorKind::InvalidUtf8)
        });
        if let Some((_, bad)) = culprit {
            say!(
                "btrs: argument \"{}\" is not valid UTF-8: this value is taken as text \
                 (paths inside an image and image file names may be any bytes)",
                ImagePath::from(bad)
            );
            return ExitCode::from(2);
        }
    }
    // An extra positional that is a btrfs image: another device of the set.
    if e.kind() == clap::error::ErrorKind::UnknownArgument {
        if let Some(clap::error::ContextValue::String(arg)) = e.get(clap::error::ContextKind::InvalidArg) {
            if btrs::volumes::has_btrfs_magic(std::path::Path::new(arg)) {
                let tip = format!("  tip: {arg} is a btrfs image: other devices of the filesystem go with --device {arg}\n\n");
                let at = text.find("\nUsage:").map_or(text.len(), |n| n + 1);
                eprint!("{}{tip}{}", &text[..at], &text[at..]);
                return ExitCode::from(2);
            }
        }
    }
    let Some(at) = text.find("  tip: to pass '") else { e.exit() };
    let end = text[at..].find('\n').map_or(text.len(), |n| at + n);
    let arg = text[at..end].split('\'').nth(1).unwrap_or("");
    let tip = format!("  tip: {arg} is not an option of this command; a path or name that starts with '-' goes after '--' (`-- {arg}`)");
    eprint!("{}{tip}{}", &text[..at], &text[end..]);
    ExitCode::from(2)
}

/// An option value that does not parse: exit 2, like clap's usage errors.
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

fn usage<T, E: std::fmt::Display>(r: Result<T, E>) -> anyhow::Result<T> {
    r.map_err(|e| anyhow::Error::new(Usage(e.to_string())))
}

/// The error and its causes, each once: library errors already spell out
/// their cause, so a cause whose text is already shown is skipped.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if text.contains(&c) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&c);
    }
    text
}

/// The device set the global options name.
struct Set {
    devices: Vec<std::path::PathBuf>,
    degraded: bool,
    accept_lagging: bool,
}

impl Set {
    fn options(&self, image: &std::path::Path, writable: bool) -> OpenOptions {
        OpenOptions {
            image: image.to_path_buf(),
            devices: self.devices.clone(),
            degraded: self.degraded,
            accept_lagging: self.accept_lagging,
            writable,
            alongside_writer: false,
            divergent_ok: false,
            replacement: None,
            added: Vec::new(),
        }
    }
}

fn open(set: &Set, image: &std::path::Path) -> anyhow::Result<Filesystem> {
    // Listing, reading and dumping see the last committed state even while a
    // btrs writer works on the images.
    let opts = OpenOptions { alongside_writer: true, ..set.options(image, false) };
    Filesystem::open(&opts).with_context(|| format!("cannot open {}", image.display()))
}

fn warn_all(warnings: Vec<String>) {
    for w in warnings {
        say!("btrs: warning: {w}");
    }
}

fn print_warnings(fs: &Filesystem) {
    for w in fs.take_warnings() {
        say!("btrs: warning: {}", w.0);
    }
}

/// Standard output, naming itself in its errors (a full disk or /dev/full
/// would otherwise say only "No space left on device").
struct Stdout<W>(W);

impl<W: Write> Write for Stdout<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).map_err(named_stdout)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().map_err(named_stdout)
    }
}

fn named_stdout(e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("<stdout>: write: {e}"))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(Stdout(stdout.lock()));
    let set = Set { devices: cli.devices.clone(), degraded: cli.degraded, accept_lagging: cli.accept_lagging };
    match cli.command {
        Command::DumpSuper(a) => {
            let dev = btrs::volumes::Device::open_locked(&a.image, btrs::volumes::guard::Lock::SharedIfFree)
                .or_else(|_| btrs::volumes::Device::open_raw(&a.image))?;
            use btrs::ops::dump::Copies;
            let copies = match (a.all, a.super_copy) {
                (true, _) => Copies::All,
                (false, Some(n)) => Copies::Mirror(usize::from(n)),
                (false, None) => Copies::Primary,
            };
            let r = btrs::ops::dump::dump_super(&mut out, &dev, copies, a.json, a.force);
            out.flush()?;
            r?;
        }
        Command::DumpTree(a) => {
            let (image, mut set) = with_images(set, &a.images)?;
            if a.noscan && set.devices.is_empty() {
                // Named devices are all that is opened; the image alone names itself.
                set.devices.push(image.to_path_buf());
            }
            let mut seen = std::collections::BTreeSet::new();
            for b in &a.blocks {
                if !seen.insert(*b) {
                    say!("btrs: warning: tree block bytenr {b} is given twice, printed once");
                }
            }
            let fs = open(&set, image)?;
            let opts = btrs::ops::dump::DumpTreeOptions {
                tree: a.tree,
                blocks: a.blocks,
                follow: a.follow,
                order: if a.dfs { btrs::ops::dump::Traversal::DepthFirst } else { btrs::ops::dump::Traversal::BreadthFirst },
                extents_only: a.extents,
                device_only: a.device,
                uuid_only: a.uuid,
                roots_only: a.roots || a.backups,
                backups: a.backups,
                csum_headers: a.csum_headers,
                csum_items: a.csum_items,
                hide_names: a.hide_names,
            };
            let r = btrs::ops::dump::dump_tree_with(&mut out, &fs, &opts);
            out.flush()?;
            print_warnings(&fs);
            r?;
        }
        Command::Ls(a) => {
            use btrs::ops::quoting::Quoting;
            // As ls: the last of -b, -N and --quoting-style counts (clap keeps
            // only it); without them,
            // shell-escape on a terminal, the bytes as they are elsewhere.
            let quoting = match (a.quoting_style.as_deref(), a.escape, a.literal) {
                (_, true, _) => Quoting::Escape,
                (_, _, true) => Quoting::Literal,
                (Some("escape"), ..) => Quoting::Escape,
                (Some("shell-escape"), ..) => Quoting::ShellEscape,
                (Some(_), ..) => Quoting::Literal,
                (None, ..) if std::io::stdout().is_terminal() => Quoting::ShellEscape,
                (None, ..) => Quoting::Literal,
            };
            let fs = open(&set, &a.image)?;
            let opts = btrs::ops::listing::LsOptions {
                long: a.long,
                recursive: a.recursive,
                human: a.human_readable,
                unsorted: a.unsorted,
                quoting,
            };
            let r = btrs::ops::listing::ls(&fs, &a.path, &opts, &mut out);
            print_warnings(&fs);
            device_hint(r, &a.path)?;
        }
        Command::Cat(a) => {
            let fs = open(&set, &a.image)?;
            let r = cat(&fs, ImagePath::from(&a.path), &mut out);
            print_warnings(&fs);
            device_hint(r, &a.path)?;
        }
        Command::Extract(a) => {
            let fs = open(&set, &a.image)?;
            let (src, dest) = match a.paths.as_slice() {
                [dest] => (ImagePath::from("/"), std::path::Path::new(dest)),
                [src, dest] => (ImagePath::from(src), std::path::Path::new(dest)),
                _ => anyhow::bail!("extract takes [PATH] DEST"),
            };
            // `btrs extract IMG /` reads as "the image's root" but names the
            // host's: merging an image into the running system is never what
            // a single argument means.
            if std::fs::canonicalize(dest).is_ok_and(|p| p == std::path::Path::new("/")) {
                return Err(anyhow::Error::new(Usage(format!(
                    "extract: DEST {} is the host's root directory; to extract the image's root, \
                     name a destination too: btrs extract IMAGE / DEST",
                    dest.display()
                ))));
            }
            // On a terminal: files and bytes so far (the total is not known before the walk).
            let bar = std::io::stderr().is_terminal().then(|| {
                let b = indicatif::ProgressBar::new_spinner();
                if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {bytes} {binary_bytes_per_sec} {msg}") {
                    b.set_style(style);
                }
                b.enable_steady_tick(std::time::Duration::from_millis(200));
                b
            });
            let tick = |s: &btrs::ops::extract::ExtractStats| {
                if let Some(b) = &bar {
                    b.set_position(s.bytes);
                    b.set_message(format!("{} files", s.files));
                }
            };
            let xopts = btrs::ops::extract::ExtractOptions { overwrite: a.overwrite, progress: Some(&tick) };
            let r = btrs::ops::extract::extract_with(&fs, src, dest, &xopts);
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            print_warnings(&fs);
            let stats = r?;
            // The same warning for every file (owners without root) would
            // bury the rest: the first few, then a count.
            const WARNED: usize = 5;
            for s in stats.skipped.iter().take(WARNED) {
                say!("btrs: warning: not applied: {s}");
            }
            if stats.skips > WARNED as u64 {
                say!("btrs: warning: ... and {} more not applied", stats.skips - WARNED as u64);
            }
            say!(
                "extracted {} files ({} bytes), {} directories, {} symlinks, {} special files, {} hardlinks",
                stats.files,
                stats.bytes,
                stats.dirs,
                stats.symlinks,
                stats.special,
                stats.hardlinks
            );
            if stats.failures > 0 {
                const SHOWN: usize = 50;
                let n = stats.failures;
                say!("btrs: error: {n} {} could not be extracted:", if n == 1 { "entry" } else { "entries" });
                for f in stats.failed.iter().take(SHOWN) {
                    say!("  {f}");
                }
                if n > SHOWN as u64 {
                    say!("  ... and {} more", n - SHOWN as u64);
                }
                return Ok(ExitCode::from(1));
            }
        }
        Command::Scrub(a) => {
            let (image, set) = with_images(set, &a.images)?;
            let open = set.options(image, false);
            let opts = btrs::ops::scrub::ScrubOptions {
                repair: a.repair,
                prefer_mirror: a.prefer_mirror.map(|n| n as usize),
                threads: a.threads.unwrap_or(0),
                progress: !a.no_progress,
                fix_csum: a.fix_csum,
            };
            let report = match btrs::ops::scrub::scrub(&open, &opts) {
                // Known only once the images are open, but the caller's mistake all the same.
                Err(btrs::Error::Invalid(m)) if m.starts_with("--prefer-mirror") => return Err(anyhow::Error::new(Usage(m))),
                r => r.with_context(|| format!("cannot scrub {}", image.display()))?,
            };
            for w in &report.warnings {
                say!("btrs: warning: {w}");
            }
            if a.json {
                report.write_json(&mut out)?;
            } else {
                report.write_text(&mut out, a.raw)?;
            }
            out.flush()?;
            // 3: something wrong remains on the images (like btrfs scrub's uncorrectable errors).
            return Ok(if report.clean() { ExitCode::SUCCESS } else { ExitCode::from(3) });
        }
        Command::Replace(a) => {
            let open = set.options(&a.image, false);
            let r = btrs::ops::replace::replace(&open, a.devid, &a.new, a.wipe_stale, !a.no_progress)
                .with_context(|| format!("cannot replace devid {} of {}", a.devid, a.image.display()))?;
            if r.other_device_findings > 0 {
                say!(
                    "btrs: warning: scrub found {} problem(s) on the other devices, left as they are (replace only reads them); \
                     `btrs scrub --repair` fixes what has a good copy",
                    r.other_device_findings
                );
            }
            if a.json {
                json(&mut out, &r)?;
            } else {
                writeln!(
                    out,
                    "rebuilt devid {} (device uuid {}) onto {}: {} copies written ({} bytes of data, {} bytes of metadata scrubbed)",
                    r.devid,
                    r.device_uuid,
                    r.image.display(),
                    r.copies_written,
                    r.data_bytes,
                    r.tree_bytes
                )?;
                if r.unreadable_sectors > 0 {
                    writeln!(out, "{} data sectors fail their checksum on every copy, as before (see `btrs scrub`)", r.unreadable_sectors)?;
                }
                if let Some(old) = &r.superseded {
                    writeln!(out, "the stale image {} is no device of the set any more: its superblocks were wiped", old.display())?;
                }
            }
        }
        Command::Resize(a) => {
            let open = set.options(&a.image, true);
            let r = moving(!a.no_progress, |p| btrs::ops::resize::resize(&open, &a.size, p))
                .with_context(|| format!("cannot resize {}", a.image.display()))?;
            if a.json {
                json(&mut out, &r)?;
            } else if r.old_size == r.new_size {
                writeln!(out, "devid {} ({}) is {} bytes already", r.devid, r.image.display(), r.new_size)?;
            } else {
                writeln!(out, "resized devid {} ({}) from {} to {} bytes", r.devid, r.image.display(), r.old_size, r.new_size)?;
                if r.moved.chunks_moved > 0 {
                    writeln!(out, "{} chunks moved below the new end, {} bytes copied", r.moved.chunks_moved, r.moved.bytes_copied)?;
                }
            }
        }
        Command::Device(DeviceCommand::Add(a)) => {
            let open = set.options(&a.image, true);
            let added =
                btrs::ops::device::add(&open, &a.new, a.size).with_context(|| format!("cannot add devices to {}", a.image.display()))?;
            if a.json {
                json(&mut out, &added)?;
            } else {
                for d in &added {
                    writeln!(out, "added devid {} ({}, device uuid {}, {} bytes)", d.devid, d.image.display(), d.device_uuid, d.size)?;
                }
            }
        }
        Command::Device(DeviceCommand::Remove(a)) => {
            let open = set.options(&a.image, true);
            let r = moving(!a.no_progress, |p| btrs::ops::device::remove(&open, &a.device, p))
                .with_context(|| format!("cannot remove device {} from {}", a.device, a.image.display()))?;
            if a.json {
                json(&mut out, &r)?;
            } else {
                writeln!(
                    out,
                    "removed devid {} ({}): {} chunks moved, {} bytes copied",
                    r.devid,
                    r.image.display(),
                    r.moved.chunks_moved,
                    r.moved.bytes_copied
                )?;
            }
        }
        Command::Balance(a) => {
            let open = set.options(&a.image, true);
            let r = moving(!a.no_progress, |p| btrs::ops::balance::convert(&open, &a.convert, p))
                .with_context(|| format!("cannot balance {}", a.image.display()))?;
            if a.json {
                json(&mut out, &r)?;
            } else {
                writeln!(out, "{} chunks converted, {} bytes copied", r.chunks_moved, r.bytes_copied)?;
                if r.repaired > 0 {
                    writeln!(out, "{} copies failed their check and were taken from another copy", r.repaired)?;
                }
            }
        }
        Command::Subvolume(c) => subvolume(&set, c, &mut out)?,
        Command::Filesystem(c) => {
            use btrs::cli::FilesystemCommand as F;
            use btrs::ops::filesystem as fsops;
            match c {
                F::Show(a) => {
                    let fs = open(&set, &a.image)?;
                    let s = fsops::show(&fs)?;
                    if a.json {
                        json(&mut out, &s)?;
                    } else {
                        fsops::print_show(&s, a.raw, &mut out)?;
                    }
                    print_warnings(&fs);
                }
                F::Usage(a) => {
                    let fs = open(&set, &a.image)?;
                    let u = fsops::usage(&fs)?;
                    if a.json {
                        json(&mut out, &u)?;
                    } else {
                        fsops::print_usage(&u, a.raw, &mut out)?;
                    }
                    print_warnings(&fs);
                }
                F::Df(a) => {
                    let fs = open(&set, &a.image)?;
                    let rows = fsops::df(&fs)?;
                    if a.json {
                        json(&mut out, &rows)?;
                    } else {
                        fsops::print_df(&rows, a.raw, &mut out)?;
                    }
                    print_warnings(&fs);
                }
            }
        }
        Command::Chattr(a) => {
            let (_, w) = btrs::ops::write::chattr(&wopts(&set, &a.image), &a.path, &a.mode)
                .with_context(|| format!("cannot change the flags of {} in {}", ImagePath::from(&a.path), a.image.display()))?;
            warn_all(w);
        }
        Command::Lsattr(a) => {
            let fs = open(&set, &a.image)?;
            for p in &a.paths {
                let e = fs.resolve(p)?;
                // lsattr writes names as the bytes they are.
                let list: Vec<(Vec<u8>, btrs::fs::InodeId)> = if e.file_type == btrs::format::FileType::Directory && !a.directory {
                    let mut dir = p.as_encoded_bytes().to_vec();
                    while dir.last() == Some(&b'/') {
                        dir.pop();
                    }
                    fs.read_dir(e.id)?.into_iter().map(|d| ([&dir[..], b"/", &d.name].concat(), d.id)).collect()
                } else {
                    vec![(p.as_encoded_bytes().to_vec(), e.id)]
                };
                for (path, id) in list {
                    let flags = fs.inode(id)?.flags;
                    write!(out, "{} ", btrs::fs::txn::lsattr_string(flags))?;
                    out.write_all(&path)?;
                    writeln!(out)?;
                }
            }
            print_warnings(&fs);
        }
        Command::Property(c) => property(&set, c, &mut out)?,
        Command::Mkfs(a) => mkfs(*a, &mut out)?,
        Command::Fixture(a) => fixture(a, &mut out)?,
        Command::Write(a) => write_cmd(&set, a, &mut out)?,
        Command::Mkdir(a) => warn_all(btrs::ops::write::mkdir_mode(&wopts(&set, &a.image), &a.path, a.parents, a.mode)?),
        Command::Rm(a) => warn_all(btrs::ops::write::rm_forced(&wopts(&set, &a.image), &image_paths(&a.paths), a.recursive, a.force)?),
        Command::Chmod(a) => {
            let umask = current_umask();
            warn_all(btrs::ops::write::chmod(&wopts(&set, &a.image), &image_paths(&a.paths), &|old| a.mode.apply(old, umask))?)
        }
        Command::Chown(a) => {
            let change = btrs::fs::txn::SetAttr { uid: a.owner.0, gid: a.owner.1, chown: true, ..Default::default() };
            warn_all(btrs::ops::write::set_attr(&wopts(&set, &a.image), &image_paths(&a.paths), &change)?)
        }
        Command::Touch(a) => {
            let t = Some(a.date.unwrap_or(btrs::fs::txn::TimeSet::Now));
            let both = !a.access && !a.modification;
            let change = btrs::fs::txn::SetAttr {
                atime: if both || a.access { t } else { None },
                mtime: if both || a.modification { t } else { None },
                ..Default::default()
            };
            warn_all(btrs::ops::write::touch(&wopts(&set, &a.image), &image_paths(&a.paths), &change, a.no_create)?)
        }
        Command::Truncate(a) => warn_all(btrs::ops::write::truncate(&wopts(&set, &a.image), &image_paths(&a.paths), a.size, a.no_create)?),
        // As coreutils: each path on its own, a bad one named and the rest
        // printed; exit 1 when any failed.
        Command::Stat(a) => {
            let fs = open(&set, &a.image)?;
            let mut all = Vec::with_capacity(a.paths.len());
            let mut failed = false;
            for p in &a.paths {
                match btrs::ops::stat::stat(&fs, p) {
                    Ok(s) if a.json => all.push(s),
                    Ok(s) => btrs::ops::stat::print_stat(&s, &mut out)?,
                    Err(e) => {
                        say!("btrs: error: cannot stat {}: {e}", ImagePath::from(p));
                        failed = true;
                    }
                }
            }
            if a.json {
                json(&mut out, &all)?;
            }
            print_warnings(&fs);
            if failed {
                out.flush()?;
                return Ok(ExitCode::from(1));
            }
        }
        Command::Readlink(a) => {
            let fs = open(&set, &a.image)?;
            let mut failed = false;
            for p in &a.paths {
                match btrs::ops::stat::readlink(&fs, p) {
                    Ok(t) => {
                        out.write_all(&t)?;
                        out.write_all(b"\n")?;
                    }
                    Err(e) => {
                        say!("btrs: error: {e}");
                        failed = true;
                    }
                }
            }
            print_warnings(&fs);
            if failed {
                out.flush()?;
                return Ok(ExitCode::from(1));
            }
        }
        Command::Getfattr(a) => {
            if !getfattr(&set, a, &mut out)? {
                out.flush()?;
                return Ok(ExitCode::from(1));
            }
        }
        Command::Mv(a) => warn_all(btrs::ops::write::mv(&wopts(&set, &a.image), &a.src, &a.dst)?),
        Command::Ln(a) => warn_all(btrs::ops::write::ln(&wopts(&set, &a.image), &a.target, &a.link, a.symbolic)?),
        Command::Setfattr(a) => {
            let v = match (a.remove, &a.value) {
                (true, _) => None,
                (false, None) => Some(Vec::new()),
                (false, Some(v)) => Some(usage(btrs::ops::stat::decode_value(v))?),
            };
            warn_all(btrs::ops::write::setfattr(&wopts(&set, &a.image), &a.path, a.name.as_encoded_bytes(), v.as_deref())?)
        }
        Command::Put(a) => {
            let (dest, srcs) = a.paths.split_last().ok_or_else(|| anyhow::anyhow!("need SRC... DEST"))?;
            let dest = ImagePath::from(dest.as_os_str());
            // On a terminal: a bar over the data bytes to copy.
            let bar = bytes_bar(true);
            let tick = |done: u64, total: u64| {
                if let Some(b) = &bar {
                    b.set_length(total);
                    b.set_position(done.min(total));
                }
            };
            let r = btrs::ops::put::put_with_progress(&wopts(&set, &a.image), srcs, dest, &tick);
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            let (n, warnings) = r?;
            warn_all(warnings);
            writeln!(out, "copied {n} files")?;
        }
        Command::Completions(a) => {
            // clap_complete panics when its writer fails (a closed pipe):
            // generate into memory, then write like any other output.
            let mut cmd = btrs::cli::command();
            let mut buf = Vec::new();
            clap_complete::generate(a.shell, &mut cmd, "btrs", &mut buf);
            out.write_all(&buf)?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `value` as pretty JSON and a newline.
/// The process's umask (symbolic chmod clauses naming no class leave its bits alone).
fn current_umask() -> u32 {
    let old = rustix::process::umask(rustix::fs::Mode::empty());
    rustix::process::umask(old);
    old.bits()
}

/// `btrs getfattr`: getfattr's output, per path a `# file:` block; false
/// when an attribute asked for by name was missing (named on stderr, exit
/// 1, as getfattr does).
fn getfattr(set: &Set, a: btrs::cli::GetfattrArgs, out: &mut dyn Write) -> anyhow::Result<bool> {
    use btrs::ops::stat::{encode_value, xattrs_matching};
    let fs = open(set, &a.image)?;
    let pattern = match (&a.name, a.r#match.as_deref()) {
        (Some(_), _) | (None, Some("-")) => None,
        (None, p) => {
            let p = p.unwrap_or(r"^user\.");
            Some(usage(regex_lite::Regex::new(p).map_err(|e| format!("-m {p:?}: not a regular expression: {e}")))?)
        }
    };
    let mut missing = false;
    for p in &a.paths {
        let mut found = xattrs_matching(&fs, p, pattern.as_ref())?;
        if let Some(n) = &a.name {
            found.retain(|(k, _)| k == n.as_encoded_bytes());
            if found.is_empty() {
                eprintln!("btrs: {}: {}: No such attribute", ImagePath::from(p), ImagePath::from(n));
                missing = true;
                continue;
            }
        }
        if a.only_values {
            for (_, v) in &found {
                out.write_all(v)?;
            }
            continue;
        }
        if found.is_empty() {
            continue;
        }
        let mut shown = p.as_encoded_bytes();
        while !a.absolute_names && shown.first() == Some(&b'/') {
            shown = &shown[1..];
        }
        let shown = if shown.is_empty() { b"." } else { shown };
        out.write_all(b"# file: ")?;
        out.write_all(&btrs::ops::stat::attr_quote(shown, b""))?;
        writeln!(out)?;
        for (k, v) in &found {
            out.write_all(&btrs::ops::stat::attr_quote(k, b"="))?;
            if a.dump || a.name.is_some() {
                out.write_all(b"=")?;
                out.write_all(&encode_value(v, a.encoding))?;
            }
            writeln!(out)?;
        }
        writeln!(out)?;
    }
    print_warnings(&fs);
    Ok(!missing)
}

fn json(out: &mut dyn Write, value: &impl serde::Serialize) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Run a job that moves chunks, with a progress bar on a terminal unless not `wanted`.
fn moving<T>(wanted: bool, job: impl FnOnce(&mut dyn FnMut(btrs::fs::txn::MoveEvent<'_>)) -> btrs::Result<T>) -> btrs::Result<T> {
    let mut bar = Moving::new(wanted);
    let r = job(&mut |e| bar.tick(e));
    bar.done();
    r
}

/// Progress of chunk moves on a terminal: a bar over the used bytes of
/// the chunks planned to move, with what moved so far.
struct Moving {
    bar: Option<indicatif::ProgressBar>,
    chunks: u64,
    bytes: u64,
}

impl Moving {
    fn new(wanted: bool) -> Moving {
        use std::io::IsTerminal;
        let bar = (wanted && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(0);
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {wide_msg}")
            {
                b.set_style(style);
            }
            b.enable_steady_tick(std::time::Duration::from_millis(200));
            b
        });
        Moving { bar, chunks: 0, bytes: 0 }
    }

    fn tick(&mut self, e: btrs::fs::txn::MoveEvent<'_>) {
        use btrs::fs::txn::MoveEvent;
        let Some(b) = &self.bar else { return };
        match e {
            // A later round (resize min) plans again: what is left is added.
            MoveEvent::Planned { chunks, used } => {
                b.set_length(b.position().saturating_add(used));
                b.set_message(format!("{chunks} chunks to move"));
            }
            MoveEvent::Handled(n) => b.inc(n),
            MoveEvent::Moved(c) => {
                self.chunks += 1;
                self.bytes += c.bytes_copied;
                b.set_message(format!(
                    "{} chunks moved, {} MiB written (last: {} MiB chunk at {}, {} -> {})",
                    self.chunks,
                    self.bytes >> 20,
                    c.length >> 20,
                    c.logical,
                    c.from,
                    c.to
                ));
            }
        }
    }

    fn done(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn cat(fs: &Filesystem, path: ImagePath<'_>, out: &mut dyn Write) -> anyhow::Result<()> {
    let ent = fs.resolve(path)?;
    let ino = fs.inode(ent.id)?;
    if ino.file_type != btrs::format::FileType::Regular {
        anyhow::bail!("{path}: not a regular file");
    }
    let zeros = vec![0u8; 1 << 16];
    fs.read_file_as(&ino, &path.to_string(), &mut |chunk| {
        match chunk {
            btrs::fs::FileChunk::Data { data, .. } => out.write_all(data),
            btrs::fs::FileChunk::Hole { mut len, .. } => {
                let mut r = Ok(());
                while len > 0 && r.is_ok() {
                    let n = len.min(zeros.len() as u64) as usize;
                    r = out.write_all(&zeros[..n]);
                    len -= n as u64;
                }
                r
            }
        }
        .map_err(|e| btrs::Error::io("<stdout>", "write", e))
    })?;
    Ok(())
}

/// `btrs mkfs`: turn the arguments into `MkfsOptions`, run it, print the summary.
fn mkfs(a: btrs::cli::MkfsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    use btrs::ops::mkfs as m;
    let mut o = m::MkfsOptions::new(a.images);
    o.size = usage(a.size.as_deref().map(m::parse_size).transpose())?;
    let profile = |s: &Option<String>, what: &str| -> anyhow::Result<Option<btrs::format::Profile>> {
        match s {
            None => Ok(None),
            Some(s) => btrs::format::Profile::from_name(s)
                .map(Some)
                .with_context(|| format!("unknown {what} profile {s:?}; use single, dup, raid0, raid1, raid1c3, raid1c4 or raid10")),
        }
    };
    o.data_profile = usage(profile(&a.data, "data"))?;
    o.metadata_profile = usage(profile(&a.metadata, "metadata"))?;
    o.csum = usage(
        btrs::format::CsumType::from_name(&a.csum)
            .ok_or_else(|| format!("unknown checksum type {:?}; use crc32c, xxhash, sha256 or blake2", a.csum)),
    )?;
    o.nodesize = usage(
        m::parse_size(&a.nodesize)
            .map_err(|e| e.to_string())
            .and_then(|n| u32::try_from(n).map_err(|_| format!("--nodesize {}: too large (4K..64K)", a.nodesize))),
    )?;
    o.sectorsize = usage(
        m::parse_size(&a.sectorsize)
            .map_err(|e| e.to_string())
            .and_then(|n| u32::try_from(n).map_err(|_| format!("--sectorsize {}: too large (4096)", a.sectorsize))),
    )?;
    o.label = a.label;
    o.fsid = match &a.uuid {
        Some(u) => Some(
            *usage(uuid::Uuid::parse_str(u).map_err(|e| format!("bad UUID {u:?}: {e}")).and_then(|id| {
                if id.is_nil() {
                    Err(format!("--uuid {u}: the nil UUID names no filesystem"))
                } else {
                    Ok(id)
                }
            }))?
            .as_bytes(),
        ),
        None => None,
    };
    if a.mixed {
        anyhow::bail!("mixed block groups (-M) are not made by btrs: data and metadata get block groups of their own");
    }
    let mut features = a.features.clone();
    if let Some(r) = &a.runtime_features {
        for f in r.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            match f.to_ascii_lowercase().as_str() {
                "free-space-tree" | "fst" | "^free-space-tree" | "^fst" => {
                    features = Some(match features {
                        Some(o) => format!("{o},{f}"),
                        None => f.to_string(),
                    });
                }
                "quota" | "squota" => anyhow::bail!("-R {f}: btrs does not make quota trees at mkfs time; enable quotas on a mount"),
                _ => return usage(Err(format!("-R {f:?}: unknown runtime feature; known: free-space-tree, quota"))),
            }
        }
    }
    if let Some(f) = &features {
        // An unknown name is a usage error; a combination btrs refuses is not.
        // A combination no image could have (block-group-tree without
        // free-space-tree) is a usage error too; one btrs does not make is not.
        o.features = match o.features.with(&usage(m::parse_features(f))?) {
            Err(btrs::Error::Invalid(e)) => return Err(anyhow::Error::new(Usage(e))),
            r => r?,
        };
    }
    o.force = a.force;
    o.rootdir = a.rootdir;
    o.rootdir_tar = a.rootdir_tar;
    for c in &a.compress {
        match usage(m::parse_compress_arg(c))? {
            (Some(path), algo) => o.compress_paths.push((path, algo)),
            (None, algo) if o.compress.is_none() => o.compress = algo,
            (None, _) => return usage(Err(format!("--compress {c:?}: only one --compress may go without a PATH"))),
        }
    }
    o.subvols = usage(a.subvols.iter().map(btrs::ops::rootdir::SubvolSpec::parse).collect::<btrs::Result<_>>())?;
    o.inode_flags = usage(a.inode_flags.iter().map(m::parse_inode_flags).collect::<btrs::Result<_>>())?;
    o.timestamp = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => Some(v.trim().parse().with_context(|| format!("bad SOURCE_DATE_EPOCH {v:?}"))?),
        _ => None,
    };
    // SOURCE_DATE_EPOCH asks for a reproducible image: host atimes and ctimes are
    // replaced by it and newer mtimes clamped to it.
    o.clamp_times = o.timestamp.is_some();
    o.shrink = a.shrink;
    o.offset = usage(m::parse_size(&a.offset))?;
    o.threads = a.threads;
    o.slack = usage(a.slack.as_deref().map(m::parse_slack).transpose())?;
    o.ownership.all_root = a.all_root;
    o.ownership.owner_map = usage(a.owner_map.iter().map(|s| btrs::ops::rootdir::IdMap::parse(s)).collect::<btrs::Result<_>>())?;
    if let Some(p) = &a.manifest {
        let text = std::fs::read_to_string(p).with_context(|| format!("read --manifest {}", p.display()))?;
        o.ownership.manifest = btrs::ops::rootdir::parse_manifest(&text).with_context(|| format!("--manifest {}", p.display()))?;
    }
    // Values no image could make work are usage errors (exit 2), told before any image is read.
    usage(m::check_options(&o))?;
    if a.print_size {
        let r = m::print_size(&o)?;
        if a.json {
            serde_json::to_writer_pretty(&mut *out, &r)?;
            writeln!(out)?;
        } else {
            for d in &r.images {
                writeln!(out, "{}", d.size)?;
            }
        }
        return Ok(());
    }
    // A bar on a terminal while --rootdir data is written.
    let bar = bytes_bar((o.rootdir.is_some() || o.rootdir_tar.is_some()) && !a.json);
    if let Some(b) = &bar {
        let b = b.clone();
        o.progress = m::Progress(Some(std::sync::Arc::new(move |done, total| {
            b.set_length(total);
            b.set_position(done);
        })));
    }
    let s = m::mkfs(&o);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let s = s?;
    for w in &s.warnings {
        say!("btrs: warning: {w}");
    }
    if a.json {
        serde_json::to_writer_pretty(&mut *out, &s)?;
        writeln!(out)?;
        return Ok(());
    }
    if a.quiet {
        return Ok(());
    }
    writeln!(out, "Label:              {}", if s.label.is_empty() { "(null)" } else { &s.label })?;
    writeln!(out, "UUID:               {}", s.fsid)?;
    writeln!(out, "Node size:          {}", s.nodesize)?;
    writeln!(out, "Sector size:        {}", s.sectorsize)?;
    // mkfs.btrfs's summary, in its units (--json has the bytes).
    let size = btrs::ops::filesystem::pretty_size;
    writeln!(out, "Filesystem size:    {}", size(s.total_bytes))?;
    writeln!(out, "Block group profiles:")?;
    let mut kinds: Vec<(&str, &str, u64)> = Vec::new();
    for kind in ["data", "metadata", "system"] {
        for c in s.chunks.iter().filter(|c| c.kind == kind) {
            match kinds.iter_mut().find(|k| k.0 == c.kind) {
                Some(k) => k.2 += c.length,
                None => kinds.push((c.kind, c.profile.as_str(), c.length)),
            }
        }
    }
    for (kind, profile, len) in kinds {
        let kind = format!("{}{}:", kind[..1].to_ascii_uppercase(), &kind[1..]);
        let profile = btrs::format::Profile::from_name(profile).map_or(profile.to_string(), |p| p.flags_name());
        writeln!(out, "  {kind:<18}{profile:<8}{:>17}", size(len))?;
    }
    let runtime = ["free-space-tree", "quota"];
    let (rt, incompat): (Vec<&str>, Vec<&str>) = s.features.iter().copied().partition(|f| runtime.contains(f));
    let join = |v: &[&str]| if v.is_empty() { "-".to_string() } else { v.join(", ") };
    writeln!(out, "Incompat features:  {}", join(&incompat))?;
    writeln!(out, "Runtime features:   {}", join(&rt))?;
    writeln!(out, "Checksum:           {}", s.csum)?;
    writeln!(out, "Number of devices:  {}", s.devices.len())?;
    writeln!(out, "Devices:")?;
    writeln!(out, "   ID        SIZE  PATH")?;
    for d in &s.devices {
        writeln!(out, "{:>5}{:>12}  {}", d.devid, size(d.size), d.path)?;
    }
    if let Some(r) = &s.rootdir {
        writeln!(
            out,
            "Rootdir:            {} files ({} bytes), {} directories, {} symlinks, {} special, {} hardlinks",
            r.files, r.data_bytes, r.dirs, r.symlinks, r.special, r.hardlinks
        )?;
        if !r.subvolumes.is_empty() {
            writeln!(out, "Subvolumes:")?;
            writeln!(out, "   ID  PARENT  FLAGS        PATH")?;
            for sv in &r.subvolumes {
                let flags = [(sv.readonly, "ro"), (sv.default, "default")].iter().filter(|f| f.0).map(|f| f.1).collect::<Vec<_>>();
                let flags = if flags.is_empty() { "-".to_string() } else { flags.join(",") };
                writeln!(out, "  {:>3}  {:>6}  {flags:<11}  {}", sv.id, sv.parent, sv.path)?;
            }
        }
    }
    Ok(())
}

/// `btrs fixture list | NAME DIR`.
fn fixture(a: btrs::cli::FixtureArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    use btrs::ops::fixture as f;
    if a.name == "list" {
        if let Some(extra) = &a.dir {
            return Err(anyhow::Error::new(Usage(format!("fixture list takes no DIR (got {})", extra.display()))));
        }
        for (name, desc) in f::list() {
            writeln!(out, "{name:<26} {desc}")?;
        }
        for (name, desc, _) in f::GROUPS {
            writeln!(out, "{name:<26} (group) {desc}")?;
        }
        return Ok(());
    }
    let Some(dir) = a.dir else {
        return Err(anyhow::Error::new(Usage(format!("fixture {} needs a DIR to write to", a.name))));
    };
    let made = match f::generate_group(&a.name, &dir, a.seed) {
        Some(r) => r,
        None => f::generate(&a.name, &dir, a.seed).map(|m| vec![m]),
    }
    .with_context(|| format!("cannot make fixture {} in {}", a.name, dir.display()))?;
    for m in made {
        fixture_summary(&m, &dir, out)?;
    }
    Ok(())
}

fn fixture_summary(m: &btrs::ops::fixture::Manifest, dir: &std::path::Path, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "{}: {} in {} ({} files, {} expected findings{})",
        m.name,
        m.devices.join(", "),
        dir.display(),
        m.files.len(),
        m.expected_findings.len(),
        if m.missing_devices.is_empty() { String::new() } else { format!(", missing {}", m.missing_devices.join(", ")) }
    )?;
    Ok(())
}

fn subvolume(set: &Set, c: btrs::cli::SubvolumeCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    use btrs::cli::SubvolumeCommand as S;
    use btrs::ops::subvol;
    match c {
        S::Create(a) => {
            let (ids, w) = subvol::create(&wopts(set, &a.image), &image_paths(&a.paths), a.parents)
                .with_context(|| format!("cannot create a subvolume in {}", a.image.display()))?;
            warn_all(w);
            for (path, id) in a.paths.iter().zip(ids) {
                writeln!(out, "Create subvolume '{}' (id {id})", ImagePath::from(path))?;
            }
        }
        S::Snapshot(a) => {
            let (id, dest, w) = subvol::snapshot(&wopts(set, &a.image), &a.src, &a.dest, a.readonly)
                .with_context(|| format!("cannot snapshot {} in {}", ImagePath::from(&a.src), a.image.display()))?;
            warn_all(w);
            let ro = if a.readonly { "readonly " } else { "" };
            writeln!(out, "Create {ro}snapshot of '{}' in '{dest}' (id {id})", ImagePath::from(&a.src))?;
        }
        S::Delete(a) => {
            let (ids, w) = subvol::delete(&wopts(set, &a.image), &image_paths(&a.paths), a.recursive)
                .with_context(|| format!("cannot delete a subvolume of {}", a.image.display()))?;
            warn_all(w);
            for id in ids {
                writeln!(out, "Delete subvolume (id {id})")?;
            }
        }
        S::List(a) => {
            let fs = open(set, &a.image)?;
            // As btrfs-progs: the path must be there, whatever the flags.
            if let Some(p) = &a.path {
                fs.resolve(p)?;
            }
            let below = match (&a.path, a.below) {
                (Some(p), true) => Some(subvol::subvol_of_path(&fs, p)?),
                (None, true) => Some(btrs::format::FS_TREE_OBJECTID),
                _ => None,
            };
            let opts = subvol::ListOptions {
                parent: a.parent,
                cgen: a.cgen,
                gen: a.gen,
                uuid: a.uuid,
                parent_uuid: a.parent_uuid,
                received_uuid: a.received_uuid,
                snapshots_only: a.snapshots,
                readonly_only: a.readonly,
                below,
            };
            let mut all = subvol::subvolumes(&fs)?;
            // progs: relative to the mounted subvolume, but not with -o.
            if let (Some(p), false) = (&a.path, a.below) {
                subvol::relative_to(&mut all, fs.resolve(p)?.id.subvol);
            }
            let list = subvol::select(all, &opts);
            if a.json {
                json(out, &list)?;
            } else {
                for s in &list {
                    out.write_all(&subvol::list_line(s, &opts))?;
                    writeln!(out)?;
                }
            }
            print_warnings(&fs);
        }
        S::Show(a) => {
            let fs = open(set, &a.image)?;
            let id = subvol::subvol_of_path(&fs, &a.path)?;
            let all = subvol::subvolumes(&fs)?;
            let s =
                all.iter().find(|s| s.id == id).ok_or_else(|| anyhow::anyhow!("{}: subvolume {id} not found", ImagePath::from(&a.path)))?;
            let snapshots: Vec<&subvol::SubvolInfo> = subvol::tree_order(&all)
                .into_iter()
                .filter_map(|id| all.iter().find(|o| o.id == id))
                .filter(|o| s.uuid != "-" && o.parent_uuid == s.uuid)
                .collect();
            if a.json {
                #[derive(serde::Serialize)]
                struct Show<'a> {
                    #[serde(flatten)]
                    subvol: &'a subvol::SubvolInfo,
                    snapshots: Vec<&'a str>,
                }
                json(out, &Show { subvol: s, snapshots: snapshots.iter().map(|o| o.path.as_str()).collect() })?;
            } else {
                show_subvol(out, s, &snapshots)?;
            }
            print_warnings(&fs);
        }
        S::GetDefault(a) => {
            let fs = open(set, &a.image)?;
            let id = subvol::get_default(&fs)?;
            if id == btrs::format::FS_TREE_OBJECTID {
                writeln!(out, "ID 5 (FS_TREE)")?;
            } else {
                let all = subvol::subvolumes(&fs)?;
                let s = all.iter().find(|s| s.id == id).ok_or_else(|| anyhow::anyhow!("the default subvolume {id} does not exist"))?;
                write!(out, "ID {} gen {} top level {} path ", s.id, s.generation, s.parent)?;
                out.write_all(&s.path_bytes)?;
                writeln!(out)?;
            }
        }
        S::SetDefault(a) => {
            let (_, w) = subvol::set_default(&wopts(set, &a.image), &a.subvol)
                .with_context(|| format!("cannot set the default subvolume of {}", a.image.display()))?;
            warn_all(w);
        }
    }
    Ok(())
}

/// `btrfs subvolume show`'s layout (times in UTC).
fn show_subvol(out: &mut dyn Write, s: &btrs::ops::subvol::SubvolInfo, snapshots: &[&btrs::ops::subvol::SubvolInfo]) -> anyhow::Result<()> {
    let time = |t: i64| if t == 0 { "-".to_string() } else { format!("{} +0000", btrs::ops::subvol::datetime(t)) };
    // Paths and names as their bytes, as progs prints them.
    let top = s.id == btrs::format::FS_TREE_OBJECTID;
    out.write_all(if top { b"/" } else { &s.path_bytes })?;
    out.write_all(b"\n\tName: \t\t\t")?;
    out.write_all(if top { s.name.as_bytes() } else { s.path_bytes.rsplit(|&b| b == b'/').next().unwrap_or_default() })?;
    writeln!(out)?;
    writeln!(out, "\tUUID: \t\t\t{}", s.uuid)?;
    writeln!(out, "\tParent UUID: \t\t{}", s.parent_uuid)?;
    writeln!(out, "\tReceived UUID: \t\t{}", s.received_uuid)?;
    writeln!(out, "\tCreation time: \t\t{}", time(s.otime))?;
    writeln!(out, "\tSubvolume ID: \t\t{}", s.id)?;
    writeln!(out, "\tGeneration: \t\t{}", s.generation)?;
    writeln!(out, "\tGen at creation: \t{}", s.cgen)?;
    writeln!(out, "\tParent ID: \t\t{}", s.parent)?;
    writeln!(out, "\tTop level ID: \t\t{}", s.parent)?;
    writeln!(out, "\tFlags: \t\t\t{}", if s.readonly { "readonly" } else { "-" })?;
    writeln!(out, "\tSend transid: \t\t{}", s.stransid)?;
    // btrfs-progs prints the creation time here (its text buffer before
    // the send time is formatted into it); the same, for line-for-line
    // output. --json has the send time.
    writeln!(out, "\tSend time: \t\t{}", time(s.otime))?;
    writeln!(out, "\tReceive transid: \t{}", s.rtransid)?;
    writeln!(out, "\tReceive time: \t\t{}", time(s.rtime))?;
    writeln!(out, "\tSnapshot(s):")?;
    for o in snapshots {
        out.write_all(b"\t\t\t\t")?;
        out.write_all(&o.path_bytes)?;
        writeln!(out)?;
    }
    Ok(())
}

fn property(set: &Set, c: btrs::cli::PropertyCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    use btrs::cli::PropertyCommand as P;
    use btrs::ops::subvol;
    let known = |n: &str| -> anyhow::Result<()> {
        if subvol::PROPERTIES.contains(&n) {
            Ok(())
        } else {
            Err(anyhow::Error::new(Usage(format!("unknown property {n:?} (btrs knows: {})", subvol::PROPERTIES.join(", ")))))
        }
    };
    match c {
        P::Get(a) => {
            if let Some(n) = &a.name {
                known(n)?;
            }
            let fs = open(set, &a.image)?;
            for (n, v) in subvol::get_properties(&fs, &a.path, a.name.as_deref())? {
                writeln!(out, "{n}={v}")?;
            }
        }
        P::Set(a) => {
            known(&a.name)?;
            if a.name == "ro" && !matches!(a.value.as_str(), "true" | "false") {
                return Err(anyhow::Error::new(Usage(format!("ro takes true or false, not {:?}", a.value))));
            }
            let w = subvol::set_property(&wopts(set, &a.image), &a.path, &a.name, &a.value)
                .with_context(|| format!("cannot set {} on {} in {}", a.name, ImagePath::from(&a.path), a.image.display()))?;
            warn_all(w);
        }
    }
    Ok(())
}

fn wopts(set: &Set, image: &std::path::Path) -> OpenOptions {
    set.options(image, true)
}

fn write_cmd(set: &Set, a: btrs::cli::WriteArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let max_bio = a.max_bio;
    let compress = match (&a.compress, &a.compress_force) {
        (Some(c), _) | (None, Some(c)) => {
            let (kind, level) = usage(btrs::ops::mkfs::parse_compress(c))?;
            Some(btrs::fs::txn::CompressOpts { kind, level, force: a.compress_force.is_some() })
        }
        (None, None) => None,
    };
    let (input, len) = btrs::ops::write::open_input(a.from.as_deref())?;
    let mut req = btrs::ops::write::WriteRequest {
        compress,
        offset: a.offset,
        truncate: a.truncate,
        parents: a.parents,
        nodatasum: a.nodatasum,
        nodatacow: a.nodatacow,
        max_bio,
        direct: a.direct,
        commit_every: usage(a.commit_every.as_deref().map(btrs::ops::mkfs::parse_size).transpose())?,
        on_bio: None,
    };
    // A bar on a terminal for writes of known, non-trivial size.
    let bar = match len {
        Some(n) if n >= 64 << 20 && !a.quiet && std::io::stderr().is_terminal() => {
            let b = indicatif::ProgressBar::with_draw_target(Some(n), indicatif::ProgressDrawTarget::stderr());
            if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}") {
                b.set_style(style);
            }
            Some(b)
        }
        _ => None,
    };
    // -v: each bio as it is submitted and as it completes, printed here as
    // the device threads report them while the write runs beside.
    let (events, lines) = std::sync::mpsc::channel::<String>();
    if a.verbose {
        req.on_bio = Some(btrs::fs::txn::BioHook(std::sync::Arc::new(move |b: &btrs::fs::txn::BioRecord, stage| {
            let what = match stage {
                btrs::fs::txn::BioStage::Submitted => "submit",
                btrs::fs::txn::BioStage::Completed => "done",
                btrs::fs::txn::BioStage::Failed => "failed",
            };
            let line =
                format!("bio {what} logical {} len {} devid {} physical {} mirror {}", b.logical, b.len, b.devid, b.physical, b.mirror + 1);
            let _ = events.send(line);
        })));
    } else {
        drop(events);
    }
    let open = wopts(set, &a.image);
    let report = std::thread::scope(|s| -> anyhow::Result<_> {
        let writer = btrs::threads::spawn_scoped(s, "writer", || {
            let req = req;
            btrs::ops::write::write(&open, &a.path, input, len, &req, &mut |done| {
                if let Some(b) = &bar {
                    b.set_position(done);
                }
            })
        })?;
        // Ends when the write is over and its last bio hook is gone. A
        // failed print (a closed pipe) stops the printing, not the write:
        // its own outcome comes first.
        let mut printed = Ok(());
        for line in lines {
            if printed.is_ok() {
                printed = writeln!(out, "{line}");
            }
        }
        let report = btrs::threads::join(writer, "writer")?;
        printed?;
        Ok(report)
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for n in &report.notices {
        say!("btrs: notice: {n}");
    }
    if !a.quiet {
        let compressed = if report.compressed > 0 {
            format!("; {} file bytes stored compressed in {} bytes", report.compressed, report.compressed_disk)
        } else {
            String::new()
        };
        writeln!(
            out,
            "wrote {} bytes to {} at offset {} ({} device writes{compressed})",
            report.bytes,
            ImagePath::from(&a.path),
            a.offset,
            report.bios.len()
        )?;
    }
    Ok(())
}
