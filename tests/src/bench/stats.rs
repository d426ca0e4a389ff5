//! Latency samples per RPC, errors by gRPC code, percentiles, and the text
//! table and JSON they are reported as.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};
use tonic::Code;

/// Summary of one set of samples. Percentiles are nearest-rank on the sorted
/// samples (index `(n-1)*p/100`, integer arithmetic), as in the backend bench.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub min: f64,
    pub mean: f64,
    /// 101 values: the 0th..100th percentiles (for plots).
    pub quantiles: Vec<f64>,
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Summary {
        if samples.is_empty() {
            return Summary::default();
        }
        let mut v: Vec<f64> = samples.iter().copied().map(ms).collect();
        v.sort_by(f64::total_cmp);
        let at = |p: usize| v[(v.len() - 1) * p / 100];
        Summary {
            count: v.len(),
            p50: at(50),
            p90: at(90),
            p99: at(99),
            max: v[v.len() - 1],
            min: v[0],
            mean: v.iter().sum::<f64>() / v.len() as f64,
            quantiles: (0..=100).map(at).collect(),
        }
    }

    pub fn to_json(&self) -> Value {
        let r = |x: f64| (x * 1000.0).round() / 1000.0;
        json!({
            "count": self.count,
            "p50_ms": r(self.p50),
            "p90_ms": r(self.p90),
            "p99_ms": r(self.p99),
            "max_ms": r(self.max),
            "min_ms": r(self.min),
            "mean_ms": r(self.mean),
            "quantiles_ms": self.quantiles.iter().map(|&q| r(q)).collect::<Vec<_>>(),
        })
    }
}

/// gRPC's canonical upper-case name of a code (`RESOURCE_EXHAUSTED`).
pub fn code_name(code: Code) -> String {
    let camel = format!("{code:?}");
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[derive(Debug, Default)]
struct Inner {
    /// Latencies of successful calls, by RPC (and derived spans such as
    /// "lifecycle"), in insertion order of first use.
    samples: BTreeMap<String, Vec<Duration>>,
    order: Vec<String>,
    /// (rpc, code) -> count.
    errors: BTreeMap<(String, String), u64>,
    /// First few error messages, for the report.
    messages: Vec<String>,
}

/// Thread-safe collector shared by all workers.
#[derive(Debug, Default)]
pub struct Recorder {
    inner: Mutex<Inner>,
}

const KEPT_MESSAGES: usize = 20;

impl Recorder {
    pub fn sample(&self, name: &str, d: Duration) {
        let mut inner = self.inner.lock().expect("recorder lock");
        if !inner.samples.contains_key(name) {
            inner.order.push(name.to_string());
        }
        inner.samples.entry(name.to_string()).or_default().push(d);
    }

    pub fn error(&self, rpc: &str, status: &tonic::Status) {
        let mut inner = self.inner.lock().expect("recorder lock");
        *inner.errors.entry((rpc.to_string(), code_name(status.code()))).or_default() += 1;
        if inner.messages.len() < KEPT_MESSAGES {
            inner.messages.push(format!("{rpc}: {}: {}", code_name(status.code()), status.message()));
        }
    }

    pub fn total_errors(&self) -> u64 {
        self.inner.lock().expect("recorder lock").errors.values().sum()
    }

    pub fn summaries(&self) -> Vec<(String, Summary)> {
        let inner = self.inner.lock().expect("recorder lock");
        inner.order.iter().map(|name| (name.clone(), Summary::of(&inner.samples[name]))).collect()
    }

    pub fn samples(&self, name: &str) -> Vec<Duration> {
        self.inner.lock().expect("recorder lock").samples.get(name).cloned().unwrap_or_default()
    }

    /// `{"rpcs": {...}, "errors": {...}, "errors_by_code": {...}, "error_messages": [...]}`
    pub fn to_json(&self) -> Value {
        let summaries = self.summaries();
        let inner = self.inner.lock().expect("recorder lock");
        let mut rpcs = serde_json::Map::new();
        for (name, s) in &summaries {
            let mut v = s.to_json();
            let errors: u64 = inner.errors.iter().filter(|((rpc, _), _)| rpc == name).map(|(_, n)| n).sum();
            v["errors"] = json!(errors);
            rpcs.insert(name.clone(), v);
        }
        // RPCs that only ever failed still get a row.
        for ((rpc, _), n) in &inner.errors {
            if !rpcs.contains_key(rpc) {
                rpcs.insert(rpc.clone(), json!({"count": 0, "errors": n}));
            }
        }
        let mut by_rpc = serde_json::Map::new();
        let mut by_code: BTreeMap<&str, u64> = BTreeMap::new();
        for ((rpc, code), n) in &inner.errors {
            by_rpc.insert(format!("{rpc}/{code}"), json!(n));
            *by_code.entry(code).or_default() += n;
        }
        json!({
            "rpc_order": summaries.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            "rpcs": rpcs,
            "errors": by_rpc,
            "errors_by_code": by_code,
            "error_messages": inner.messages,
        })
    }

    /// The human table: one row per RPC or span.
    pub fn table(&self) -> String {
        let summaries = self.summaries();
        let inner = self.inner.lock().expect("recorder lock");
        let mut out = format!(
            "{:<22} {:>6} {:>9} {:>9} {:>9} {:>9} {:>6}\n",
            "rpc (ms)", "count", "p50", "p90", "p99", "max", "errors"
        );
        for (name, s) in &summaries {
            let errors: u64 = inner.errors.iter().filter(|((rpc, _), _)| rpc == name).map(|(_, n)| n).sum();
            out.push_str(&format!(
                "{:<22} {:>6} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>6}\n",
                name, s.count, s.p50, s.p90, s.p99, s.max, errors
            ));
        }
        if !inner.errors.is_empty() {
            out.push_str("errors:\n");
            for ((rpc, code), n) in &inner.errors {
                out.push_str(&format!("  {rpc:<20} {code:<20} {n}\n"));
            }
            for m in inner.messages.iter().take(5) {
                out.push_str(&format!("  e.g. {m}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::of(&samples);
        assert_eq!(s.count, 100);
        assert_eq!(s.p50, 50.0);
        assert_eq!(s.p90, 90.0);
        assert_eq!(s.p99, 99.0);
        assert_eq!(s.max, 100.0);
        assert_eq!(s.quantiles.len(), 101);
        assert_eq!(Summary::of(&[]).count, 0);
    }

    #[test]
    fn code_names_are_canonical() {
        assert_eq!(code_name(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
    }
}
