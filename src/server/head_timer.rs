//! The timer hyper waits on while a connection's next request head is due.
//!
//! hyper makes a new sleep for every request head it waits for and drops it
//! once the head is read. Were each a tokio sleep, each would enter tokio's
//! timer wheel and leave it again, under the wheel's lock: two lock round
//! trips per request on every keep-alive connection. Instead a connection
//! keeps one tokio sleep for all its heads. Each head's sleep only records its
//! deadline; the connection's sleep stays armed at an earlier one and, when
//! that passes, is moved on to the deadline of the head then awaited. Since
//! every deadline is the time of its wait plus the same timeout, they only move
//! forward, so a connection's sleep is re-armed about once per timeout rather
//! than for each request, and a head still times out exactly at its own
//! deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The sleep a connection keeps armed; none until its first head is awaited.
type Armed = Arc<Mutex<Option<Pin<Box<Sleep>>>>>;

/// A connection's header timer: give each connection its own.
#[derive(Default)]
pub struct HeadTimer {
    armed: Armed,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadSleep {
            deadline: Instant::from_std(deadline),
            armed: self.armed.clone(),
        })
    }

    /// tokio's clock, which hyper's deadlines are then read against.
    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

/// One head's wait: ready once `deadline` has passed.
struct HeadSleep {
    deadline: Instant,
    armed: Armed,
}

impl hyper::rt::Sleep for HeadSleep {}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        let mut armed = self.armed.lock().unwrap_or_else(PoisonError::into_inner);
        let sleep = armed.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        // Never later than this head's deadline, so that it cannot be missed.
        if sleep.deadline() > deadline {
            sleep.as_mut().reset(deadline);
        }
        loop {
            match sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if sleep.deadline() >= deadline => return Poll::Ready(()),
                // An earlier head's deadline passed: on to this one's.
                Poll::Ready(()) => sleep.as_mut().reset(deadline),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use hyper::rt::Timer;

    use super::*;

    /// Polls `sleep` once, as hyper does while a head is pending.
    fn ready(sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>) -> bool {
        let waker = std::task::Waker::noop();
        sleep
            .as_mut()
            .poll(&mut Context::from_waker(waker))
            .is_ready()
    }

    #[tokio::test(start_paused = true)]
    async fn each_head_times_out_at_its_own_deadline_on_one_armed_sleep() {
        let timer = HeadTimer::default();
        let timeout = Duration::from_secs(10);
        let start = Instant::now();
        let mut first = timer.sleep(timeout);
        assert!(!ready(&mut first), "a head just awaited is not late");
        drop(first);
        // A later head, awaited 4 s on: the sleep armed for the first head
        // passes at 10 s, and must not end this one, due at 14 s.
        tokio::time::advance(Duration::from_secs(4)).await;
        let mut second = timer.sleep(timeout);
        assert!(!ready(&mut second));
        tokio::time::advance(Duration::from_secs(7)).await;
        assert!(
            !ready(&mut second),
            "an earlier head's deadline ended a later head"
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(
            ready(&mut second),
            "the head was not timed out at its deadline"
        );
        assert_eq!(Instant::now() - start, Duration::from_secs(14));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_moves_the_armed_sleep_back() {
        let timer = HeadTimer::default();
        let mut long = timer.sleep(Duration::from_secs(60));
        assert!(!ready(&mut long));
        drop(long);
        let mut short = timer.sleep(Duration::from_secs(1));
        assert!(!ready(&mut short));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(ready(&mut short), "a shorter wait kept the longer deadline");
    }
}
