//! Request body: read frame by frame under the route's limits while the
//! HMAC is updated, keep the frames, and replay exactly those buffers to the
//! upstream.
//!
//! No frame is copied: the `Bytes` handed out by hyper are hashed and then
//! moved into [`Frames`], which the upstream client writes as is. Trailers are
//! ignored (they never count toward the signature and are not forwarded).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::scheme::Verifier;

/// Why reading the body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("body exceeds the route's max_body_bytes")]
    TooLarge,
    #[error("body not received within request_timeout")]
    Timeout,
    #[error("body could not be read: {0}")]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The received body as the frames it arrived in. Cloning shares the
/// buffers (reference counts), it copies no byte.
#[derive(Debug, Default, Clone)]
pub struct Frames {
    bufs: Vec<Bytes>,
    len: u64,
}

impl Frames {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn frame_count(&self) -> usize {
        self.bufs.len()
    }

    /// The frames, for the schemes that cannot hash as they arrive.
    pub fn bufs(&self) -> &[Bytes] {
        &self.bufs
    }

    /// One buffer as a body (a spooled request being delivered again).
    pub fn from_bytes(bytes: Bytes) -> Frames {
        let len = bytes.len() as u64;
        Frames {
            bufs: if bytes.is_empty() {
                vec![]
            } else {
                vec![bytes]
            },
            len,
        }
    }

    /// The body as one contiguous buffer (what the spool stores).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len as usize);
        for b in &self.bufs {
            out.extend_from_slice(b);
        }
        out
    }

    /// A request body that yields these same buffers, in order.
    pub fn into_body(self) -> ReplayBody {
        ReplayBody {
            bufs: self.bufs.into_iter(),
            remaining: self.len,
        }
    }
}

/// Reads `body` to its end, feeding every data frame to `verifier` (none in
/// shadow mode once the headers already failed), failing
/// as soon as more than `limit` bytes arrived or `deadline` passed.
pub async fn read_verified<B>(
    body: &mut B,
    mut verifier: Option<&mut Verifier<'_>>,
    limit: u64,
    deadline: Instant,
) -> Result<Frames, BodyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut frames = Frames::default();
    // One timer for the whole body, made only when a frame is not there
    // yet: a small body already read with its head needs none, and a large
    // one no longer registers and cancels a timer for every frame.
    let mut timer = std::pin::pin!(None::<Sleep>);
    loop {
        let next = std::future::poll_fn(|cx| {
            if let Poll::Ready(next) = Pin::new(&mut *body).poll_frame(cx) {
                return Poll::Ready(Ok(next));
            }
            if timer.is_none() {
                timer.set(Some(tokio::time::sleep_until(deadline)));
            }
            match timer.as_mut().as_pin_mut().map(|sleep| sleep.poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Err(BodyError::Timeout)),
                _ => Poll::Pending,
            }
        })
        .await?;
        let frame = match next {
            None => return Ok(frames),
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Err(BodyError::Read(e.into())),
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers: not signed, not forwarded
        };
        frames.len += data.len() as u64;
        if frames.len > limit {
            return Err(BodyError::TooLarge);
        }
        if !data.is_empty() {
            if let Some(v) = verifier.as_deref_mut() {
                v.update(&data);
            }
            frames.bufs.push(data);
        }
    }
}

/// The upstream request body: the client's frames replayed with an exact
/// size (sent with `Content-Length`).
#[derive(Debug)]
pub struct ReplayBody {
    bufs: std::vec::IntoIter<Bytes>,
    remaining: u64,
}

impl ReplayBody {
    /// The frames not yet yielded, for a client that writes them itself.
    pub fn bufs(&self) -> &[Bytes] {
        self.bufs.as_slice()
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.bufs.next() {
            Some(buf) => {
                self.remaining -= buf.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(buf))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::{presets, Key, SignatureCheck};
    use http_body_util::BodyExt;

    fn adsumo(secret: &[u8]) -> SignatureCheck {
        let scheme = presets::preset("adsumo").unwrap();
        let key = Key::new(&scheme, "k".into(), secret, None, None).unwrap();
        SignatureCheck::new(scheme, vec![key], None)
    }

    fn signed(check: &SignatureCheck, body: &[u8]) -> http::HeaderMap {
        let mac = check.keys[0].mac().unwrap().sign(body);
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-adsumo-signature",
            hex::encode(mac.as_slice()).parse().unwrap(),
        );
        h
    }
    use std::time::Duration;

    /// A body that yields fixed chunks, one per poll.
    struct Chunks(std::vec::IntoIter<&'static [u8]>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(
                self.0
                    .next()
                    .map(|c| Ok(Frame::data(Bytes::from_static(c)))),
            )
        }
    }

    fn chunks(c: Vec<&'static [u8]>) -> Chunks {
        Chunks(c.into_iter())
    }

    #[tokio::test]
    async fn frames_are_kept_and_replayed_unchanged() {
        let check = adsumo(b"k");
        let headers = signed(&check, b"abcde");
        let mut v = check.begin(&headers, None, 0).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let frames = read_verified(
            &mut chunks(vec![b"ab", b"", b"cde"]),
            Some(&mut v),
            10,
            deadline,
        )
        .await
        .unwrap();
        assert_eq!(frames.len(), 5);
        assert_eq!(frames.frame_count(), 2);
        assert!(v.finish(frames.bufs()).is_ok());
        let replay = frames.into_body();
        assert_eq!(replay.size_hint().exact(), Some(5));
        let bytes = replay.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"abcde");
    }

    #[tokio::test]
    async fn limit_is_enforced_at_the_crossing_frame() {
        let check = adsumo(b"k");
        let mut v = check.begin(&signed(&check, b""), None, 0).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let err = read_verified(&mut chunks(vec![b"abc", b"def"]), Some(&mut v), 5, deadline)
            .await
            .unwrap_err();
        assert!(matches!(err, BodyError::TooLarge));
    }
}
