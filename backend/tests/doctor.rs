//! `Pool::doctor` against deliberately broken pools.

use std::fs;
use std::path::Path;

use loopvol_backend::FindingKind;
use loopvol_test_support::{broken_pool, privileged, BrokenPool, Sandbox};

fn mounted(path: &Path) -> bool {
    loopvol_test_support::mount_count(path) > 0
}

#[test]
fn doctor_finds_and_repairs_what_is_safe() {
    if !privileged("doctor_finds_and_repairs_what_is_safe") {
        return;
    }
    let sandbox = Sandbox::new();
    let BrokenPool { pool, healthy_staging, orphan, unused, stale, lost, lost_staging, .. } = broken_pool(&sandbox);
    let vols = sandbox.path().join("pool/volumes");

    let kinds = |findings: &[loopvol_backend::Finding]| {
        let mut k: Vec<&str> = findings.iter().map(|f| f.kind.as_str()).collect();
        k.sort();
        k
    };
    let report = pool.doctor(false).unwrap();
    assert!(report.iter().all(|f| !f.repaired), "a check alone repairs nothing");
    let found = kinds(&report);
    for want in [
        FindingKind::ImageWithoutRecord,
        FindingKind::RecordWithoutImage,
        FindingKind::TempFile,
        FindingKind::UnusedLoopDevice,
        FindingKind::StaleNodeState,
        FindingKind::MountWithoutRecord,
    ] {
        assert!(found.contains(&want.as_str()), "{} missing from {found:?}", want.as_str());
    }
    // The image of the lost record is mounted, so it is not an orphan to move.
    assert!(report
        .iter()
        .all(|f| !(f.kind == FindingKind::ImageWithoutRecord && f.path.ends_with(format!("{lost}.img")))
            || f.detail.contains("attached")));

    let repaired = pool.doctor(true).unwrap();
    assert!(repaired.iter().any(|f| f.kind == FindingKind::UnusedLoopDevice && f.repaired));
    assert!(!pool.volume_image_path(&orphan).exists(), "orphan moved away");
    assert_eq!(fs::read_dir(sandbox.path().join("pool/lost+found")).unwrap().count(), 1, "not deleted");
    assert!(!vols.join(".half.img.tmp").exists());
    assert!(pool.node_state(&stale).unwrap().staged.is_none(), "stale staging forgotten");
    let image = pool.volume_image_path(&unused);
    assert!(!loopvol_test_support::loop_devices().iter().any(|(_, backing)| *backing == image));

    let after = kinds(&pool.doctor(false).unwrap());
    assert_eq!(
        after,
        vec!["image-without-record", "mount-without-record", "record-without-image"],
        "only what is unsafe to fix remains"
    );
    assert!(mounted(&healthy_staging), "a healthy volume is untouched");
    assert!(mounted(&lost_staging), "a mount without a record is left for a human");
}
