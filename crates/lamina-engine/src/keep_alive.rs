//! How long an idle environment is kept warm.
//!
//! `Fixed` keeps every environment for the same time. `Adaptive` follows the hybrid
//! histogram policy of "Serverless in the Wild" (Shahrad et al., USENIX ATC 2020): per
//! function version, a histogram of the idle times observed between an environment
//! finishing and the next invocation arriving; once it holds enough samples, the
//! keep-alive is the histogram's 99th percentile plus a 10% margin, so a function invoked
//! every 20 minutes stays warm for ~22 minutes and one invoked every few seconds frees its
//! memory within a minute. With too few samples, or when most idle times fall outside
//! the histogram's range, the fixed default applies (as the paper falls back to its
//! standard keep-alive). The paper's pre-warming half (unload right after an invocation
//! and start again just before the predicted next one) is not done.

use std::sync::Mutex;
use std::time::Duration;

/// The keep-alive policy chosen at start-up (`lamina serve --keep-alive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    Fixed(Duration),
    /// The histogram policy, with this fallback until a version has enough history.
    Adaptive {
        fallback: Duration,
    },
}

/// Idle-time histogram of one function version: 1-second bins up to two minutes, then
/// 1-minute bins up to four hours (the paper's range), so short gaps are told apart.
#[derive(Debug)]
pub struct IdleTimes {
    bins: Mutex<Histogram>,
}

#[derive(Debug)]
struct Histogram {
    counts: Vec<u32>,
    /// Idle times longer than the histogram's range.
    out_of_range: u32,
    total: u32,
}

const SECOND_BINS: u64 = 120;
const MINUTE_BINS: u64 = 240 - 2;
/// Samples needed before the histogram is trusted.
const MIN_SAMPLES: u32 = 10;
/// Past this share of out-of-range samples the histogram says little (the paper's cue
/// to fall back).
const MAX_OUT_OF_RANGE_SHARE: f64 = 0.5;
/// Keep-alive never goes below this: starting an environment again costs milliseconds,
/// but thrashing on jitter around a short period helps no one.
const MIN_KEEP_ALIVE: Duration = Duration::from_secs(5);

impl Default for IdleTimes {
    fn default() -> Self {
        IdleTimes {
            bins: Mutex::new(Histogram {
                counts: vec![0; (SECOND_BINS + MINUTE_BINS) as usize],
                out_of_range: 0,
                total: 0,
            }),
        }
    }
}

impl IdleTimes {
    pub const RANGE: Duration = Duration::from_secs(4 * 3600);

    fn bin_of(idle: Duration) -> Option<usize> {
        let seconds = idle.as_secs();
        if seconds < SECOND_BINS {
            Some(seconds as usize)
        } else {
            let minute = (seconds - SECOND_BINS) / 60;
            (minute < MINUTE_BINS).then(|| (SECOND_BINS + minute) as usize)
        }
    }

    /// The upper edge of a bin.
    fn bin_end(bin: usize) -> Duration {
        let bin = bin as u64;
        if bin < SECOND_BINS {
            Duration::from_secs(bin + 1)
        } else {
            Duration::from_secs(SECOND_BINS + (bin - SECOND_BINS + 1) * 60)
        }
    }

    pub fn record(&self, idle: Duration) {
        let mut histogram = self.bins.lock().unwrap_or_else(|p| p.into_inner());
        match Self::bin_of(idle) {
            Some(bin) => histogram.counts[bin] = histogram.counts[bin].saturating_add(1),
            None => histogram.out_of_range = histogram.out_of_range.saturating_add(1),
        }
        histogram.total = histogram.total.saturating_add(1);
    }

    /// The keep-alive this history supports, or `None` when it is not yet representative.
    pub fn keep_alive(&self) -> Option<Duration> {
        let histogram = self.bins.lock().unwrap_or_else(|p| p.into_inner());
        if histogram.total < MIN_SAMPLES
            || f64::from(histogram.out_of_range)
                > f64::from(histogram.total) * MAX_OUT_OF_RANGE_SHARE
        {
            return None;
        }
        // The 99th percentile of all samples, out-of-range ones included (they sit above
        // every bin, so they only matter when they are more than 1%).
        let wanted = (f64::from(histogram.total) * 0.99).ceil() as u32;
        let mut seen = 0u32;
        for (bin, count) in histogram.counts.iter().enumerate() {
            seen += count;
            if seen >= wanted {
                let p99 = Self::bin_end(bin);
                return Some((p99 + p99 / 10).max(MIN_KEEP_ALIVE));
            }
        }
        Some(Self::RANGE)
    }
}

impl KeepAlive {
    /// How long an environment of a version with this history may stay idle.
    pub fn for_history(self, history: &IdleTimes) -> Duration {
        match self {
            KeepAlive::Fixed(duration) => duration,
            KeepAlive::Adaptive { fallback } => history.keep_alive().unwrap_or(fallback),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_back_until_there_is_enough_history() {
        let policy = KeepAlive::Adaptive {
            fallback: Duration::from_secs(300),
        };
        let history = IdleTimes::default();
        for _ in 0..MIN_SAMPLES - 1 {
            history.record(Duration::from_secs(20 * 60));
        }
        assert_eq!(policy.for_history(&history), Duration::from_secs(300));
        history.record(Duration::from_secs(20 * 60));
        // 20 minutes falls in the bin ending at 21 minutes; plus 10%.
        let keep = policy.for_history(&history);
        assert_eq!(keep, Duration::from_secs(21 * 60 + 126));
    }

    #[test]
    fn frequent_functions_get_short_keep_alives_and_the_tail_counts() {
        let history = IdleTimes::default();
        for _ in 0..99 {
            history.record(Duration::from_millis(300));
        }
        assert_eq!(history.keep_alive(), Some(MIN_KEEP_ALIVE));
        // Two long gaps in 101 samples push the 99th percentile out to them.
        history.record(Duration::from_secs(90));
        history.record(Duration::from_secs(90));
        assert_eq!(
            history.keep_alive(),
            Some(Duration::from_millis(91_000 + 9_100))
        );
    }

    #[test]
    fn mostly_out_of_range_history_is_not_trusted() {
        let history = IdleTimes::default();
        for _ in 0..20 {
            history.record(Duration::from_secs(5 * 3600));
        }
        assert_eq!(history.keep_alive(), None);
        assert_eq!(
            KeepAlive::Fixed(Duration::from_secs(7)).for_history(&history),
            Duration::from_secs(7)
        );
    }
}
