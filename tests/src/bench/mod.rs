//! The pieces of `csi-bench` (see `src/bin/csi-bench.rs`).

pub mod client;
pub mod flex;
pub mod lifecycle;
pub mod progress;
pub mod report;
pub mod scale;
pub mod stats;
pub mod volume;

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the first SIGINT/SIGTERM: launch nothing new, undo what is in flight.
static STOP: AtomicBool = AtomicBool::new(false);

pub fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// First SIGINT or SIGTERM: stop launching and clean up; a second one exits
/// at once (and may leave volumes behind, which the message says).
pub fn install_signal_handler() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        eprintln!("csi-bench: cannot install signal handlers; an interrupt will not clean up");
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if STOP.swap(true, Ordering::Relaxed) {
                eprintln!("\ncsi-bench: second signal, exiting now: volumes in flight may be left behind");
                std::process::exit(130);
            }
            eprintln!("\ncsi-bench: interrupted: launching nothing new, undoing what is in flight (signal again to quit at once)");
        }
    });
}
