//! The response futures of one HTTP/2 connection's streams, polled from the connection's
//! task, each in a slot that later streams reuse.
//!
//! A stream's future (the proxy's work on one request) is several KiB. A task or a
//! `FuturesUnordered` entry per stream allocates that much and copies the future into it for
//! every request; a slot keeps its box, so a new stream's future is written into memory the
//! previous one used. Each slot has its own waker, made once: waking it marks the slot in
//! a shared bit set and wakes the connection's task, which polls only the marked slots.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// The most slots: the bits of the ready set.
pub(super) const MAX: usize = 128;
/// Slots below this index keep their box when freed; the others give it back, so a
/// connection that once had many streams does not keep their memory.
const KEEP: usize = 16;

/// Which slots were woken, and the task to tell.
#[derive(Default)]
struct Ready {
    bits: [AtomicU64; MAX / 64],
    conn: AtomicWaker,
}

impl Ready {
    fn mark(&self, index: usize) {
        self.bits[index / 64].fetch_or(1 << (index % 64), Ordering::AcqRel);
    }
}

/// One slot's waker.
struct SlotWaker {
    index: usize,
    ready: Arc<Ready>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.mark(self.index);
        self.ready.conn.wake();
    }
}

/// A slot: the stream it runs (0 when free) and its future's box.
struct Slot<F> {
    id: u32,
    future: Option<Pin<Box<Option<F>>>>,
    waker: Waker,
}

/// The running streams' futures.
pub(super) struct Slots<F> {
    slots: Vec<Slot<F>>,
    ready: Arc<Ready>,
    /// Slots woken and taken from `ready`, not polled yet.
    taken: [u64; MAX / 64],
    running: usize,
}

impl<F: Future> Slots<F> {
    /// No slots yet.
    pub(super) fn new() -> Slots<F> {
        Slots {
            slots: Vec::new(),
            ready: Arc::default(),
            taken: [0; MAX / 64],
            running: 0,
        }
    }

    /// Whether no stream is running.
    pub(super) fn is_empty(&self) -> bool {
        self.running == 0
    }

    /// Runs `future` for stream `id`; it is polled at the next [`Slots::next`]. At most
    /// [`MAX`] run at once (the connection refuses streams past its smaller limit).
    pub(super) fn start(&mut self, id: u32, future: F) {
        let index = match self.slots.iter().position(|s| s.id == 0) {
            Some(index) => index,
            None => {
                let index = self.slots.len();
                assert!(index < MAX, "more streams than slots");
                let waker = Waker::from(Arc::new(SlotWaker {
                    index,
                    ready: self.ready.clone(),
                }));
                self.slots.push(Slot {
                    id: 0,
                    future: None,
                    waker,
                });
                index
            }
        };
        let slot = &mut self.slots[index];
        slot.id = id;
        match &mut slot.future {
            Some(boxed) => boxed.as_mut().set(Some(future)),
            None => slot.future = Some(Box::pin(Some(future))),
        }
        self.running += 1;
        self.taken[index / 64] |= 1 << (index % 64);
    }

    /// Drops stream `id`'s future, if it is still running.
    pub(super) fn cancel(&mut self, id: u32) {
        if let Some(index) = self.slots.iter().position(|s| s.id == id) {
            self.free(index);
        }
    }

    fn free(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        slot.id = 0;
        if index < KEEP {
            if let Some(boxed) = &mut slot.future {
                boxed.as_mut().set(None);
            }
        } else {
            slot.future = None;
        }
        self.running -= 1;
    }

    /// Polls the woken streams until one finishes: its id and output (`None`: it panicked);
    /// `None` once every woken stream has been polled. The connection's task is woken when
    /// any stream is.
    pub(super) fn next(&mut self, cx: &Context<'_>) -> Option<(u32, Option<F::Output>)> {
        if let Some(done) = self.poll_taken() {
            return Some(done);
        }
        // Registered before the marks are read: a wake from now on reaches the task.
        self.ready.conn.register(cx.waker());
        for (taken, bits) in self.taken.iter_mut().zip(&self.ready.bits) {
            *taken = bits.swap(0, Ordering::AcqRel);
        }
        self.poll_taken()
    }

    /// Polls the taken slots until one finishes.
    fn poll_taken(&mut self) -> Option<(u32, Option<F::Output>)> {
        for word in 0..self.taken.len() {
            while self.taken[word] != 0 {
                let bit = self.taken[word].trailing_zeros() as usize;
                self.taken[word] &= self.taken[word] - 1;
                if let Some(done) = self.poll_slot(word * 64 + bit) {
                    return Some(done);
                }
            }
        }
        None
    }

    fn poll_slot(&mut self, index: usize) -> Option<(u32, Option<F::Output>)> {
        let slot = self.slots.get_mut(index).filter(|s| s.id != 0)?;
        let future = slot.future.as_mut()?.as_mut().as_pin_mut()?;
        let mut cx = Context::from_waker(&slot.waker);
        let id = slot.id;
        let output = match std::panic::catch_unwind(AssertUnwindSafe(|| future.poll(&mut cx))) {
            Ok(Poll::Pending) => return None,
            Ok(Poll::Ready(output)) => Some(output),
            Err(_) => {
                tracing::error!("an HTTP/2 stream panicked; it is reset");
                None
            }
        };
        self.free(index);
        Some((id, output))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A future that finishes once `open` holds true, keeping the waker it was polled with.
    struct Gate {
        open: Shared,
    }

    impl Future for Gate {
        type Output = u8;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u8> {
            let mut gate = self.open.lock().unwrap();
            if gate.0 {
                return Poll::Ready(7);
            }
            gate.1 = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    type Shared = Arc<Mutex<(bool, Option<Waker>)>>;

    fn gate() -> (Gate, Shared) {
        let open = Arc::new(Mutex::new((false, None)));
        (Gate { open: open.clone() }, open)
    }

    #[test]
    fn only_woken_slots_are_polled_and_freed_slots_are_reused() {
        let mut slots = Slots::new();
        let woken = Arc::new(CountWake::default());
        let waker = Waker::from(woken.clone());
        let cx = Context::from_waker(&waker);
        let (a, gate_a) = gate();
        let (b, gate_b) = gate();
        slots.start(1, a);
        slots.start(3, b);
        assert!(
            slots.next(&cx).is_none(),
            "both pending after their first poll"
        );
        // Opening b and waking it polls b alone, and wakes the connection.
        let wake_b = {
            let mut g = gate_b.lock().unwrap();
            g.0 = true;
            g.1.take().unwrap()
        };
        wake_b.wake();
        assert_eq!(*woken.0.lock().unwrap(), 1);
        assert_eq!(slots.next(&cx), Some((3, Some(7))));
        assert!(slots.next(&cx).is_none());
        assert!(!slots.is_empty());
        // A new stream takes b's slot.
        let (c, _gate_c) = gate();
        slots.start(5, c);
        assert_eq!(slots.slots.len(), 2);
        assert!(slots.next(&cx).is_none());
        slots.cancel(1);
        slots.cancel(5);
        assert!(slots.is_empty());
        drop(gate_a);
    }

    #[test]
    fn a_panicking_stream_ends_alone() {
        let mut slots: Slots<Pin<Box<dyn Future<Output = u8> + Send>>> = Slots::new();
        let waker = Waker::from(Arc::new(CountWake::default()));
        let cx = Context::from_waker(&waker);
        slots.start(1, Box::pin(async { panic!("stream") }));
        slots.start(3, Box::pin(async { 1 }));
        let mut done = vec![slots.next(&cx), slots.next(&cx)];
        done.sort_by_key(|d| d.as_ref().map(|(id, _)| *id));
        assert_eq!(done, vec![Some((1, None)), Some((3, Some(1)))]);
        assert!(slots.is_empty());
    }

    #[derive(Default)]
    struct CountWake(Mutex<usize>);

    impl Wake for CountWake {
        fn wake(self: Arc<Self>) {
            *self.0.lock().unwrap() += 1;
        }
    }
}
