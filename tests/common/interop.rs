//! Gate and helpers for tests that use the kernel (loop devices, mount) or btrfs-progs.
//!
//! `BTRS_INTEROP`:
//! - unset: run when we are root, loop devices exist and btrfs-progs is installed;
//!   otherwise print "skipped: ..." and return;
//! - `require`: must run; fail loudly when something is missing;
//! - `skip`: never run.
//!
//! Every use of loop devices goes through [`kernel_lock`]: images with one fsid cannot be
//! scanned or mounted twice at once, and tests run in parallel (in several processes too,
//! hence a lock file besides the in-process mutex).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

/// Whether interop tests may run here; prints why not and returns false, or panics
/// under `BTRS_INTEROP=require`.
pub fn interop_enabled(test: &str) -> bool {
    let mode = std::env::var("BTRS_INTEROP").unwrap_or_default();
    if mode == "skip" {
        eprintln!("skipped: {test}: BTRS_INTEROP=skip");
        return false;
    }
    let missing = missing_requirements();
    match (missing, mode.as_str()) {
        (None, _) => true,
        (Some(why), "require") => panic!("{test}: BTRS_INTEROP=require but {why}"),
        (Some(why), _) => {
            eprintln!("skipped: {test}: {why}");
            false
        }
    }
}

/// Whether `btrfs check` can be run on plain image files (no root needed for one image).
pub fn progs_available() -> bool {
    tool_works("btrfs", &["--version"])
}

/// For tests whose judge is btrfs-progs on plain files (mkfs.btrfs, one-image
/// `btrfs check`), with `root` also for checks over several images (loop
/// devices): false, after saying why, when that is missing; a failure under
/// `BTRS_INTEROP=require`, so CI never counts a skipped judge as a pass.
pub fn progs_for(test: &str, root: bool) -> bool {
    let why = if !progs_available() || !tool_works("mkfs.btrfs", &["--version"]) {
        "btrfs-progs not installed"
    } else if root && !is_root() {
        "checking several images needs root (loop devices)"
    } else {
        return true;
    };
    assert_ne!(std::env::var("BTRS_INTEROP").as_deref(), Ok("require"), "{test}: BTRS_INTEROP=require but {why}");
    eprintln!("skipped: {test}: {why}");
    false
}

fn missing_requirements() -> Option<String> {
    if !is_root() {
        return Some("not root".into());
    }
    if !Path::new("/dev/loop-control").exists() || !tool_works("losetup", &["--version"]) {
        return Some("no loop devices".into());
    }
    if !progs_available() || !tool_works("mkfs.btrfs", &["--version"]) {
        return Some("btrfs-progs not installed".into());
    }
    None
}

fn tool_works(name: &str, args: &[&str]) -> bool {
    Command::new(name).args(args).output().map(|o| o.status.success()).unwrap_or(false)
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Serializes everything that attaches loop devices, in this process and across processes.
pub struct KernelLock {
    _guard: MutexGuard<'static, ()>,
    _file: File,
}

pub fn kernel_lock() -> KernelLock {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/btrs-kernel-tests.lock")
        .expect("open /tmp/btrs-kernel-tests.lock");
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).expect("flock");
    KernelLock { _guard: guard, _file: file }
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let o = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    if o.status.success() {
        Ok(text)
    } else {
        Err(format!("{cmd:?} failed ({}):\n{text}", o.status))
    }
}

/// Loop devices attached to images; detached (and forgotten by btrfs) on drop, panics included.
pub struct Loops {
    pub devs: Vec<String>,
}

impl Loops {
    pub fn attach(images: &[PathBuf], read_only: bool) -> Result<Loops, String> {
        let mut l = Loops { devs: Vec::new() };
        for img in images {
            let mut cmd = Command::new("losetup");
            cmd.arg("-f").arg("--show");
            if read_only {
                cmd.arg("-r");
            }
            let dev = run(cmd.arg(img))?.trim().to_string();
            l.devs.push(dev);
        }
        Ok(l)
    }
}

impl Drop for Loops {
    fn drop(&mut self) {
        for d in &self.devs {
            let _ = Command::new("losetup").arg("-d").arg(d).status();
        }
        let _ = Command::new("btrfs").args(["device", "scan", "--forget"]).output();
    }
}

/// `btrfs check --readonly` over a filesystem of one or more images. One image is checked
/// directly; several are attached read-only to loop devices (needs root and the kernel lock).
pub fn btrfs_check(images: &[PathBuf], extra: &[&str]) -> Result<String, String> {
    let mut args = vec!["check", "--readonly"];
    args.extend_from_slice(extra);
    btrfs_on(images, &args)
}

/// `btrfs ARGS... DEVICE` over a filesystem of one or more images: one image
/// is named directly; several are attached read-only to loop devices and
/// scanned, so btrfs-progs sees every device (needs root and the kernel lock).
pub fn btrfs_on(images: &[PathBuf], args: &[&str]) -> Result<String, String> {
    if images.len() == 1 {
        return run(Command::new("btrfs").args(args).arg(&images[0]));
    }
    let _lock = kernel_lock();
    let _ = Command::new("btrfs").args(["device", "scan", "--forget"]).output();
    let loops = Loops::attach(images, true)?;
    run(Command::new("btrfs").args(["device", "scan"]).args(&loops.devs))?;
    run(Command::new("btrfs").args(args).arg(&loops.devs[0]))
}

/// A mounted filesystem; unmounted and detached on drop (also when the test panics).
/// Holds the kernel lock for its whole life.
pub struct Mounted {
    pub mnt: PathBuf,
    mounted: bool,
    loops: Option<Loops>,
    _lock: KernelLock,
}

impl Mounted {
    /// Mount images (read-write) at `mnt` with `-o device=...,nodiscard[,extra]`.
    /// Refuses (Err) when `btrfs check` does not pass first: never mount a damaged image.
    pub fn mount(mnt: &Path, images: &[PathBuf], extra_opts: &str) -> Result<Mounted, String> {
        btrfs_check(images, &[]).map_err(|e| format!("not mounting, btrfs check fails: {e}"))?;
        Self::mount_checked_elsewhere(mnt, images, extra_opts)
    }

    /// Mount without running `btrfs check` first: only for a subset of devices (degraded)
    /// of a filesystem whose complete set the caller has just checked.
    pub fn mount_checked_elsewhere(mnt: &Path, images: &[PathBuf], extra_opts: &str) -> Result<Mounted, String> {
        let lock = kernel_lock();
        let _ = Command::new("btrfs").args(["device", "scan", "--forget"]).output();
        std::fs::create_dir_all(mnt).map_err(|e| e.to_string())?;
        let loops = Loops::attach(images, false)?;
        let mut opts: String = loops.devs.iter().map(|d| format!("device={d},")).collect();
        opts.push_str("nodiscard");
        if !extra_opts.is_empty() {
            opts.push(',');
            opts.push_str(extra_opts);
        }
        let mut m = Mounted { mnt: mnt.to_path_buf(), mounted: false, loops: Some(loops), _lock: lock };
        let first = m.loops.as_ref().map(|l| l.devs[0].clone()).unwrap_or_default();
        run(Command::new("mount").args(["-t", "btrfs", "-o", &opts]).arg(&first).arg(mnt))?;
        m.mounted = true;
        Ok(m)
    }

    /// Unmount now, reporting failure (drop only tries).
    pub fn unmount(mut self) -> Result<(), String> {
        umount_retrying(&self.mnt)?;
        self.mounted = false;
        self.loops = None;
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // Still mounted after retries (a panic, or a failed unmount): detach
        // it lazily so that no mount outlives the test.
        if self.mounted && umount_retrying(&self.mnt).is_err() {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        self.loops = None;
    }
}

/// `umount`, tried again for a few seconds while the kernel says the
/// target is busy (once seen right after the files written to it were
/// closed: something still held it for a moment).
fn umount_retrying(mnt: &Path) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..25 {
        match run(Command::new("umount").arg(mnt)) {
            Ok(_) => return Ok(()),
            Err(e) if e.contains("busy") => {
                last = e;
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Run a shell-like command, panicking with its output when it fails.
pub fn must(cmd: &mut Command) -> String {
    run(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether `test` may mount (root); without root it is skipped, and under
/// BTRS_INTEROP=require that is a failure.
pub fn root_for(test: &str, what: &str) -> bool {
    if is_root() {
        return true;
    }
    assert_ne!(std::env::var("BTRS_INTEROP").as_deref(), Ok("require"), "{test}: BTRS_INTEROP=require but not root ({what})");
    eprintln!("skipped: {test}: needs root ({what})");
    false
}

/// A small tmpfs mounted at a directory (a disk that fills up); unmounted on
/// drop, panics included.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Make `dir` and mount a tmpfs of `size` (e.g. "2M") on it.
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("tmpfs mount point");
        let st = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).status().expect("mount");
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// `n` images `dir/{prefix}1.img`... of 300 MiB made into one filesystem by
/// `mkfs.btrfs -q -d PROFILE -m PROFILE`.
pub fn mkfs_btrfs_set(dir: &Path, prefix: &str, n: usize, profile: &str) -> Vec<PathBuf> {
    let imgs: Vec<PathBuf> = (1..=n).map(|i| dir.join(format!("{prefix}{i}.img"))).collect();
    for p in &imgs {
        std::fs::File::create(p).unwrap().set_len(300 << 20).unwrap();
    }
    must(Command::new("mkfs.btrfs").args(["-q", "-d", profile, "-m", profile]).args(&imgs));
    imgs
}
