//! Finds what is out of line in a pool and, when asked, repairs what is safe
//! to repair. Nothing here deletes data: orphaned images are moved to
//! `<pool>/lost+found/`, never removed.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use super::live::KernelView;
use super::Pool;
use crate::error::{Error, Result};
use crate::kernel::{lock, loopdev, record};
use crate::types::AccessType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// A loop device backed by a pool image that no mount and no block staging uses.
    UnusedLoopDevice,
    /// A mount of a pool image whose volume record is gone.
    MountWithoutRecord,
    /// An image file without a record (a create or delete that died midway).
    ImageWithoutRecord,
    /// A record whose image file is missing.
    RecordWithoutImage,
    /// A half-written temp file (image or record).
    TempFile,
    /// A record that claims a staging or publish the kernel does not have.
    StaleNodeState,
    /// A record that does not parse.
    CorruptRecord,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::UnusedLoopDevice => "unused-loop-device",
            FindingKind::MountWithoutRecord => "mount-without-record",
            FindingKind::ImageWithoutRecord => "image-without-record",
            FindingKind::RecordWithoutImage => "record-without-image",
            FindingKind::TempFile => "temp-file",
            FindingKind::StaleNodeState => "stale-node-state",
            FindingKind::CorruptRecord => "corrupt-record",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: FindingKind,
    pub path: PathBuf,
    pub detail: String,
    /// What `--repair` does about it, or why it leaves it alone.
    pub remedy: &'static str,
    pub repaired: bool,
}

impl Pool {
    /// Checks the pool against the kernel. With `repair`, fixes what is safe:
    /// detaches unused loop devices, removes temp files whose writer is gone,
    /// drops stale node state from records, and moves orphaned images to
    /// `lost+found/`. Mounts without records and records without images are
    /// only reported: fixing them could take data away from a running pod.
    pub fn doctor(&self, repair: bool) -> Result<Vec<Finding>> {
        let mut findings = Vec::new();
        let volumes_dir = self.root.join("volumes");
        let view = KernelView::read()?;

        // Records: parse each, note the IDs, check images and node state.
        let mut ids = BTreeSet::new();
        for name in super::list_names(&volumes_dir)? {
            let path = volumes_dir.join(&name);
            if name.starts_with('.') && name.ends_with(".tmp") {
                continue; // handled below
            }
            let Some(id) = name.strip_suffix(".json").filter(|id| crate::id::validate(id).is_ok()) else { continue };
            ids.insert(id.to_string());
            match self.load(id) {
                Err(Error::VolumeNotFound(_)) => {}
                Err(e) => findings.push(Finding {
                    kind: FindingKind::CorruptRecord,
                    path,
                    detail: e.to_string(),
                    remedy: "left alone: restore it from a backup or remove it by hand",
                    repaired: false,
                }),
                Ok((vol, state)) => {
                    if !self.volume_image_path(id).exists() {
                        findings.push(Finding {
                            kind: FindingKind::RecordWithoutImage,
                            path: path.clone(),
                            detail: format!("volume {id} ({}) has no image", vol.name),
                            remedy: "left alone: delete the volume through the CO",
                            repaired: false,
                        });
                    }
                    let live = self.live(&vol, &state, &view);
                    let stale_stage = state.staged.is_some() && !live.staged;
                    let stale_targets = state.published.keys().filter(|t| !live.mount_points.contains(t)).count();
                    if stale_stage || stale_targets > 0 {
                        let mut f = Finding {
                            kind: FindingKind::StaleNodeState,
                            path: path.clone(),
                            detail: format!(
                                "volume {id}: {} stale staging, {stale_targets} stale targets",
                                usize::from(stale_stage)
                            ),
                            remedy: "forget what the kernel no longer has",
                            repaired: false,
                        };
                        if repair {
                            let _guard = self.lock_volume(id)?;
                            if let Ok((fresh, mut state)) = self.load(id) {
                                self.reconcile(&fresh, &mut state)?;
                                f.repaired = true;
                            }
                        }
                        findings.push(f);
                    }
                }
            }
        }

        // Images without records, and temp files whose writer is gone.
        for dir in ["volumes", "snapshots"] {
            let d = self.root.join(dir);
            for name in super::list_names(&d)? {
                let path = d.join(&name);
                if name.starts_with('.') && name.ends_with(".tmp") {
                    continue; // temp files: below
                }
                let Some(id) = name.strip_suffix(".img") else { continue };
                let has_record = self.root.join(dir).join(format!("{id}.json")).exists();
                if has_record {
                    continue;
                }
                let attached = loopdev::find(&path)?.is_some();
                let mut f = Finding {
                    kind: FindingKind::ImageWithoutRecord,
                    path: path.clone(),
                    detail: if attached { "attached to a loop device".into() } else { "not attached".into() },
                    remedy: "move it to lost+found/ (when not attached)",
                    repaired: false,
                };
                if repair && !attached {
                    f.repaired = self.to_lost_and_found(&path).is_ok();
                }
                findings.push(f);
            }
        }

        // Temp files whose writer is gone (their object's lock is free).
        let abandoned = self.abandoned_temp_files()?;
        for (path, guard) in abandoned {
            let mut f = Finding {
                kind: FindingKind::TempFile,
                path,
                detail: "left by a write that did not finish".into(),
                remedy: "remove it",
                repaired: false,
            };
            if repair {
                f.repaired = fs::remove_file(&f.path).is_ok();
            }
            drop(guard);
            findings.push(f);
        }

        // Loop devices of pool images: used by a mount or a block staging?
        for entry in &view.loops {
            let (dev, backing) = (&entry.device, &entry.backing_path);
            let Some(id) = backing
                .strip_prefix(&volumes_dir)
                .ok()
                .and_then(|p| p.to_str())
                .and_then(|n| n.strip_suffix(".img"))
                .map(str::to_string)
            else {
                continue;
            };
            let mounted = view.mount_points_of(entry);
            if !ids.contains(&id) && !mounted.is_empty() {
                findings.push(Finding {
                    kind: FindingKind::MountWithoutRecord,
                    path: mounted[0].clone(),
                    detail: format!("{} ({}) has no record", dev.path.display(), backing.display()),
                    remedy: "left alone: a pod may be using it; unmount it by hand",
                    repaired: false,
                });
                continue;
            }
            let block_staged =
                self.load(&id).is_ok_and(|(v, state)| v.access_type == AccessType::Block && state.staged.is_some());
            if mounted.is_empty() && !block_staged {
                let mut f = Finding {
                    kind: FindingKind::UnusedLoopDevice,
                    path: dev.path.clone(),
                    detail: format!("backed by {}", backing.display()),
                    remedy: "detach it",
                    repaired: false,
                };
                if repair {
                    let _guard = self.lock_volume(&id);
                    f.repaired = loopdev::detach(dev).is_ok();
                }
                findings.push(f);
            }
        }
        Ok(findings)
    }

    fn to_lost_and_found(&self, path: &std::path::Path) -> Result<()> {
        let dir = self.root.join("lost+found");
        fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        let name = path.file_name().unwrap_or_default();
        let dest = dir.join(format!("{}.{}", name.to_string_lossy(), super::now()));
        fs::rename(path, &dest).map_err(|e| Error::io("rename", &dest, e))?;
        record::sync_dir(&dir)
    }
}

impl Pool {
    /// Temp files (`.<id>.img.tmp`, `.<id>.json.<tag>.tmp`) in the pool whose
    /// object's lock is free, so no writer is at work on them; each comes with
    /// that lock, held while the caller deals with the file.
    pub(crate) fn abandoned_temp_files(&self) -> Result<Vec<(PathBuf, lock::Guard)>> {
        let mut out = Vec::new();
        for (dir, kind) in [("volumes", "vol"), ("snapshots", "snap"), ("groups", "group")] {
            let dir = self.root.join(dir);
            for name in super::list_names(&dir)? {
                if !(name.starts_with('.') && name.ends_with(".tmp")) {
                    continue;
                }
                let owner = temp_owner(&name);
                if let Ok(guard) = lock::acquire(&self.root.join("locks"), &format!("{kind}.{owner}"), Duration::ZERO) {
                    out.push((dir.join(&name), guard));
                }
            }
        }
        Ok(out)
    }
}

/// The object a temp file belongs to: `.<id>.img.tmp` (images) or
/// `.<id>.json.<tag>.tmp` (records; the tag is `<pid>-<n>`, or `<pid>` from
/// older versions); IDs may contain dots.
fn temp_owner(name: &str) -> String {
    let inner = name.trim_start_matches('.').trim_end_matches(".tmp");
    let id = match inner.strip_suffix(".img") {
        Some(id) => id,
        None => inner.rsplit_once(".json.").or_else(|| inner.rsplit_once(".state.")).map_or(inner, |(id, _)| id),
    };
    id.to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn temp_files_name_their_owner() {
        assert_eq!(super::temp_owner(".pvc-1.img.tmp"), "pvc-1");
        assert_eq!(super::temp_owner(".vol.1.json.4242.tmp"), "vol.1");
        assert_eq!(super::temp_owner(".a.json.json.7.tmp"), "a.json");
        assert_eq!(super::temp_owner(".pvc-1.state.99.tmp"), "pvc-1");
        assert_eq!(super::temp_owner(".vol.1.json.4242-17.tmp"), "vol.1");
        assert_eq!(super::temp_owner(".pvc-1.state.99-0.tmp"), "pvc-1");
    }
}
