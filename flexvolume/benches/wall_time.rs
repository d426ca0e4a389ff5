//! Median wall time of driver calls as kubelet makes them (fork+exec, merged
//! output pipe read to EOF), next to `/bin/true` on the same machine.
//! `cargo bench -p loopvol-flexvolume` (mount+unmount needs root).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 51;

fn run(exe: &Path, args: &[&str], config: &Path) -> Duration {
    let start = Instant::now();
    let (mut reader, writer) = std::io::pipe().unwrap();
    let mut child = {
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .env("LOOPVOL_FLEX_CONFIG", config)
            .stdin(Stdio::null())
            .stdout(writer.try_clone().unwrap())
            .stderr(writer);
        cmd.spawn().unwrap()
    };
    let mut out = Vec::new();
    reader.read_to_end(&mut out).unwrap();
    assert!(child.wait().unwrap().success());
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&out);
    assert!(exe.ends_with("true") || text.contains("\"Success\""), "{args:?}: {text}");
    elapsed
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let exe = Path::new(env!("CARGO_BIN_EXE_loopvol"));
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let config = root.join("config.json");
    let text = serde_json::json!({"pool": root.join("pool"), "stateDir": root.join("state"), "defaultSize": "64Mi"});
    std::fs::write(&config, text.to_string()).unwrap();

    let truth = median((0..RUNS).map(|_| run(Path::new("/bin/true"), &[], &config)).collect());
    let init = median((0..RUNS).map(|_| run(exe, &["init"], &config)).collect());
    println!("/bin/true          median {truth:?}");
    println!("init               median {init:?}");

    if !nix::unistd::geteuid().is_root() {
        println!("mount+unmount      skipped (needs root)");
        return;
    }
    let json =
        r#"{"kubernetes.io/fsType":"","kubernetes.io/readwrite":"rw","kubernetes.io/pvOrVolumeName":"pv-bench"}"#;
    let pod = root.join("pods/p/volumes/loopvol~loopvol/pv-bench");
    // The first mount creates and formats the volume; measure the steady state.
    std::fs::create_dir_all(&pod).unwrap();
    run(exe, &["mount", pod.to_str().unwrap(), json], &config);
    run(exe, &["unmount", pod.to_str().unwrap()], &config);
    let pairs: Vec<Duration> = (0..RUNS)
        .map(|_| {
            std::fs::create_dir_all(&pod).unwrap();
            run(exe, &["mount", pod.to_str().unwrap(), json], &config)
                + run(exe, &["unmount", pod.to_str().unwrap()], &config)
        })
        .collect();
    println!("mount+unmount pair median {:?}", median(pairs));
    loopvol_test_support::cleanup_under(&root);
}
