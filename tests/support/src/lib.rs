//! Shared scaffolding of loopvol's tests, in one dev-only crate: whether
//! privileged tests may run, sandboxes that leak nothing, and views of the
//! mounts and loop devices a test made (built on the backend's own
//! mountinfo parser and loop-device scan, through its `test-hooks` feature).

use std::path::{Path, PathBuf};

use loopvol_backend::test_hooks;

pub mod cgroup;
pub mod flex;

/// True when this process can make loop devices and mounts. Otherwise says so
/// loudly on stderr and returns false, so the caller skips; under
/// `LOOPVOL_REQUIRE_PRIVILEGED=1` (CI) a skip is a failure instead.
pub fn privileged(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let loop_control = Path::new("/dev/loop-control").exists();
    if root && loop_control {
        return true;
    }
    let why = if root { "/dev/loop-control is missing" } else { "not running as root" };
    if std::env::var_os("LOOPVOL_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
        panic!("privileged test {test} cannot run ({why}) and LOOPVOL_REQUIRE_PRIVILEGED=1");
    }
    eprintln!("SKIPPED privileged test {test}: {why} (set LOOPVOL_REQUIRE_PRIVILEGED=1 to make this fail)");
    false
}

/// A temporary directory for one test that, when dropped, unmounts every
/// mount below it and detaches every loop device backed by a file below it,
/// so a failing test leaks nothing.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new().prefix("loopvol-test-").tempdir().expect("create a temp dir");
        Sandbox { dir }
    }

    /// The sandbox directory, canonical (mountinfo and sysfs report canonical paths).
    pub fn path(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path()).expect("canonical temp dir")
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        cleanup_under(&self.path());
    }
}

/// Unmounts everything mounted below `root` (deepest first, lazily so a busy
/// mount cannot stop the cleanup) and detaches loop devices backed below it.
pub fn cleanup_under(root: &Path) {
    test_hooks::cleanup_under(root);
}

pub use loopvol_backend::host::{loop_devices, mounts_under};

/// Loop devices whose backing file lies below `root`.
pub fn loops_under(root: &Path) -> Vec<PathBuf> {
    loopvol_backend::host::loop_devices_under(root)
}

/// How many mounts are stacked exactly at `path`.
pub fn mount_count(path: &Path) -> usize {
    loopvol_backend::host::mounts_at(path).len()
}

/// Whether the top mount at `path` is read-only; None when nothing is mounted there.
pub fn mounted_read_only(path: &Path) -> Option<bool> {
    loopvol_backend::host::mounts_at(path).last().copied()
}

/// Waits (bounded, 20 s) until `cond` holds and says whether it did. A loop
/// device released by autoclear lingers while udev still has it open, so
/// such states are polled rather than read once: a liveness bound, not a
/// timing assertion.
pub fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..400 {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    cond()
}

/// The number of loop devices backed below `root` once it reaches `want`, or
/// after 20 s (see [`eventually`]).
pub fn loops_settle(root: &Path, want: usize) -> usize {
    if eventually(|| loops_under(root).len() == want) {
        want
    } else {
        loops_under(root).len()
    }
}

/// Attaches `image` to a loop device nobody mounts (to stage faults: a
/// leaked device, a pool filesystem of a chosen kind) and returns its path.
pub fn attach_loop_device(image: &Path) -> PathBuf {
    test_hooks::attach_loop_device(image).expect("attach a loop device")
}

/// A request for a thin, persistent mount volume named `name` (None: the
/// pool's default filesystem).
pub fn volume_request(
    name: &str,
    size: u64,
    fs_type: Option<loopvol_backend::FsType>,
) -> loopvol_backend::CreateVolume {
    use loopvol_backend::{AccessType, CapacityRange, CreateVolume, Lifecycle};
    CreateVolume {
        io_limits: Default::default(),
        name: name.into(),
        id: None,
        capacity: CapacityRange { required: size, limit: 0 },
        fs_type,
        access_type: AccessType::Mount,
        thick: false,
        source: None,
        parameters: Default::default(),
        lifecycle: Lifecycle::Persistent,
        direct_io: true,
    }
}

/// A 32 MiB mount volume of the pool's default filesystem, named `name`.
pub fn create_volume(pool: &loopvol_backend::Pool, name: &str) -> String {
    pool.create_volume(&volume_request(name, 32 << 20, None)).expect("create a volume").id
}

/// A read-write stage of a block volume at `staging`.
pub fn block_stage_request(staging: &Path) -> loopvol_backend::StageRequest {
    loopvol_backend::StageRequest {
        staging_path: staging.into(),
        access_type: loopvol_backend::AccessType::Block,
        fs_type: None,
        read_only: false,
        mount_options: vec![],
    }
}

/// Stages a mount volume read-write at `staging`.
pub fn stage_volume(pool: &loopvol_backend::Pool, id: &str, staging: &Path) {
    let req = loopvol_backend::StageRequest {
        staging_path: staging.into(),
        access_type: loopvol_backend::AccessType::Mount,
        fs_type: None,
        read_only: false,
        mount_options: vec![],
    };
    pool.stage(id, &req).expect("stage a volume");
}

/// A pool in `<sandbox>/pool` with one of everything `doctor` finds, beside a
/// healthy staged volume (the backend's and the admin CLI's doctor tests).
pub struct BrokenPool {
    pub pool: loopvol_backend::Pool,
    /// Staged at `healthy_staging`, nothing wrong with it.
    pub healthy: String,
    pub healthy_staging: PathBuf,
    /// Its record was removed behind the pool's back: an orphaned image.
    pub orphan: String,
    /// Its image was removed: a record without an image.
    pub no_image: String,
    /// Attached to a loop device that nothing uses.
    pub unused: String,
    /// Staged at `stale_staging`, then unmounted behind the records' back.
    pub stale: String,
    pub stale_staging: PathBuf,
    /// Mounted at `lost_staging` with its record removed.
    pub lost: String,
    pub lost_staging: PathBuf,
}

/// Builds a [`BrokenPool`]; also leaves a half-written `.half.img.tmp` in
/// the volumes directory.
pub fn broken_pool(sandbox: &Sandbox) -> BrokenPool {
    let pool = loopvol_backend::Pool::open(&sandbox.path().join("pool"), Default::default()).expect("open pool");
    let vols = pool.root().join("volumes");
    let healthy = create_volume(&pool, "healthy");
    let healthy_staging = sandbox.path().join("healthy");
    stage_volume(&pool, &healthy, &healthy_staging);
    let orphan = create_volume(&pool, "orphan-image");
    std::fs::remove_file(vols.join(format!("{orphan}.json"))).unwrap();
    let no_image = create_volume(&pool, "no-image");
    std::fs::remove_file(pool.volume_image_path(&no_image)).unwrap();
    std::fs::write(vols.join(".half.img.tmp"), b"partial").unwrap();
    let unused = create_volume(&pool, "unused-loop");
    attach_loop_device(&pool.volume_image_path(&unused));
    let stale = create_volume(&pool, "stale");
    let stale_staging = sandbox.path().join("stale");
    stage_volume(&pool, &stale, &stale_staging);
    nix::mount::umount(&stale_staging).unwrap();
    let lost = create_volume(&pool, "lost-record");
    let lost_staging = sandbox.path().join("lost");
    stage_volume(&pool, &lost, &lost_staging);
    std::fs::remove_file(vols.join(format!("{lost}.json"))).unwrap();
    BrokenPool { pool, healthy, healthy_staging, orphan, no_image, unused, stale, stale_staging, lost, lost_staging }
}

/// A tiny deterministic PRNG (xorshift64*): reproducible data, offsets and
/// choices for tests and benchmarks without a crate.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Fills `buf` with pseudo-random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// A number below `n` (> 0).
    pub fn below(&mut self, n: usize) -> usize {
        let n = u64::try_from(n).expect("small bound");
        usize::try_from(self.next_u64() % n).expect("below a usize bound")
    }
}
