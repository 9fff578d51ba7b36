//! Latency samples per command, percentiles, and the median/min/max spread
//! over repetitions.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// At most this many samples per command and worker: memory stays bounded
/// however long a run is (later samples are dropped, not averaged in).
const MAX_SAMPLES: usize = 200_000;

/// Per-command latency samples in microseconds.
#[derive(Debug, Default, Clone)]
pub(crate) struct Lat {
    samples: BTreeMap<&'static str, Vec<u32>>,
}

impl Lat {
    pub(crate) fn record(&mut self, cmd: &'static str, d: Duration) {
        let v = self.samples.entry(cmd).or_default();
        if v.len() < MAX_SAMPLES {
            v.push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
        }
    }

    pub(crate) fn merge(&mut self, other: Lat) {
        for (k, mut v) in other.samples {
            let mine = self.samples.entry(k).or_default();
            let room = (MAX_SAMPLES * 64).saturating_sub(mine.len());
            v.truncate(room);
            mine.append(&mut v);
        }
    }

    /// p50/p99 per command, in milliseconds.
    pub(crate) fn summary(&self) -> BTreeMap<String, Percentiles> {
        self.samples
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| {
                let mut s = v.clone();
                s.sort_unstable();
                (
                    (*k).to_string(),
                    Percentiles { n: s.len(), p50_ms: pct(&s, 0.50), p99_ms: pct(&s, 0.99) },
                )
            })
            .collect()
    }
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[idx.min(sorted.len() - 1)]) / 1000.0
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct Percentiles {
    pub(crate) n: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

/// Median with min and max over repetitions.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
pub(crate) struct Spread {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Spread {
    /// `None` for no values.
    pub(crate) fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Spread { median, min: v[0], max: v[n - 1] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_and_percentiles() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[1.0, 2.0]).unwrap().median, 1.5);
        let mut l = Lat::default();
        for i in 1..=100 {
            l.record("x", Duration::from_micros(i * 1000));
        }
        let p = &l.summary()["x"];
        assert_eq!(p.n, 100);
        assert!((p.p50_ms - 50.0).abs() <= 1.0 && (p.p99_ms - 99.0).abs() <= 1.0);
    }
}
