//! The least or highest of the values seen over a sliding window of time

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The least (`HIGHEST = false`) or highest (`true`) of the values added over a sliding
/// window, as a monotonic queue: each value is added and dropped once
#[derive(Debug, Clone, Default)]
pub(crate) struct Extreme<T, const HIGHEST: bool> {
    /// Values that can still become the extreme, oldest first; the front is it
    values: VecDeque<(Instant, T)>,
}

/// The least value over a window
pub(crate) type WindowMin<T> = Extreme<T, false>;

/// The highest value over a window
pub(crate) type WindowMax<T> = Extreme<T, true>;

impl<T: Copy + PartialOrd, const HIGHEST: bool> Extreme<T, HIGHEST> {
    /// Adds `value` seen at `now`; returns the extreme of those seen in the `window` up to
    /// `now`, `value` included
    pub(crate) fn push(&mut self, now: Instant, value: T, window: Duration) -> T {
        let beaten = |old: &T| {
            if HIGHEST {
                *old <= value
            } else {
                *old >= value
            }
        };
        while self.values.back().is_some_and(|(_, v)| beaten(v)) {
            self.values.pop_back();
        }
        self.values.push_back((now, value));
        while self
            .values
            .front()
            .is_some_and(|&(t, _)| now.saturating_duration_since(t) > window)
        {
            self.values.pop_front();
        }
        self.values.front().map_or(value, |&(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_and_highest_over_the_window() {
        #[allow(clippy::disallowed_methods)] // reason: an arbitrary origin for virtual time
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let w = Duration::from_secs(5);
        let (mut min, mut max) = (WindowMin::default(), WindowMax::default());
        let seen: Vec<(u32, u32)> = [5, 3, 8, 7, 9, 9, 1, 6, 6, 6]
            .into_iter()
            .enumerate()
            .map(|(i, v)| (min.push(at(i as u64), v, w), max.push(at(i as u64), v, w)))
            .collect();
        assert_eq!(
            seen,
            [
                (5, 5),
                (3, 5),
                (3, 8),
                (3, 8),
                (3, 9),
                (3, 9),
                (1, 9),
                (1, 9),
                (1, 9),
                (1, 9)
            ]
        );
        // Six seconds on, only the last value is in the window.
        assert_eq!(min.push(at(15), 4, w), 4);
        assert_eq!(max.push(at(15), 4, w), 4);
    }
}
