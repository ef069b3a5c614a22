//! Requests of one queue that arrive together become one script call. With
//! many connections popping (or publishing), each request's own `EVALSHA` made
//! Redis run a script per message; a round instead serves every request
//! waiting with one call, and answers them in arrival order: pops share what
//! one call took (a pop that gets nothing found the queue empty, as it would
//! have alone), publishes are appended by one call.
//!
//! The first request to arrive starts a task of its own that runs rounds, each
//! for every request waiting when it starts, until none is left: the next
//! round starts as soon as the last one has answered, without waiting for any
//! task to be woken, so Redis is not left idle between rounds while the
//! answered requests are written out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use crate::store::StoreError;

type Queues<Q, A> = Arc<Mutex<HashMap<String, Queue<Q, A>>>>;

fn lock<Q, A>(queues: &Queues<Q, A>) -> std::sync::MutexGuard<'_, HashMap<String, Queue<Q, A>>> {
    queues.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Waiter<Q, A> {
    ask: Q,
    tell: oneshot::Sender<Result<A, StoreError>>,
}

struct Queue<Q, A> {
    /// Whether a task runs this queue's rounds.
    leading: bool,
    waiting: Vec<Waiter<Q, A>>,
}

/// The requests waiting, by queue: `Q` is what one asks, `A` its answer.
pub struct Combiner<Q, A> {
    queues: Queues<Q, A>,
}

impl<Q, A> Default for Combiner<Q, A> {
    fn default() -> Self {
        Combiner {
            queues: Arc::default(),
        }
    }
}

impl<Q: Send + 'static, A: Send + 'static> Combiner<Q, A> {
    /// Serves `ask` on `queue` with the requests arriving together. `make`,
    /// called by the request that starts the queue's task, gives `round`, which
    /// answers the requests of a round, one answer each, in order, and
    /// `unsent`, which gets what was answered to callers that went away before
    /// they were told (pops put their messages back). Rounds run in a task of
    /// their own: a round serves every request waiting, so it must not stop
    /// with the caller that started it.
    pub async fn run<M, R, RF, U, UF>(&self, queue: &str, ask: Q, make: M) -> Result<A, StoreError>
    where
        M: FnOnce() -> (R, U),
        R: Fn(Vec<Q>) -> RF + Send + 'static,
        RF: Future<Output = Vec<Result<A, StoreError>>> + Send + 'static,
        U: Fn(Vec<A>) -> UF + Send + 'static,
        UF: Future<Output = Result<(), StoreError>> + Send + 'static,
    {
        let (tell, told) = oneshot::channel();
        let waiter = Waiter { ask, tell };
        let start = {
            let mut queues = lock(&self.queues);
            // Looked up by reference: under load the queue is there already,
            // and `entry` would copy its name for every request.
            match queues.get_mut(queue) {
                Some(entry) => {
                    entry.waiting.push(waiter);
                    !std::mem::replace(&mut entry.leading, true)
                }
                None => {
                    let entry = Queue {
                        leading: true,
                        waiting: vec![waiter],
                    };
                    queues.insert(queue.to_owned(), entry);
                    true
                }
            }
        };
        if start {
            let (round, unsent) = make();
            let mut rounds = Rounds {
                queues: self.queues.clone(),
                queue: queue.to_owned(),
                done: false,
            };
            tokio::spawn(async move {
                while let Some(waiting) = rounds.next() {
                    let (asks, tells): (Vec<Q>, Vec<_>) =
                        waiting.into_iter().map(|w| (w.ask, w.tell)).unzip();
                    let gone = hand_out(tells, round(asks).await);
                    // Put back before the next round, which would take past them.
                    if !gone.is_empty() {
                        if let Err(e) = unsent(gone).await {
                            tracing::warn!(queue = %rounds.queue, error = %e, "cannot put back what was taken for a request that went away");
                        }
                    }
                }
            });
        }
        told.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "a combined request ended without an answer".into(),
            ))
        })
    }
}

/// The answers of pops of up to `asks[i]` messages each, in order, from what
/// one call took for all of them (or its failure, which each is told).
pub fn shares<T>(
    asks: &[usize],
    taken: Result<Vec<T>, StoreError>,
) -> Vec<Result<Vec<T>, StoreError>> {
    match taken {
        Ok(taken) => {
            let mut taken = taken.into_iter();
            asks.iter()
                .map(|&max| Ok(taken.by_ref().take(max).collect()))
                .collect()
        }
        Err(e) => asks.iter().map(|_| Err(e.clone())).collect(),
    }
}

/// Tells each request of a round its answer, in order; returns the answers of
/// callers no longer there.
fn hand_out<A>(
    tells: Vec<oneshot::Sender<Result<A, StoreError>>>,
    answers: Vec<Result<A, StoreError>>,
) -> Vec<A> {
    let mut answers = answers.into_iter();
    let mut gone = Vec::new();
    for tell in tells {
        let answer = answers.next().unwrap_or_else(|| {
            Err(StoreError::Unavailable(
                "a combined request got no answer".into(),
            ))
        });
        if let Err(Ok(answer)) = tell.send(answer) {
            gone.push(answer);
        }
    }
    gone
}

/// The task running a queue's rounds. It ends, and the queue has no task,
/// once no request waits; should the task stop otherwise (a round panicked),
/// the requests waiting are answered with an error rather than left waiting.
struct Rounds<Q, A> {
    queues: Queues<Q, A>,
    queue: String,
    /// Set once the task has let the queue go.
    done: bool,
}

impl<Q, A> Rounds<Q, A> {
    /// The requests waiting for the next round; none, and the queue's task
    /// ends, in one step under the lock, so that a request arriving then
    /// starts a task of its own.
    fn next(&mut self) -> Option<Vec<Waiter<Q, A>>> {
        let mut queues = lock(&self.queues);
        match queues.get_mut(&self.queue) {
            Some(entry) if !entry.waiting.is_empty() => Some(std::mem::take(&mut entry.waiting)),
            _ => {
                queues.remove(&self.queue);
                self.done = true;
                None
            }
        }
    }
}

impl<Q, A> Drop for Rounds<Q, A> {
    fn drop(&mut self) {
        // Once let go, the queue may have a new task: not ours to touch.
        if !self.done {
            // Dropping the waiters' senders answers them with an error.
            lock(&self.queues).remove(&self.queue);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::store::Message;

    type Pops = Combiner<usize, Vec<Message>>;

    fn message(id: u64) -> Message {
        Message {
            id,
            value: format!("m{id}"),
            expires_at: 0,
        }
    }

    /// A queue in memory, counting the rounds that took from it.
    #[derive(Default)]
    struct Source {
        messages: Mutex<VecDeque<Message>>,
        rounds: AtomicUsize,
    }

    impl Source {
        /// A source holding messages 1 to `n`.
        fn holding(n: u64) -> Arc<Source> {
            let source = Source::default();
            source
                .messages
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend((1..=n).map(message));
            Arc::new(source)
        }

        async fn take(&self, n: usize) -> Result<Vec<Message>, StoreError> {
            self.rounds.fetch_add(1, Ordering::SeqCst);
            // A round takes time, so that pops arriving meanwhile wait for it.
            tokio::task::yield_now().await;
            let mut messages = self.messages.lock().unwrap_or_else(PoisonError::into_inner);
            let n = n.min(messages.len());
            Ok(messages.drain(..n).collect())
        }

        async fn restore(&self, back: Vec<Message>) -> Result<(), StoreError> {
            let mut messages = self.messages.lock().unwrap_or_else(PoisonError::into_inner);
            for message in back.into_iter().rev() {
                messages.push_front(message);
            }
            Ok(())
        }
    }

    /// A pop of up to `max` from `source`, through `combiner`.
    fn pop(
        combiner: &Arc<Pops>,
        source: &Arc<Source>,
        max: usize,
    ) -> tokio::task::JoinHandle<Result<Vec<Message>, StoreError>> {
        let (combiner, taking, restoring) = (combiner.clone(), source.clone(), source.clone());
        tokio::spawn(async move {
            combiner
                .run("q", max, move || {
                    (
                        move |asks: Vec<usize>| {
                            let taking = taking.clone();
                            async move {
                                let wanted = asks.iter().sum();
                                shares(&asks, taking.take(wanted).await)
                            }
                        },
                        move |back: Vec<Vec<Message>>| {
                            let restoring = restoring.clone();
                            async move { restoring.restore(back.concat()).await }
                        },
                    )
                })
                .await
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pops_together_share_rounds_and_each_message_goes_once() {
        let source = Source::holding(30);
        let combiner = Arc::new(Pops::default());
        let pops: Vec<_> = (0..50).map(|_| pop(&combiner, &source, 1)).collect();
        let mut got = Vec::new();
        for pop in pops {
            let taken = pop.await.expect("no panic").expect("no failure");
            assert!(taken.len() <= 1);
            got.extend(taken.into_iter().map(|m| m.id));
        }
        got.sort_unstable();
        assert_eq!(got, (1..=30).collect::<Vec<u64>>(), "every message once");
        assert!(
            source.rounds.load(Ordering::SeqCst) < 50,
            "{} rounds for 50 pops",
            source.rounds.load(Ordering::SeqCst)
        );
        assert!(lock(&combiner.queues).is_empty(), "no leader left behind");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_outlives_the_pop_that_started_it() {
        let source = Source::holding(3);
        let combiner = Arc::new(Pops::default());
        let stuck = Arc::new(tokio::sync::Notify::new());
        // The first round waits until told; the pop that started it goes away.
        let held = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let first = {
            let (combiner, source, stuck) = (combiner.clone(), source.clone(), stuck.clone());
            let (restoring, held) = (source.clone(), held.clone());
            tokio::spawn(async move {
                combiner
                    .run("q", 1, move || {
                        (
                            move |asks: Vec<usize>| {
                                let (source, stuck) = (source.clone(), stuck.clone());
                                let first = !held.swap(true, Ordering::SeqCst);
                                async move {
                                    if first {
                                        stuck.notified().await;
                                    }
                                    let wanted = asks.iter().sum();
                                    shares(&asks, source.take(wanted).await)
                                }
                            },
                            move |back: Vec<Vec<Message>>| {
                                let restoring = restoring.clone();
                                async move { restoring.restore(back.concat()).await }
                            },
                        )
                    })
                    .await
            })
        };
        // Until the first round has taken its request: a pop arriving before
        // that would share the first round rather than wait for the next.
        while !held.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
        let second = pop(&combiner, &source, 2);
        while lock(&combiner.queues)
            .get("q")
            .is_none_or(|q| q.waiting.is_empty())
        {
            tokio::task::yield_now().await;
        }
        first.abort();
        let _ = first.await;
        stuck.notify_one();
        // The message taken for the pop that went away is put back first.
        let taken = second.await.expect("no panic").expect("no failure");
        assert_eq!(taken.iter().map(|m| m.id).collect::<Vec<_>>(), vec![1, 2]);
        assert!(lock(&combiner.queues).is_empty(), "no leader left behind");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_that_panics_fails_its_requests_and_the_next_starts_anew() {
        let combiner = Arc::new(Pops::default());
        let failing = {
            let combiner = combiner.clone();
            tokio::spawn(async move {
                combiner
                    .run("q", 1, || {
                        (
                            |_: Vec<usize>| async { panic!("a round that fails") },
                            |_: Vec<Vec<Message>>| async { Ok(()) },
                        )
                    })
                    .await
            })
        };
        let answer = failing.await.expect("the caller itself does not panic");
        assert!(answer.is_err(), "{answer:?}");
        let source = Source::holding(1);
        // A deadline, not a wait: a queue left marked as served would hang here.
        let taken = tokio::time::timeout(Duration::from_secs(30), pop(&combiner, &source, 1))
            .await
            .expect("served, not left waiting")
            .expect("no panic")
            .expect("a new round serves it");
        assert_eq!(taken, vec![message(1)]);
        assert!(lock(&combiner.queues).is_empty(), "no task left behind");
    }

    #[test]
    fn what_a_gone_pop_was_given_is_returned() {
        let (gone, told) = oneshot::channel::<Result<Vec<Message>, StoreError>>();
        drop(told);
        let (here, answer) = oneshot::channel();
        let answers = shares(&[2, 1], Ok((1..=3).map(message).collect()));
        let unsent = hand_out(vec![gone, here], answers);
        assert_eq!(
            unsent.concat().iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![1, 2]
        );
        match answer.blocking_recv() {
            Ok(Ok(share)) => assert_eq!(share, vec![message(3)]),
            Ok(Err(_)) | Err(_) => panic!("the second pop gets 3"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishes_together_share_rounds_and_keep_their_order() {
        // A log in memory: a round appends every request's values at once.
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let rounds = Arc::new(AtomicUsize::new(0));
        let combiner = Arc::new(Combiner::<Vec<String>, Vec<usize>>::default());
        let publishes: Vec<_> = (0..40)
            .map(|i| {
                let (combiner, log, rounds) = (combiner.clone(), log.clone(), rounds.clone());
                tokio::spawn(async move {
                    let ask = vec![format!("{i}a"), format!("{i}b")];
                    combiner
                        .run("q", ask, move || {
                            (
                                move |asks: Vec<Vec<String>>| {
                                    let (log, rounds) = (log.clone(), rounds.clone());
                                    async move {
                                        rounds.fetch_add(1, Ordering::SeqCst);
                                        tokio::task::yield_now().await;
                                        let mut log =
                                            log.lock().unwrap_or_else(PoisonError::into_inner);
                                        asks.into_iter()
                                            .map(|values| {
                                                let first = log.len();
                                                log.extend(values);
                                                Ok((first..log.len()).collect())
                                            })
                                            .collect()
                                    }
                                },
                                |_gone: Vec<Vec<usize>>| async { Ok(()) },
                            )
                        })
                        .await
                })
            })
            .collect();
        let log_of = |i: usize| log.lock().unwrap_or_else(PoisonError::into_inner)[i].clone();
        for (i, publish) in publishes.into_iter().enumerate() {
            let at = publish.await.expect("no panic").expect("no failure");
            assert_eq!(at.len(), 2);
            assert_eq!(log_of(at[0]), format!("{i}a"), "each answer names its own");
            assert_eq!(
                at[1],
                at[0] + 1,
                "a request's values stay together, in order"
            );
        }
        assert_eq!(log.lock().unwrap_or_else(PoisonError::into_inner).len(), 80);
        assert!(rounds.load(Ordering::SeqCst) < 40, "rounds are shared");
        assert!(lock(&combiner.queues).is_empty(), "no leader left behind");
    }
}
