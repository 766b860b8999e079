//! Percentiles.

use std::time::Duration;

/// Summary of a sample of latencies.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub median: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentiles of `xs` (milliseconds).
pub fn summarize(xs: &[f64]) -> Summary {
    if xs.is_empty() {
        return Summary::default();
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Summary {
        median: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        max: v[v.len() - 1],
    }
}

impl Summary {
    /// `median / p90 / p99 / max` cells.
    pub fn cells(&self) -> String {
        format!(
            "{:.1} | {:.1} | {:.1} | {:.1}",
            self.median, self.p90, self.p99, self.max
        )
    }
}
