//! The bounded queue between a driver and its application
//!
//! A driver pushes the session's events; the application reads them on its own thread or
//! task, at its own pace. The queue never blocks the driver. Its policy, the same in every
//! driver:
//!
//! * **Control events** (joined, peer connected/left/failed, data received, signaling
//!   lost/restored, send failed, ...) are never dropped.
//! * **Media events** (10 ms audio chunks, video frames, encoded audio in pass-through)
//!   beyond [`SessionConfig::max_queued_media`](super::SessionConfig::max_queued_media)
//!   are dropped oldest first and counted ([`EventSender::dropped_media`]): an application
//!   that stops reading loses old media, not memory.
//! * Once the receiver is dropped, pushed events are discarded.
//!
//! It works for both kinds of reader: [`EventReceiver::recv`] blocks a thread,
//! [`EventReceiver::poll_recv`] registers a task's waker.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::Event;

/// Creates a queue that holds at most `max_media` media events (at least one)
pub fn event_queue(max_media: usize) -> (EventSender, EventReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            media: 0,
            max_media: max_media.max(1),
            dropped_media: 0,
            sender_closed: false,
            receiver_gone: false,
            waker: None,
        }),
        ready: Condvar::new(),
    });
    (
        EventSender {
            shared: shared.clone(),
        },
        EventReceiver { shared },
    )
}

/// The driver's end of the queue
#[derive(Debug, Clone)]
pub struct EventSender {
    shared: Arc<Shared>,
}

/// The application's end of the queue; events come out in the order they were pushed
///
/// Dropping it makes the sender discard everything from then on.
#[derive(Debug)]
pub struct EventReceiver {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    ready: Condvar,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Event>,
    /// Media events in `queue`
    media: usize,
    max_media: usize,
    dropped_media: u64,
    sender_closed: bool,
    receiver_gone: bool,
    waker: Option<Waker>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned lock still holds a queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn push(&mut self, event: Event) {
        if self.receiver_gone {
            return;
        }
        if event.is_media() {
            if self.media >= self.max_media {
                // The oldest media event goes; control events keep their place.
                if let Some(i) = self.queue.iter().position(Event::is_media) {
                    self.queue.remove(i);
                    self.media -= 1;
                    self.dropped_media += 1;
                }
            }
            self.media += 1;
        }
        self.queue.push_back(event);
    }

    fn pop(&mut self) -> Option<Event> {
        let event = self.queue.pop_front()?;
        if event.is_media() {
            self.media -= 1;
        }
        Some(event)
    }

    fn wake(&mut self, ready: &Condvar) {
        ready.notify_all();
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

impl EventSender {
    /// Queues one event
    pub fn push(&self, event: Event) {
        let mut state = self.shared.lock();
        state.push(event);
        state.wake(&self.shared.ready);
    }

    /// Queues every event of `events` in order, leaving it empty (one lock and one wake-up
    /// for a whole drain)
    pub fn push_all(&self, events: &mut Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let mut state = self.shared.lock();
        for event in events.drain(..) {
            state.push(event);
        }
        state.wake(&self.shared.ready);
    }

    /// Media events dropped so far because the application did not keep up
    pub fn dropped_media(&self) -> u64 {
        self.shared.lock().dropped_media
    }

    /// Whether the application has dropped its receiver
    pub fn is_receiver_gone(&self) -> bool {
        self.shared.lock().receiver_gone
    }

    /// Marks the end: once the queued events are read, the receiver returns `None`
    pub fn close(&self) {
        let mut state = self.shared.lock();
        state.sender_closed = true;
        state.wake(&self.shared.ready);
    }
}

impl EventReceiver {
    /// The next event if one is queued
    pub fn try_recv(&self) -> Option<Event> {
        self.shared.lock().pop()
    }

    /// The next event, blocking the thread; `None` once the session has ended and every
    /// event was read
    pub fn recv(&self) -> Option<Event> {
        let mut state = self.shared.lock();
        loop {
            if let Some(e) = state.pop() {
                return Some(e);
            }
            if state.sender_closed {
                return None;
            }
            state = self
                .shared
                .ready
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The next event, blocking the thread at most `timeout`; `None` on timeout or once the
    /// session has ended and every event was read
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        // The deadline is for the caller's convenience only; the core never reads a clock.
        #[allow(clippy::disallowed_methods)]
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if let Some(e) = state.pop() {
                return Some(e);
            }
            if state.sender_closed {
                return None;
            }
            #[allow(clippy::disallowed_methods)]
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self
                .shared
                .ready
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Polls for the next event from an async task; `Ready(None)` once the session has
    /// ended and every event was read
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let mut state = self.shared.lock();
        if let Some(e) = state.pop() {
            return Poll::Ready(Some(e));
        }
        if state.sender_closed {
            return Poll::Ready(None);
        }
        match &state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Events waiting to be read
    pub fn len(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// Whether no event is waiting
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Media events dropped so far because they were not read in time
    pub fn dropped_media(&self) -> u64 {
        self.shared.lock().dropped_media
    }
}

impl Drop for EventReceiver {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_gone = true;
        state.queue.clear();
        state.media = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Event;
    use crate::signal::PeerId;
    use crate::sync::PlayoutChunk;

    fn media(n: i16) -> Event {
        #[allow(clippy::disallowed_methods)]
        let playout = Instant::now();
        Event::Mesh(crate::Event::AudioPlayout {
            peer: PeerId::new("p").unwrap(),
            chunk: PlayoutChunk {
                samples: vec![n],
                channels: 1,
                media_ticks: 0,
                playout,
                concealed: false,
            },
        })
    }

    fn control(n: u8) -> Event {
        Event::Mesh(crate::Event::DataReceived {
            peer: PeerId::new("p").unwrap(),
            label: String::new(),
            message: crate::DataMessage::Binary(vec![n]),
        })
    }

    fn sample(e: &Event) -> Option<i16> {
        match e {
            Event::Mesh(crate::Event::AudioPlayout { chunk, .. }) => Some(chunk.samples[0]),
            _ => None,
        }
    }

    #[test]
    fn media_beyond_the_bound_is_dropped_oldest_first_and_control_never() {
        let (tx, rx) = event_queue(3);
        for i in 0..10 {
            tx.push(media(i));
            tx.push(control(i as u8));
        }
        assert_eq!(tx.dropped_media(), 7);
        let mut samples = Vec::new();
        let mut controls = 0;
        while let Some(e) = rx.try_recv() {
            match sample(&e) {
                Some(s) => samples.push(s),
                None => controls += 1,
            }
        }
        assert_eq!(samples, vec![7, 8, 9], "the newest media stay");
        assert_eq!(controls, 10, "no control event is ever dropped");
    }

    #[test]
    fn a_closed_queue_ends_after_its_last_event() {
        let (tx, rx) = event_queue(8);
        tx.push(control(1));
        tx.close();
        assert!(rx.recv().is_some());
        assert!(rx.recv().is_none());
        assert!(rx.recv_timeout(Duration::from_millis(1)).is_none());
    }

    #[test]
    fn a_blocked_reader_wakes_on_push() {
        let (tx, rx) = event_queue(8);
        let reader = std::thread::spawn(move || rx.recv().is_some());
        std::thread::sleep(Duration::from_millis(20));
        tx.push(control(1));
        assert!(reader.join().unwrap());
    }

    #[test]
    fn a_dropped_receiver_makes_pushes_free() {
        let (tx, rx) = event_queue(8);
        drop(rx);
        for i in 0..1000 {
            tx.push(control(i as u8));
        }
        assert!(tx.is_receiver_gone());
        assert_eq!(tx.shared.lock().queue.len(), 0);
    }
}
