//! `Pool::doctor` against deliberately broken pools.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use loopvol_backend::FindingKind;
use loopvol_backend::{AccessType, CapacityRange, CreateVolume, Lifecycle, Pool, PoolOptions, StageRequest};
use loopvol_test_support::{privileged, Sandbox};

fn create(pool: &Pool, name: &str) -> String {
    pool.create_volume(&CreateVolume {
        name: name.into(),
        id: None,
        capacity: CapacityRange { required: 32 << 20, limit: 0 },
        fs_type: None,
        access_type: AccessType::Mount,
        thick: false,
        source: None,
        parameters: BTreeMap::new(),
        lifecycle: Lifecycle::Persistent,
    })
    .unwrap()
    .id
}

fn stage(pool: &Pool, id: &str, staging: &Path) {
    let req = StageRequest {
        staging_path: staging.into(),
        access_type: AccessType::Mount,
        fs_type: None,
        read_only: false,
        mount_options: vec![],
    };
    pool.stage(id, &req).unwrap();
}

fn mounted(path: &Path) -> bool {
    loopvol_test_support::mount_count(path) > 0
}

#[test]
fn doctor_finds_and_repairs_what_is_safe() {
    if !privileged("doctor_finds_and_repairs_what_is_safe") {
        return;
    }
    let sandbox = Sandbox::new();
    let pool = Pool::open(&sandbox.path().join("pool"), PoolOptions::default()).unwrap();
    let vols = sandbox.path().join("pool/volumes");

    let healthy = create(&pool, "healthy");
    let healthy_staging = sandbox.path().join("healthy");
    stage(&pool, &healthy, &healthy_staging);

    let orphan = create(&pool, "orphan-image");
    fs::remove_file(vols.join(format!("{orphan}.json"))).unwrap();

    let no_image = create(&pool, "no-image");
    fs::remove_file(pool.volume_image_path(&no_image)).unwrap();

    fs::write(vols.join(".half.img.tmp"), b"partial").unwrap();

    let unused = create(&pool, "unused-loop");
    loopvol_test_support::attach_loop_device(&pool.volume_image_path(&unused));

    let stale = create(&pool, "stale");
    let stale_staging = sandbox.path().join("stale");
    stage(&pool, &stale, &stale_staging);
    nix::mount::umount(&stale_staging).unwrap();

    let lost = create(&pool, "lost-record");
    let lost_staging = sandbox.path().join("lost");
    stage(&pool, &lost, &lost_staging);
    fs::remove_file(vols.join(format!("{lost}.json"))).unwrap();

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
