//! Exponential backoff with jitter, for every retry loop: a replication sender whose
//! replica is down, a replica whose leader is unreachable, a local replica reconnecting
//! to the leader's socket, the log writer retrying a failed disk.
//!
//! Each delay is drawn between half and all of the current step ("equal jitter"), so
//! that many clients that failed together do not retry together; the step doubles up
//! to the cap and goes back to the start on success.

use std::time::Duration;

/// A backoff schedule; see the module docs.
#[derive(Debug, Clone)]
pub struct Backoff {
    start: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(start: Duration, max: Duration) -> Self {
        Backoff {
            start,
            max: max.max(start),
            step: start,
        }
    }

    /// The delay to wait before the next attempt; doubles the step for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(self.max);
        let half = step / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// The last attempt succeeded: start again from the first step.
    pub fn reset(&mut self) {
        self.step = self.start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_and_reset() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000));
        for step in [100, 200, 400, 800, 1000, 1000] {
            let d = b.next_delay();
            assert!(
                d >= ms(step / 2) && d <= ms(step),
                "{d:?} for step {step} ms"
            );
        }
        b.reset();
        assert!(b.next_delay() <= ms(100));
        // Jitter: delays for the same step differ.
        let draws: std::collections::HashSet<Duration> = (0..20)
            .map(|_| Backoff::new(ms(1000), ms(1000)).next_delay())
            .collect();
        assert!(draws.len() > 1);
    }
}
