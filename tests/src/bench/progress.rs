//! A one-line progress bar on stderr, drawn only when stderr is a terminal
//! (nothing at all otherwise, so logs and CI output stay clean).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Progress {
    pub done: AtomicU64,
    pub failed: AtomicU64,
    total: u64,
    what: String,
    finished: AtomicBool,
    start: Instant,
}

impl Progress {
    /// Starts the drawing task (when stderr is a terminal) and returns the counters.
    pub fn start(what: &str, total: u64) -> Arc<Progress> {
        let p = Arc::new(Progress {
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            total,
            what: what.to_string(),
            finished: AtomicBool::new(false),
            start: Instant::now(),
        });
        if std::io::stderr().is_terminal() {
            let draw = Arc::clone(&p);
            tokio::spawn(async move {
                while !draw.finished.load(Ordering::Relaxed) {
                    draw.draw();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
        p
    }

    pub fn tick(&self, ok: bool) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn draw(&self) {
        const WIDTH: u64 = 30;
        let done = self.done.load(Ordering::Relaxed);
        let failed = self.failed.load(Ordering::Relaxed);
        let filled = (done * WIDTH).checked_div(self.total).map_or(WIDTH, |f| f.min(WIDTH));
        let rate = done as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
        let bar: String = (0..WIDTH).map(|i| if i < filled { '#' } else { '-' }).collect();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{} [{bar}] {done}/{} {rate:.1}/s errors {failed}", self.what, self.total);
        let _ = err.flush();
    }

    /// Stops drawing and clears the line.
    pub fn finish(&self) {
        if !self.finished.swap(true, Ordering::Relaxed) && std::io::stderr().is_terminal() {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}
