//! Scheduled trims (`--trim-interval`): every staged filesystem of the pool
//! is trimmed once per interval, one volume at a time and spread evenly over
//! the interval, so the node never trims all volumes at once. Volumes staged
//! by the FlexVolume driver on the same pool are trimmed too: the pool does
//! not care who staged them. A volume whose lock is busy (a snapshot, an
//! expansion) is skipped until the next round.

use std::sync::Arc;
use std::time::Duration;

use crate::driver::Driver;

/// Runs forever; the server drops the task at shutdown.
pub async fn run(driver: Arc<Driver>, interval: Duration) {
    loop {
        let ids = driver.run(|pool| pool.volume_ids()).await.unwrap_or_default();
        let pause = spacing(interval, ids.len());
        if ids.is_empty() {
            tokio::time::sleep(interval).await;
            continue;
        }
        for id in ids {
            tokio::time::sleep(pause).await;
            let volume = id.clone();
            match driver.run(move |pool| pool.trim(&volume)).await {
                Ok(o) if o.skipped.is_none() => {
                    tracing::info!(volume = %id, returned_bytes = o.returned_bytes(), "scheduled trim")
                }
                Ok(_) => {}
                Err(status) => tracing::warn!(volume = %id, error = %status.message(), "scheduled trim failed"),
            }
        }
    }
}

/// The pause before each of `volumes` trims, so one round takes `interval`.
fn spacing(interval: Duration, volumes: usize) -> Duration {
    interval / u32::try_from(volumes.max(1)).unwrap_or(u32::MAX)
}

/// `--trim-interval`: None turns scheduled trims off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(pub Option<Duration>);

/// A number with a unit (`90s`, `30m`, `24h`, `7d`); `0` is off.
pub fn parse_interval(text: &str) -> Result<Interval, String> {
    parse(text).map(Interval)
}

fn parse(text: &str) -> Result<Option<Duration>, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(None);
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{text:?}: want a number with s, m, h or d, or 0"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{text:?}: want a number with s, m, h or d, or 0")),
    };
    if secs == 0 {
        return Ok(None);
    }
    Ok(Some(Duration::from_secs(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse() {
        assert_eq!(parse("24h").unwrap(), Some(Duration::from_secs(86_400)));
        assert_eq!(parse("90s").unwrap(), Some(Duration::from_secs(90)));
        assert_eq!(parse("2d").unwrap(), Some(Duration::from_secs(172_800)));
        assert_eq!(parse("0").unwrap(), None);
        assert_eq!(parse("0h").unwrap(), None);
        for bad in ["", "h", "10", "1.5h", "-1h", "10 h", "5w"] {
            assert!(parse_interval(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_round_is_spread_over_the_interval() {
        assert_eq!(spacing(Duration::from_secs(3600), 4), Duration::from_secs(900));
        assert_eq!(spacing(Duration::from_secs(60), 0), Duration::from_secs(60));
    }
}
