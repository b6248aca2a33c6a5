//! Polling modes and the adaptive back-off.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// How a reactor waits for work when it has nothing runnable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PollMode {
    /// Busy-poll the completion queue and the mailbox: lowest latency, one core always at 100%.
    Poll,
    /// Block in `io_uring_enter` until a completion, a mailbox doorbell or a timer fires.
    Interrupt,
    /// Poll while work flows, block once it dries up; the spin window follows the measured
    /// rate of events (see [`Adaptive`]).
    #[default]
    Adaptive,
}

impl PollMode {
    /// The mode's name as used on command lines and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            PollMode::Poll => "poll",
            PollMode::Interrupt => "interrupt",
            PollMode::Adaptive => "adaptive",
        }
    }
}

impl fmt::Display for PollMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PollMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "poll" => Ok(PollMode::Poll),
            "interrupt" => Ok(PollMode::Interrupt),
            "adaptive" => Ok(PollMode::Adaptive),
            other => Err(format!(
                "unknown poll mode {other:?} (poll, interrupt, adaptive)"
            )),
        }
    }
}

/// Longest a reactor spins before sleeping, however busy it has been.
pub const MAX_SPIN: Duration = Duration::from_micros(200);
/// Longest an adaptive reactor polls while short operations (device I/O, sends) are in flight.
pub const MAX_SPIN_INFLIGHT: Duration = Duration::from_millis(1);
/// Below this many events per second spinning cannot pay for itself: sleep at once.
pub const MIN_RATE_TO_SPIN: f64 = 2_000.0;
const WINDOW: Duration = Duration::from_millis(10);
/// Events' worth of time an idle-but-loaded reactor keeps spinning.
pub const SPIN_EVENTS: f64 = 32.0;

/// The adaptive back-off: decides how long an idle reactor keeps polling before it blocks.
///
/// Every loop iteration that found work reports it with [`Adaptive::activity`]. Over windows of
/// 10 ms the tuner measures the event rate (completions and tasks run per second) and keeps an
/// exponentially weighted average of it. The spin window is the time a few events take at that
/// rate — long enough that, under load, the next completion normally arrives while we still
/// spin (no sleep/wake-up cost, latency as in `poll` mode) — capped at [`MAX_SPIN`], and zero
/// when the rate is too low for spinning to pay (so an idle reactor costs no CPU).
#[derive(Debug)]
pub struct Adaptive {
    window_start: Instant,
    window_events: u64,
    rate: f64,
    spin: Duration,
}

impl Adaptive {
    /// A tuner that starts out idle (no spinning).
    pub fn new(now: Instant) -> Adaptive {
        Adaptive {
            window_start: now,
            window_events: 0,
            rate: 0.0,
            spin: Duration::ZERO,
        }
    }

    /// Records `events` units of work done at `now`.
    pub fn activity(&mut self, now: Instant, events: u64) {
        self.window_events += events;
        self.roll(now);
    }

    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < WINDOW {
            return;
        }
        let sample = self.window_events as f64 / elapsed.as_secs_f64();
        // The old average halves every window that passed, so a long idle gap forgets it.
        let keep = 0.5f64.powf(elapsed.as_secs_f64() / WINDOW.as_secs_f64());
        self.rate = keep * self.rate + (1.0 - keep) * sample;
        self.window_start = now;
        self.window_events = 0;
        self.spin = if self.rate < MIN_RATE_TO_SPIN {
            Duration::ZERO
        } else {
            // Time for SPIN_EVENTS events at the measured rate: long enough to bridge the
            // bursty gaps of a loaded queue, so a loaded reactor almost never pays a wake-up.
            Duration::from_secs_f64(SPIN_EVENTS / self.rate).min(MAX_SPIN)
        };
    }

    /// How long to keep polling after the last activity before blocking.
    pub fn spin_window(&mut self, now: Instant) -> Duration {
        self.roll(now);
        self.spin
    }

    /// The measured event rate, events per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_spins_idle_sleeps() {
        let t0 = Instant::now();
        let mut a = Adaptive::new(t0);
        assert_eq!(a.spin_window(t0), Duration::ZERO);
        // 100k events/s for 50 ms.
        for i in 0..5_000u64 {
            a.activity(t0 + Duration::from_micros(i * 10), 1);
        }
        let busy = a.spin_window(t0 + Duration::from_millis(50));
        assert!(busy > Duration::ZERO && busy <= MAX_SPIN, "{busy:?}");
        // Then a second of silence: the window closes.
        let idle = a.spin_window(t0 + Duration::from_millis(1050));
        let idle2 = a.spin_window(t0 + Duration::from_millis(1100));
        assert!(idle <= busy);
        assert_eq!(idle2.max(idle), idle);
        let later = a.spin_window(t0 + Duration::from_secs(3));
        let later = later.min(a.spin_window(t0 + Duration::from_secs(4)));
        assert_eq!(later, Duration::ZERO);
    }

    #[test]
    fn parses_modes() {
        assert_eq!("poll".parse::<PollMode>().unwrap(), PollMode::Poll);
        assert!("spin".parse::<PollMode>().is_err());
        assert_eq!(PollMode::default(), PollMode::Adaptive);
    }
}
