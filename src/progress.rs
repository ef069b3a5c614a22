//! A one-line progress bar on stderr, for `restmq bench`'s phases.
//!
//! Drawn by a task of its own a few times a second, and only when stderr is a
//! terminal: a log file or a pipe gets no carriage returns, and the benchmark's
//! hot loops pay one relaxed atomic add per counted item only when a bar is shown.

use std::io::{self, IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval};

/// How often the bar is redrawn.
const TICK: Duration = Duration::from_millis(200);

/// Width of the bar itself, in characters.
const WIDTH: usize = 30;

/// Whether bars are drawn.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    shown: bool,
}

/// When a step is complete.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Goal {
    /// After this long (a timed phase); the count is shown beside it.
    Time(Duration),
    /// At this count.
    Count(u64),
}

impl Progress {
    /// Bars on stderr when it is a terminal, none otherwise.
    pub(crate) fn on_terminal() -> Progress {
        Progress {
            shown: io::stderr().is_terminal(),
        }
    }

    /// No bars (the library's entry points, the tests).
    pub(crate) fn hidden() -> Progress {
        Progress { shown: false }
    }

    /// A counter for a bar, to share with the tasks doing the work; `None`
    /// when no bar is shown, so that they skip counting altogether.
    pub(crate) fn counter(self) -> Option<Arc<AtomicU64>> {
        self.shown.then(|| Arc::new(AtomicU64::new(0)))
    }

    /// Starts drawing a bar labelled `label`, full at `goal`, showing `count`
    /// (from [`Progress::counter`]); nothing is drawn without one.
    pub(crate) fn start(self, label: &str, goal: Goal, count: Option<Arc<AtomicU64>>) -> Bar {
        let Some(count) = count.filter(|_| self.shown) else {
            return Bar {
                stop: None,
                task: None,
            };
        };
        let (stop, mut stopped) = oneshot::channel::<()>();
        let label = label.to_owned();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut ticks = interval(TICK);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    // Sent by `finish`, or the bar was dropped (an error ended the step).
                    _ = &mut stopped => break,
                    _ = ticks.tick() => {
                        let line = render(&label, goal, count.load(Ordering::Relaxed), started.elapsed());
                        // A bar that cannot be drawn is no reason to stop measuring.
                        let _ = write!(io::stderr().lock(), "\r{line}\x1b[K");
                    }
                }
            }
            // Cleared, so that the report starts on a clean line.
            let _ = write!(io::stderr().lock(), "\r\x1b[K");
        });
        Bar {
            stop: Some(stop),
            task: Some(task),
        }
    }
}

/// Adds `n` to a bar's counter, if there is one.
pub(crate) fn bump(counter: Option<&Arc<AtomicU64>>, n: u64) {
    if let Some(count) = counter {
        count.fetch_add(n, Ordering::Relaxed);
    }
}

/// A bar being drawn (or not, when hidden).
#[derive(Debug)]
pub(crate) struct Bar {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Bar {
    /// Stops drawing and clears the line.
    pub(crate) async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// One frame: `label [=====>    ]  42%  12345 (6789/s)  3.0s`.
fn render(label: &str, goal: Goal, count: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    // Counts far below 2^52 and fractions of a bar: the casts lose nothing that shows.
    #[allow(clippy::cast_precision_loss)]
    let fraction = match goal {
        Goal::Time(total) if !total.is_zero() => secs / total.as_secs_f64(),
        Goal::Count(total) if total > 0 => count as f64 / total as f64,
        Goal::Time(_) | Goal::Count(_) => 1.0,
    }
    .clamp(0.0, 1.0);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let (filled, percent, rate) = (
        (fraction * WIDTH as f64).round() as usize,
        (fraction * 100.0).floor() as u64,
        if secs > 0.0 { count as f64 / secs } else { 0.0 },
    );
    let mut bar = "=".repeat(filled);
    if filled < WIDTH {
        bar.push('>');
        bar.push_str(&" ".repeat(WIDTH - filled - 1));
    }
    let total = match goal {
        Goal::Count(total) => format!("/{total}"),
        Goal::Time(_) => String::new(),
    };
    format!("{label:<8} [{bar}] {percent:>3}%  {count}{total} ({rate:.0}/s)  {secs:.1}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_frame() {
        let half = render(
            "publish",
            Goal::Time(Duration::from_secs(10)),
            5000,
            Duration::from_secs(5),
        );
        assert_eq!(
            half,
            "publish  [===============>              ]  50%  5000 (1000/s)  5.0s"
        );
        let done = render("connect", Goal::Count(4), 4, Duration::from_millis(500));
        assert_eq!(
            done,
            "connect  [==============================] 100%  4/4 (8/s)  0.5s"
        );
        let over = render(
            "pop",
            Goal::Time(Duration::from_secs(1)),
            0,
            Duration::from_secs(3),
        );
        assert!(over.contains("100%"), "{over}");
    }
}
