//! One-shot signals from a listener to its connections: "finish up" (shutdown) and "stop now"
//! (the drain deadline).
//!
//! A connection checks these at every request and waits on them in every `select!`, which
//! polls them each time its task wakes. `tokio_util`'s `CancellationToken` takes a mutex
//! shared by every connection for each check and each poll. Here the check is one atomic
//! load, and a wait already registered with the task's waker is not polled again (the flag
//! is set before the waiters are woken, so a woken wait sees it): the shared mutex (the
//! `Notify`'s) is taken only when a wait registers and when it is dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// A flag that is set once and wakes everyone waiting for it.
#[derive(Debug, Default)]
pub(super) struct Signal {
    fired: AtomicBool,
    waiters: Notify,
}

impl Signal {
    /// Sets the flag and wakes every [`Fired`] waiting on it.
    pub(super) fn fire(&self) {
        self.fired.store(true, Ordering::SeqCst);
        self.waiters.notify_waiters();
    }

    /// Whether [`Signal::fire`] was called.
    pub(super) fn is_fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Resolves once the signal has fired (at once if it already has).
    pub(super) fn fired(&self) -> Fired<'_> {
        Fired {
            signal: self,
            notified: self.waiters.notified(),
            waker: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Signal::fired`].
    #[derive(Debug)]
    pub(super) struct Fired<'a> {
        signal: &'a Signal,
        #[pin]
        notified: Notified<'a>,
        // The waker `notified` is registered with; `None` until the first poll.
        waker: Option<Waker>,
    }
}

impl Future for Fired<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.signal.is_fired() {
            return Poll::Ready(());
        }
        if this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            // Registered with this very waker: a `fire` would have set the flag first.
            return Poll::Pending;
        }
        if this.notified.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        // Fired between the check and the registration: the wake-up went to no one.
        if this.signal.is_fired() {
            return Poll::Ready(());
        }
        *this.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_wait_ends_when_fired_and_a_late_one_at_once() {
        let signal = Arc::new(Signal::default());
        assert!(!signal.is_fired());
        let waiter = {
            let signal = signal.clone();
            tokio::spawn(async move { signal.fired().await })
        };
        // The waiter is registered once it has been polled; firing before that is covered
        // by the flag, so no ordering is needed here.
        tokio::task::yield_now().await;
        signal.fire();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter woke")
            .unwrap();
        assert!(signal.is_fired());
        signal.fired().await;
    }

    #[tokio::test]
    async fn a_wait_repolled_by_the_same_task_still_wakes() {
        let signal = Arc::new(Signal::default());
        let mut fired = std::pin::pin!(signal.fired());
        // Polled twice with the same waker (the second poll takes the shortcut).
        for _ in 0..2 {
            std::future::poll_fn(|cx| {
                assert!(fired.as_mut().poll(cx).is_pending());
                Poll::Ready(())
            })
            .await;
        }
        let firing = {
            let signal = signal.clone();
            tokio::spawn(async move { signal.fire() })
        };
        tokio::time::timeout(Duration::from_secs(5), fired)
            .await
            .expect("woken after the shortcut");
        firing.await.unwrap();
    }
}
