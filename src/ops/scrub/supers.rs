//! Superblock copies: check every copy on every present device against the
//! newest superblock and the chunk tree's dev items, rewrite bad ones on
//! `--repair`, and settle whether a stale device was rebuilt whole.

use zerocopy::{FromBytes, IntoBytes};

use super::report::{Finding, FindingKind, ScrubOptions};
use super::state::Acc;
use crate::error::Result;
use crate::format::superblock::{parse_super, seal_super};
use crate::format::*;
use crate::fs::Filesystem;

/// Every superblock copy on every present device: magic, checksum, bytenr,
/// fsid, devid and device uuid (against the chunk tree's dev item), generation.
pub(super) fn scrub_supers(fs: &Filesystem, opts: &ScrubOptions, acc: &mut Acc) -> Result<()> {
    let vol = fs.volume();
    let dev_items = fs.dev_items()?;
    let newest = vol.sb.generation.get();
    // A device's superblock: the newest one with the device's own dev item
    // (the only per-device part besides bytenr), as a commit writes it.
    let template = |devid: u64| -> Option<SuperBlock> {
        let mut sb = vol.sb;
        sb.dev_item = *dev_items.get(&devid)?;
        Some(sb)
    };
    for dev in vol.devices.values() {
        let stale = vol.is_stale(dev.devid);
        // A stale device is rebuilt (its superblocks last) only when every
        // copy it holds that scrub found wrong was repaired.
        // A data checksum failure with no good copy anywhere does not hold it
        // back: it stays as detectable on a current device as here.
        let rebuilt = stale
            && opts.repair
            && acc.dropped_unrepaired == 0
            && !acc.findings.iter().any(|f| {
                f.devid == Some(dev.devid)
                    && !f.repaired
                    && f.kind != FindingKind::Super
                    && (f.metadata || !matches!(f.kind, FindingKind::Csum | FindingKind::CsumAllCopies))
            });
        let before = acc.findings.len();
        if stale {
            acc.push(Finding::about(
                FindingKind::StaleDevice,
                Some(dev.devid),
                None,
                0,
                format!(
                    "{}; {}",
                    vol.stale_text(dev.devid),
                    if rebuilt {
                        "every copy it holds now matches the current ones"
                    } else if opts.repair {
                        "not every copy it holds could be rebuilt"
                    } else {
                        "run `btrs scrub --repair` to rebuild it from the current copies"
                    }
                ),
            ));
        }
        // Where it was kept (not when the findings list is full).
        let stale_at = (stale && acc.findings.len() > before).then_some(before);
        let mut all_supers_ok = true;
        // Every copy written to the device reaches the disk before any
        // superblock that makes them count (a replacement's copies were
        // not flushed one by one).
        let flushed = !opts.repair || dev.sync().is_ok();
        // A new image the rebuild made holds only what it wrote: data
        // elsewhere came from another process, and the copies it answered
        // from memory as blank may not be.
        if opts.repair && dev.defers_flush() {
            if let Some((at, len)) = dev.foreign_data()? {
                return Err(crate::error::Error::Devices(format!(
                    "{}: {len} bytes at {at} were written by something else during the rebuild; the image is not trusted",
                    dev.path.display()
                )));
            }
        }
        // Only the copies a commit writes (see `super_copy_in_use`).
        let total = dev_items.get(&dev.devid).map_or(dev.size, |d| d.total_bytes.get());
        for copy in dev.super_copies()?.into_iter().filter(|c| crate::volumes::device::super_copy_in_use(c.offset, total)) {
            let problem = match &copy.result {
                Err(p) => Some(p.to_string()),
                Ok(sb) if sb.bytenr.get() != copy.offset => Some(format!("bytenr {} does not match its offset", sb.bytenr.get())),
                Ok(sb) if sb.fsid != vol.sb.fsid => Some("fsid differs from the filesystem's".into()),
                Ok(sb) if sb.dev_item.devid.get() != dev.devid => {
                    Some(format!("devid {} differs from the device's {}", sb.dev_item.devid.get(), dev.devid))
                }
                Ok(sb) if dev_items.get(&dev.devid).is_some_and(|d| d.uuid != sb.dev_item.uuid) => {
                    Some("device uuid differs from the chunk tree's dev item".into())
                }
                Ok(sb) if sb.generation.get() != newest => Some(format!("generation {} is not the newest ({newest})", sb.generation.get())),
                Ok(_) => None,
            };
            let Some(detail) = problem else { continue };
            acc.dev(dev.devid).super_errors += 1;
            let mut repaired = false;
            // A stale device keeps its old superblocks until it is rebuilt:
            // they are what says it is stale.
            let template = if (stale && !rebuilt) || !flushed { None } else { template(dev.devid) };
            if let (true, Some(mut sb)) = (opts.repair, template) {
                sb.bytenr = copy.offset.into();
                if let Ok(ct) = sb.csum_kind() {
                    seal_super(&mut sb, ct);
                    let bytes = sb.as_bytes();
                    if dev.write_all_at(copy.offset, bytes).is_ok() && dev.sync().is_ok() {
                        let mut back = vec![0u8; SUPER_INFO_SIZE];
                        repaired = dev.read_exact_at(copy.offset, &mut back).is_ok()
                            && back == bytes
                            && parse_super(&back).is_ok()
                            && SuperBlock::read_from_prefix(&back).is_ok();
                    }
                }
            }
            let c = acc.dev(dev.devid);
            if repaired {
                c.corrected_errors += 1;
            }
            all_supers_ok &= repaired;
            acc.push(Finding {
                kind: FindingKind::Super,
                devid: Some(dev.devid),
                physical: Some(copy.offset),
                logical: None,
                len: SUPER_INFO_SIZE as u64,
                mirror: Some(copy.index + 1),
                good_mirror: None,
                metadata: true,
                paths: Vec::new(),
                file_offset: None,
                repaired,
                remedy: None,
                detail,
                extent: None,
            });
        }
        if let Some(i) = stale_at {
            if rebuilt && all_supers_ok {
                if let Some(f) = acc.findings.get_mut(i) {
                    f.repaired = true;
                }
                acc.dev(dev.devid).corrected_errors += 1;
            } else {
                acc.dev(dev.devid).uncorrectable_errors += 1;
            }
        }
    }
    Ok(())
}
