//! The `maxConnections` and `maxPendingRequests` circuit breakers: connections open to a
//! backend's endpoints, counted per backend, and the requests waiting for one when the
//! limit is reached. A leaf: connections hold an [`Open`] until they close.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;

/// A backend's connection count, and who waits for room.
#[derive(Debug, Default)]
pub(super) struct ConnGate {
    open: AtomicUsize,
    pending: AtomicUsize,
    /// Woken when a connection closes or goes back idle.
    released: Notify,
}

/// One connection, counted until dropped (closed).
#[derive(Debug)]
pub(super) struct Open(Arc<ConnGate>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.wake();
    }
}

impl Open {
    /// Its connection went back idle (or has room for another stream): the requests
    /// waiting look again.
    pub(super) fn idle(&self) {
        self.0.wake();
    }
}

/// Why no connection may be opened now: the field name of the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Refused(pub(super) &'static str);

/// What waiting for room gave.
pub(super) enum Room {
    /// A new connection may be opened: it counts from now.
    Open(Open),
    /// Something was released: look for an idle connection again, then ask again.
    Released,
}

impl ConnGate {
    /// Connections open now.
    pub(super) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Wakes every waiting request to look again (a connection closed, went idle, or has
    /// room for a stream).
    pub(super) fn wake(&self) {
        self.released.notify_waiters();
    }

    /// Takes a place under `max` if there is one.
    fn take(self: &Arc<Self>, max: usize) -> Option<Open> {
        let mut open = self.open.load(Ordering::Relaxed);
        while open < max {
            match self.open.compare_exchange_weak(
                open,
                open + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Open(self.clone())),
                Err(now) => open = now,
            }
        }
        None
    }

    /// A place for one more connection under `max` (`None`: no limit) if there is one now,
    /// never waiting: a forwarded TCP connection or UDP flow is refused at the limit.
    pub(super) fn try_open(self: &Arc<Self>, max: Option<u32>) -> Option<Open> {
        match max {
            None => {
                self.open.fetch_add(1, Ordering::Relaxed);
                Some(Open(self.clone()))
            }
            Some(max) => self.take(usize::try_from(max).unwrap_or(usize::MAX)),
        }
    }

    /// Room for one more connection (`max`: `None`, no limit), at once if there is some.
    /// At the limit, `make_room` may close an idle connection (of another endpoint) first;
    /// else the request waits, as one of at most `max_pending`, until `deadline` for a
    /// connection to close or go idle (then it looks again, under the same deadline).
    pub(super) async fn room(
        self: &Arc<Self>,
        max: Option<u32>,
        max_pending: u32,
        deadline: tokio::time::Instant,
        make_room: impl Fn() -> bool,
    ) -> Result<Room, Refused> {
        let Some(max) = max.map(|m| usize::try_from(m).unwrap_or(usize::MAX)) else {
            self.open.fetch_add(1, Ordering::Relaxed);
            return Ok(Room::Open(Open(self.clone())));
        };
        loop {
            if let Some(open) = self.take(max) {
                return Ok(Room::Open(open));
            }
            if !make_room() {
                break;
            }
        }
        let waiting = self.pending.fetch_add(1, Ordering::Relaxed);
        let _pending = Pending(self);
        if waiting >= usize::try_from(max_pending).unwrap_or(usize::MAX) {
            return Err(Refused("maxPendingRequests"));
        }
        // Registered before the last look, so a release in between is not missed.
        let notified = self.released.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        if let Some(open) = self.take(max) {
            return Ok(Room::Open(open));
        }
        match tokio::time::timeout_at(deadline, notified).await {
            Ok(()) => Ok(Room::Released),
            Err(_) => Err(Refused("maxConnections")),
        }
    }
}

struct Pending<'a>(&'a ConnGate);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_limit_holds_waiters_queue_and_the_queue_is_bounded() {
        let gate = Arc::new(ConnGate::default());
        let wait = std::time::Duration::from_secs(1);
        let open = |g: &Arc<ConnGate>| {
            let g = g.clone();
            let deadline = tokio::time::Instant::now() + wait;
            async move { g.room(Some(2), 1, deadline, || false).await }
        };
        let a = open(&gate).await;
        let b = open(&gate).await;
        assert!(matches!((&a, &b), (Ok(Room::Open(_)), Ok(Room::Open(_)))));
        assert_eq!(gate.open(), 2);
        // At the limit: one may wait, the next is refused at once.
        let waiter = tokio::spawn(open(&gate));
        tokio::task::yield_now().await;
        assert_eq!(open(&gate).await.err(), Some(Refused("maxPendingRequests")));
        // A connection closes: the waiter is told, and then gets room.
        drop(a);
        assert!(matches!(waiter.await, Ok(Ok(Room::Released))));
        let c = open(&gate).await;
        assert!(matches!(c, Ok(Room::Open(_))));
        // Nothing is released within the wait: refused for the connection limit.
        assert_eq!(open(&gate).await.err(), Some(Refused("maxConnections")));
        // Making room (closing an idle connection of another endpoint) lets one through.
        let idle_elsewhere = parking_lot::Mutex::new(Some(b));
        let r = gate
            .room(Some(2), 0, tokio::time::Instant::now() + wait, || {
                idle_elsewhere.lock().take().is_some()
            })
            .await;
        assert!(matches!(r, Ok(Room::Open(_))), "room made");
        assert_eq!(gate.open(), 2);
        drop(c);
    }
}
