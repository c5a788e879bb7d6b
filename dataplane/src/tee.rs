//! A request body copied to other requests as it is read (request mirroring). The copies
//! never hold the original back: each has a bounded backlog of bytes it has not taken yet, and
//! a copy whose backlog would pass it is cut off (its request fails, it is never sent a
//! truncated body as if whole), while the original goes on.

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use tokio::sync::mpsc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Most bytes a copy may have waiting before it is cut off.
pub const MAX_BACKLOG: usize = 1024 * 1024;
/// Most bytes all the copies sharing a budget (a process's mirrors) may have waiting at once;
/// beyond it, the copy that would pass it is cut off.
pub const MAX_TOTAL_BACKLOG: usize = 64 * 1024 * 1024;

enum Piece {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The original ended whole.
    End,
}

/// The original's side of one copy.
pub struct Sink {
    tx: mpsc::UnboundedSender<Piece>,
    backlog: Arc<AtomicUsize>,
    /// Bytes waiting in every copy of the budget.
    total: Arc<AtomicUsize>,
    cut: Arc<AtomicBool>,
}

/// A copy of a body, as a body.
pub struct Copy {
    rx: mpsc::UnboundedReceiver<Piece>,
    backlog: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
    cut: Arc<AtomicBool>,
    hint: SizeHint,
    ended: bool,
}

/// A sink and its copy, which says it has the length `hint` says the original has. `total`
/// is the budget the copy's waiting bytes count in.
pub fn channel(hint: SizeHint, total: Arc<AtomicUsize>) -> (Sink, Copy) {
    let (tx, rx) = mpsc::unbounded_channel();
    let backlog = Arc::new(AtomicUsize::new(0));
    let cut = Arc::new(AtomicBool::new(false));
    (
        Sink {
            tx,
            backlog: backlog.clone(),
            total: total.clone(),
            cut: cut.clone(),
        },
        Copy {
            rx,
            backlog,
            total,
            cut,
            hint,
            ended: false,
        },
    )
}

impl Drop for Copy {
    /// What still waits for this copy leaves the budget with it.
    fn drop(&mut self) {
        self.rx.close();
        while let Ok(piece) = self.rx.try_recv() {
            if let Piece::Data(b) = piece {
                self.total.fetch_sub(b.len(), Ordering::Relaxed);
            }
        }
    }
}

impl Copy {
    /// Whether the copy fell too far behind and was cut off.
    pub fn was_cut(&self) -> bool {
        self.cut.load(Ordering::Relaxed)
    }

    /// A flag that says, once the copy is gone, whether it was cut off.
    pub fn cut_flag(&self) -> Arc<AtomicBool> {
        self.cut.clone()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the copied request body did not reach its end")]
struct Incomplete;

impl Body for Copy {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match ready!(self.rx.poll_recv(cx)) {
            Some(Piece::Data(b)) => {
                self.backlog.fetch_sub(b.len(), Ordering::Relaxed);
                self.total.fetch_sub(b.len(), Ordering::Relaxed);
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Some(Piece::Trailers(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Some(Piece::End) => {
                self.ended = true;
                Poll::Ready(None)
            }
            // The original failed, was dropped before its end, or cut this copy off.
            None => {
                self.ended = true;
                Poll::Ready(Some(Err(Box::new(Incomplete))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// A body whose frames also go to its sinks as it is read.
pub struct Tee<B: Body<Data = Bytes>> {
    inner: B,
    sinks: Vec<Sink>,
}

impl<B: Body<Data = Bytes>> Drop for Tee<B> {
    /// A reader may stop at the original's end without polling past it (an HTTP/2 body
    /// whose end arrived on an empty frame): its copies end whole all the same.
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.end();
        }
    }
}

impl<B: Body<Data = Bytes>> Tee<B> {
    pub fn new(inner: B, sinks: Vec<Sink>) -> Self {
        Self { inner, sinks }
    }

    fn send(&mut self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            let len = data.len();
            self.sinks.retain(|s| {
                let backlog = s.backlog.load(Ordering::Relaxed);
                let total = s.total.load(Ordering::Relaxed);
                if backlog + len > MAX_BACKLOG || total + len > MAX_TOTAL_BACKLOG {
                    // Dropping the sender ends the copy with an error.
                    s.cut.store(true, Ordering::Relaxed);
                    return false;
                }
                s.backlog.fetch_add(len, Ordering::Relaxed);
                s.total.fetch_add(len, Ordering::Relaxed);
                let sent = s.tx.send(Piece::Data(data.clone())).is_ok();
                if !sent {
                    // The copy is gone (its request ended): the bytes never waited.
                    s.total.fetch_sub(len, Ordering::Relaxed);
                }
                sent
            });
        } else if let Some(t) = frame.trailers_ref() {
            self.sinks
                .retain(|s| s.tx.send(Piece::Trailers(t.clone())).is_ok());
        }
    }

    fn end(&mut self) {
        for s in self.sinks.drain(..) {
            let _ = s.tx.send(Piece::End);
        }
    }
}

impl<B> Body for Tee<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                this.send(f);
                // Whoever reads the original may stop at its end without another poll.
                if this.inner.is_end_stream() {
                    this.end();
                }
            }
            Some(Err(_)) => this.sinks.clear(),
            None => this.end(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[tokio::test]
    async fn copies_get_the_whole_body_and_its_end() {
        let (s1, c1) = channel(SizeHint::with_exact(5), Arc::default());
        let (s2, c2) = channel(SizeHint::with_exact(5), Arc::default());
        let tee = Tee::new(Full::new(Bytes::from_static(b"hello")), vec![s1, s2]);
        let original = tee.collect().await.expect("original").to_bytes();
        assert_eq!(&original[..], b"hello");
        for c in [c1, c2] {
            assert_eq!(c.size_hint().exact(), Some(5));
            let got = c.collect().await.expect("copy").to_bytes();
            assert_eq!(&got[..], b"hello");
        }
    }

    #[tokio::test]
    async fn a_copy_ends_whole_when_its_original_was_complete_but_never_read_to_its_end() {
        let (sink, copy) = channel(SizeHint::with_exact(0), Arc::default());
        drop(Tee::new(Full::new(Bytes::new()), vec![sink]));
        let got = copy.collect().await.expect("a whole copy").to_bytes();
        assert!(got.is_empty());
    }

    #[tokio::test]
    async fn the_shared_budget_cuts_copies_off_and_is_given_back() {
        let total: Arc<AtomicUsize> = Arc::default();
        let chunk = Bytes::from(vec![1u8; 512 * 1024]);
        let mut copies = Vec::new();
        let mut sinks = Vec::new();
        for _ in 0..(MAX_TOTAL_BACKLOG / chunk.len() + 1) {
            let (s, c) = channel(SizeHint::default(), total.clone());
            sinks.push(s);
            copies.push(c);
        }
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
            vec![Ok(Frame::data(chunk.clone()))];
        let tee = Tee::new(StreamBody::new(futures::stream::iter(frames)), sinks);
        let _ = tee.collect().await.expect("original");
        assert_eq!(copies.iter().filter(|c| c.was_cut()).count(), 1);
        assert!(total.load(Ordering::Relaxed) <= MAX_TOTAL_BACKLOG);
        drop(copies);
        assert_eq!(
            total.load(Ordering::Relaxed),
            0,
            "every waiting byte given back"
        );
    }

    #[tokio::test]
    async fn a_copy_that_falls_behind_is_cut_off_and_the_original_goes_on() {
        let chunk = Bytes::from(vec![7u8; 256 * 1024]);
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
            (0..8).map(|_| Ok(Frame::data(chunk.clone()))).collect();
        let (sink, copy) = channel(SizeHint::default(), Arc::default());
        let cut = copy.cut_flag();
        let tee = Tee::new(StreamBody::new(futures::stream::iter(frames)), vec![sink]);
        // Nobody reads the copy while the original is read whole.
        let original = tee.collect().await.expect("original").to_bytes();
        assert_eq!(original.len(), 8 * 256 * 1024);
        assert!(cut.load(Ordering::Relaxed));
        assert!(copy.was_cut());
        let err = copy.collect().await;
        assert!(err.is_err(), "a cut copy fails, it never ends as if whole");
    }

    #[tokio::test]
    async fn an_original_dropped_before_its_end_fails_its_copies() {
        let (sink, copy) = channel(SizeHint::default(), Arc::default());
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
        let mut tee = Tee::new(StreamBody::new(tokio_stream_from(rx)), vec![sink]);
        tx.send(Ok(Frame::data(Bytes::from_static(b"part"))))
            .await
            .expect("send");
        let first = tee.frame().await.expect("a frame").expect("ok");
        assert_eq!(first.into_data().ok().as_deref(), Some(&b"part"[..]));
        drop(tee);
        let mut copy = copy;
        let got = copy.frame().await.expect("a frame").expect("data");
        assert_eq!(got.into_data().ok().as_deref(), Some(&b"part"[..]));
        assert!(copy.frame().await.expect("an error").is_err());
    }

    fn tokio_stream_from<T>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures::Stream<Item = T> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
