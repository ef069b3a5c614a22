//! Pops of one queue that arrive together become one script call. With many
//! connections popping, each pop's own `EVALSHA` made Redis run a script per
//! message; a round instead takes as many as the pops waiting ask for, and
//! hands them out in arrival order (a pop that gets nothing found the queue
//! empty, as it would have alone).
//!
//! The first pop to arrive starts a round, in a task of its own, for the pops
//! waiting then; pops arriving meanwhile wait, and when the round is done the
//! first of them is told to start the next. A pop told so whose request is
//! gone hands that on the same way (the lead's guard does).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use crate::store::{Message, StoreError};

type Queues = Arc<Mutex<HashMap<String, Queue>>>;

fn lock(queues: &Queues) -> std::sync::MutexGuard<'_, HashMap<String, Queue>> {
    queues.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a waiting pop is told.
enum Told {
    /// The messages taken for it (maybe none), or the round's failure.
    Done(Result<Vec<Message>, StoreError>),
    /// Lead the next round. The lead is handed on when this is dropped, so
    /// it is not lost if the pop goes away before it reads it.
    Lead(Lead),
}

struct Waiter {
    max: usize,
    tell: oneshot::Sender<Told>,
}

#[derive(Default)]
struct Queue {
    /// Whether a pop leads a round, or has been told to lead the next.
    leading: bool,
    waiting: Vec<Waiter>,
}

/// The pops waiting, by queue.
#[derive(Default)]
pub struct Combiner {
    queues: Queues,
}

impl Combiner {
    /// Pops up to `max` messages of `queue` with the pops arriving together:
    /// `take(n)` takes up to `n` for a round; `restore` puts back what was
    /// taken for a pop whose request went away before it was told. A round
    /// runs in a task of its own: it takes for every pop waiting, so it must
    /// not stop with the request of the pop that started it.
    pub async fn pop<T, TF, R, RF>(
        &self,
        queue: &str,
        max: usize,
        take: T,
        restore: R,
    ) -> Result<Vec<Message>, StoreError>
    where
        T: FnOnce(usize) -> TF + Clone + Send + 'static,
        TF: Future<Output = Result<Vec<Message>, StoreError>> + Send + 'static,
        R: FnOnce(Vec<Message>) -> RF + Clone + Send + 'static,
        RF: Future<Output = Result<(), StoreError>> + Send + 'static,
    {
        let mut lead: Option<Lead> = None;
        loop {
            let (tell, told) = oneshot::channel();
            {
                let mut queues = lock(&self.queues);
                let entry = queues.entry(queue.to_owned()).or_default();
                entry.waiting.push(Waiter { max, tell });
                if lead.is_none() && !entry.leading {
                    entry.leading = true;
                    lead = Some(Lead::new(&self.queues, queue));
                }
            }
            if let Some(guard) = lead.take() {
                let round = lock(&self.queues)
                    .get_mut(queue)
                    .map(|entry| std::mem::take(&mut entry.waiting))
                    .unwrap_or_default();
                let wanted = round.iter().map(|w| w.max).sum::<usize>();
                let (take, restore, queue) = (take.clone(), restore.clone(), queue.to_owned());
                tokio::spawn(async move {
                    let taken = take(wanted).await;
                    let unsent = hand_out(round, taken);
                    // Put back before the next round, which would take past them.
                    if !unsent.is_empty() {
                        if let Err(e) = restore(unsent).await {
                            tracing::warn!(%queue, error = %e, "cannot put back messages taken for a pop that went away");
                        }
                    }
                    drop(guard);
                });
            }
            match told.await {
                Ok(Told::Done(result)) => return result,
                Ok(Told::Lead(guard)) => lead = Some(guard),
                // Its round ended without answering (its task panicked): try again.
                Err(_) => {}
            }
        }
    }
}

/// Gives each pop of a round its share, in arrival order; returns what was
/// taken for pops no longer there.
fn hand_out(round: Vec<Waiter>, taken: Result<Vec<Message>, StoreError>) -> Vec<Message> {
    let mut unsent = Vec::new();
    match taken {
        Ok(messages) => {
            let mut messages = messages.into_iter();
            for waiter in round {
                let share: Vec<Message> = messages.by_ref().take(waiter.max).collect();
                if let Err(Told::Done(Ok(share))) = waiter.tell.send(Told::Done(Ok(share))) {
                    unsent.extend(share);
                }
            }
        }
        Err(error) => {
            for waiter in round {
                let _ = waiter.tell.send(Told::Done(Err(error.clone())));
            }
        }
    }
    unsent
}

/// The lead of a queue's rounds: when dropped (a round done, or its pop
/// gone), it goes to the first pop waiting, or the queue has no leader.
struct Lead {
    queues: Queues,
    queue: String,
    armed: bool,
}

impl Lead {
    fn new(queues: &Queues, queue: &str) -> Lead {
        Lead {
            queues: queues.clone(),
            queue: queue.to_owned(),
            armed: true,
        }
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut queues = lock(&self.queues);
        let Some(entry) = queues.get_mut(&self.queue) else {
            return;
        };
        while !entry.waiting.is_empty() {
            let next = entry.waiting.remove(0);
            match next
                .tell
                .send(Told::Lead(Lead::new(&self.queues, &self.queue)))
            {
                Ok(()) => return,
                // That pop went away: the lead, unsent, must not hand itself
                // on again (this lock is held).
                Err(Told::Lead(mut unsent)) => unsent.armed = false,
                Err(Told::Done(_)) => {}
            }
        }
        queues.remove(&self.queue);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

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
        combiner: &Arc<Combiner>,
        source: &Arc<Source>,
        max: usize,
    ) -> tokio::task::JoinHandle<Result<Vec<Message>, StoreError>> {
        let (combiner, taking, restoring) = (combiner.clone(), source.clone(), source.clone());
        tokio::spawn(async move {
            combiner
                .pop(
                    "q",
                    max,
                    move |n| async move { taking.take(n).await },
                    move |back| async move { restoring.restore(back).await },
                )
                .await
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pops_together_share_rounds_and_each_message_goes_once() {
        let source = Arc::new(Source::default());
        source
            .messages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend((1..=30).map(message));
        let combiner = Arc::new(Combiner::default());
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
        let source = Arc::new(Source::default());
        source
            .messages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend((1..=3).map(message));
        let combiner = Arc::new(Combiner::default());
        let stuck = Arc::new(tokio::sync::Notify::new());
        // The first round waits until told; the pop that started it goes away.
        let first = {
            let (combiner, source, stuck) = (combiner.clone(), source.clone(), stuck.clone());
            let restoring = source.clone();
            tokio::spawn(async move {
                combiner
                    .pop(
                        "q",
                        1,
                        move |n| async move {
                            stuck.notified().await;
                            source.take(n).await
                        },
                        move |back| async move { restoring.restore(back).await },
                    )
                    .await
            })
        };
        while !lock(&combiner.queues).get("q").is_some_and(|q| q.leading) {
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

    #[test]
    fn what_a_gone_pop_was_given_is_returned() {
        let (gone, told) = oneshot::channel();
        drop(told);
        let (here, answer) = oneshot::channel();
        let round = vec![Waiter { max: 2, tell: gone }, Waiter { max: 1, tell: here }];
        let unsent = hand_out(round, Ok((1..=3).map(message).collect()));
        assert_eq!(unsent.iter().map(|m| m.id).collect::<Vec<_>>(), vec![1, 2]);
        match answer.blocking_recv() {
            Ok(Told::Done(Ok(share))) => assert_eq!(share, vec![message(3)]),
            Ok(Told::Done(Err(_)) | Told::Lead(_)) | Err(_) => panic!("the second pop gets 3"),
        }
    }
}
