//! An HTTP/2 connection's streams, run inside the connection's own task.
//!
//! hyper hands each stream it accepts (and each upgraded stream's pump) to an executor. With
//! tokio's, every stream is a task of its own: spawned, scheduled and woken apart from the
//! connection, and each that finishes a response wakes the connection's task to write it.
//! [`StreamExecutor`] instead queues the stream for the connection that accepted it, and
//! [`Streams`] polls them from that connection's task, between polls of hyper's connection:
//! no task per stream, and the responses of every stream that finished in one turn are
//! written together, as a single-threaded event loop (HAProxy's, NGINX's) would.
//!
//! The hand-over goes through a per-thread inbox that [`Streams::enter`] installs around
//! each poll of the connection and of its streams, which is when hyper calls the executor.
//! Called from anywhere else, the executor spawns a task as tokio's would. The streams of a
//! connection end with it: when hyper's connection future has finished, nothing a stream
//! still produced could be delivered.

use std::cell::RefCell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use tokio::task::coop::has_budget_remaining;

/// A stream's future, as hyper hands it over.
type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

thread_local! {
    /// The inbox of the connection being polled on this thread, if any.
    static INBOX: RefCell<Option<Vec<StreamFuture>>> = const { RefCell::new(None) };
}

/// hyper's executor for HTTP/2 servers: queues each stream for the connection that accepted
/// it (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct StreamExecutor;

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        let future = INBOX.with(|inbox| match inbox.borrow_mut().as_mut() {
            Some(inbox) => {
                inbox.push(Box::pin(future));
                None
            }
            None => Some(future),
        });
        if let Some(future) = future {
            tokio::spawn(future);
        }
    }
}

/// The streams of one HTTP/2 connection.
#[derive(Default)]
pub(super) struct Streams {
    running: FuturesUnordered<Guarded>,
    /// Kept between polls so its allocation is reused.
    inbox: Vec<StreamFuture>,
    /// The streams used up the task's budget last time (see [`Streams::poll_with`]): the
    /// connection goes first this time.
    connection_first: bool,
}

impl Streams {
    /// Runs `f` (a poll of the connection, or of the streams it is given) with this
    /// connection's inbox installed, then takes in what hyper queued meanwhile; whether it
    /// queued anything.
    fn enter<R>(&mut self, f: impl FnOnce(&mut FuturesUnordered<Guarded>) -> R) -> (R, bool) {
        let inbox = std::mem::take(&mut self.inbox);
        let outer = INBOX.with(|slot| slot.borrow_mut().replace(inbox));
        // Puts back whatever was installed before, even if `f` unwinds.
        let restore = Restore(outer);
        let result = f(&mut self.running);
        let mut inbox = INBOX
            .with(|slot| slot.borrow_mut().take())
            .unwrap_or_default();
        drop(restore);
        let queued = !inbox.is_empty();
        for future in inbox.drain(..) {
            self.running.push(Guarded(future));
        }
        self.inbox = inbox;
        (result, queued)
    }

    /// Polls the streams that are ready, then the connection, until neither makes progress;
    /// the connection's result once it has finished.
    ///
    /// The streams and the connection share the task's tokio budget (each socket operation
    /// that makes progress spends one unit; past 128, tokio answers `Pending`). Streams stop
    /// being polled when it runs out, the task yields, and the connection goes first on the
    /// next turn, so many busy streams cannot keep its own reads and writes (flow control,
    /// pings) waiting.
    pub(super) fn poll_with<C: Future>(
        &mut self,
        cx: &mut Context<'_>,
        mut conn: Pin<&mut C>,
    ) -> Poll<C::Output> {
        loop {
            // Streams first, as a rule: the responses they finish are then written by the
            // poll of the connection below, together.
            let streams_first = !std::mem::take(&mut self.connection_first);
            let mut queued = false;
            if streams_first {
                ((), queued) = self.enter(|running| {
                    while has_budget_remaining() {
                        if !matches!(running.poll_next_unpin(cx), Poll::Ready(Some(()))) {
                            break;
                        }
                    }
                });
            }
            let (polled, more) = self.enter(|_| conn.as_mut().poll(cx));
            if let Poll::Ready(output) = polled {
                return Poll::Ready(output);
            }
            if !has_budget_remaining() {
                // Streams may be left ready: come back on the next turn (a self-wake, which
                // tokio treats as a yield), the connection first.
                self.connection_first = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            // After the connection went first, its streams' turn comes now.
            if streams_first && !queued && !more {
                return Poll::Pending;
            }
        }
    }
}

/// Reinstalls the inbox that was there before [`Streams::enter`] when dropped.
struct Restore(Option<Vec<StreamFuture>>);

impl Drop for Restore {
    fn drop(&mut self) {
        let outer = self.0.take();
        // Dropped outside the borrow: a stream future's own drop may call the executor.
        let left = INBOX.with(|slot| slot.replace(outer));
        drop(left);
    }
}

/// A stream whose panic ends that stream alone, as it would in a task of its own; the
/// connection and its other streams go on.
struct Guarded(StreamFuture);

impl Future for Guarded {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let stream = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| stream.as_mut().poll(cx))) {
            Ok(polled) => polled,
            Err(_) => {
                tracing::error!("an HTTP/2 stream panicked; it is dropped");
                Poll::Ready(())
            }
        }
    }
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("running", &self.running.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A connection stand-in: hands `count` streams to the executor on its first poll, each
    /// counting itself done in `done`, then finishes once they all have.
    fn connection(done: Arc<AtomicUsize>, count: usize) -> impl Future<Output = ()> {
        let mut started = false;
        std::future::poll_fn(move |_| {
            if !started {
                started = true;
                for _ in 0..count {
                    let done = done.clone();
                    StreamExecutor.execute(async move {
                        tokio::task::yield_now().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    });
                }
            }
            if done.load(Ordering::Relaxed) == count {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    #[tokio::test]
    async fn streams_handed_over_while_the_connection_is_polled_run_in_its_task() {
        let done = Arc::new(AtomicUsize::new(0));
        let conn = std::pin::pin!(connection(done.clone(), 3));
        let mut conn = conn;
        let mut streams = Streams::default();
        let before = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        let polled = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            std::future::poll_fn(|cx| {
                let polled = streams.poll_with(cx, conn.as_mut());
                // Nothing was spawned: the streams live in `streams`.
                assert_eq!(
                    tokio::runtime::Handle::current()
                        .metrics()
                        .num_alive_tasks(),
                    before
                );
                polled
            }),
        )
        .await;
        assert!(polled.is_ok(), "the connection finished");
        assert_eq!(done.load(Ordering::Relaxed), 3);
        assert!(streams.running.is_empty());
        assert!(
            INBOX.with(|slot| slot.borrow().is_none()),
            "the inbox is taken down"
        );
    }

    #[tokio::test]
    async fn outside_a_connection_the_executor_spawns_a_task() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        StreamExecutor.execute(async move {
            let _ = tx.send(());
        });
        tokio::time::timeout(std::time::Duration::from_secs(5), rx)
            .await
            .expect("the spawned stream ran")
            .unwrap();
    }

    #[tokio::test]
    async fn streams_that_use_up_the_budget_do_not_starve_their_connection() {
        let served = tokio::spawn(async {
            let mut streams = Streams::default();
            // Streams that are always ready (as with a socket that always has data): each
            // poll spends all the budget there is, and the stream is at once ready again.
            let ((), queued) = streams.enter(|_| {
                for _ in 0..4 {
                    StreamExecutor.execute(std::future::poll_fn(|cx| {
                        loop {
                            let mut unit = std::pin::pin!(tokio::task::coop::consume_budget());
                            if unit.as_mut().poll(cx).is_pending() {
                                break;
                            }
                        }
                        cx.waker().wake_by_ref();
                        Poll::<()>::Pending
                    }));
                }
            });
            assert!(queued);
            // A connection that needs budget for each of its three steps.
            let conn = std::pin::pin!(async {
                for _ in 0..3 {
                    tokio::task::coop::consume_budget().await;
                }
            });
            let mut conn = conn;
            std::future::poll_fn(|cx| streams.poll_with(cx, conn.as_mut())).await;
        });
        tokio::time::timeout(std::time::Duration::from_secs(5), served)
            .await
            .expect("the connection got its turns")
            .unwrap();
    }

    #[tokio::test]
    async fn a_stream_that_panics_ends_alone() {
        let done = Arc::new(AtomicUsize::new(0));
        let mut streams = Streams::default();
        let ((), queued) = streams.enter(|_| {
            StreamExecutor.execute(async { panic!("a stream's bug") });
            let done = done.clone();
            StreamExecutor.execute(async move {
                done.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert!(queued);
        let never = std::pin::pin!(std::future::pending::<()>());
        let mut never = never;
        let polled =
            std::future::poll_fn(|cx| Poll::Ready(streams.poll_with(cx, never.as_mut()))).await;
        assert!(polled.is_pending(), "the connection goes on");
        assert_eq!(done.load(Ordering::Relaxed), 1, "the other stream ran");
        assert!(
            streams.running.is_empty(),
            "the panicked stream was dropped"
        );
    }
}
