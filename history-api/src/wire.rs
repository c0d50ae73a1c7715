//! What hyper writes for a response: axum's body, or a `/v1/ticks` answer's pieces as one buffer.
//!
//! axum's body gives hyper one `Bytes` per frame, and hyper flushes whenever 16 KB are queued (the
//! history API's `max_buf_size`, which also bounds a request head), so an answer in pieces went
//! out in a write per large piece, each waking the client to read a part. As one buffer of many
//! slices, the head and every piece go out in one `writev`, and nothing is copied. The router
//! still answers with the pieces as axum's body ([`crate::page`]), so any caller of the router
//! gets them; only [`wire`], on the way to hyper, sends the same pieces the other way.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::Response;
use bytes::Buf;
use http_body::{Body as HttpBody, Frame, SizeHint};

/// On a response whose body is exactly these pieces, in order.
#[derive(Clone)]
pub(crate) struct SentInPieces(pub(crate) Arc<[Bytes]>);

/// `response` as hyper sends it: its pieces as one buffer when it carries [`SentInPieces`] and its
/// body is still the whole of them (not emptied for a HEAD, say), else its body as it is.
pub(crate) fn wire(response: Response<Body>) -> Response<WireBody> {
    let (mut parts, body) = response.into_parts();
    let body = match parts.extensions.remove::<SentInPieces>() {
        Some(SentInPieces(pieces)) => {
            let pieces = PiecesBuf::new(pieces);
            let whole = pieces.remaining() > 0
                && !body.is_end_stream()
                && body.size_hint().exact() == Some(pieces.remaining() as u64);
            if whole {
                WireBody::Pieces(Some(pieces))
            } else {
                WireBody::Axum(body)
            }
        }
        None => WireBody::Axum(body),
    };
    Response::from_parts(parts, body)
}

/// A response body as hyper sees it: see [`wire`].
pub(crate) enum WireBody {
    Axum(Body),
    /// One frame, then the end.
    Pieces(Option<PiecesBuf>),
}

impl HttpBody for WireBody {
    type Data = WireData;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<WireData>, axum::Error>>> {
        match self.get_mut() {
            WireBody::Axum(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map(|frame| frame.map_data(WireData::Bytes)))),
            WireBody::Pieces(pieces) => {
                Poll::Ready(pieces.take().map(|p| Ok(Frame::data(WireData::Pieces(p)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            WireBody::Axum(body) => body.is_end_stream(),
            WireBody::Pieces(pieces) => pieces.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            WireBody::Axum(body) => body.size_hint(),
            WireBody::Pieces(pieces) => {
                SizeHint::with_exact(pieces.as_ref().map_or(0, |p| p.remaining() as u64))
            }
        }
    }
}

/// A frame of a [`WireBody`].
pub(crate) enum WireData {
    Bytes(Bytes),
    Pieces(PiecesBuf),
}

impl Buf for WireData {
    fn remaining(&self) -> usize {
        match self {
            WireData::Bytes(bytes) => bytes.remaining(),
            WireData::Pieces(pieces) => pieces.remaining(),
        }
    }

    fn chunk(&self) -> &[u8] {
        match self {
            WireData::Bytes(bytes) => bytes.chunk(),
            WireData::Pieces(pieces) => pieces.chunk(),
        }
    }

    fn advance(&mut self, cnt: usize) {
        match self {
            WireData::Bytes(bytes) => bytes.advance(cnt),
            WireData::Pieces(pieces) => pieces.advance(cnt),
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        match self {
            WireData::Bytes(bytes) => bytes.chunks_vectored(dst),
            WireData::Pieces(pieces) => pieces.chunks_vectored(dst),
        }
    }
}

/// Pieces read as one buffer, each where it is held.
pub(crate) struct PiecesBuf {
    pieces: Arc<[Bytes]>,
    /// The piece being read, and the offset in it; past the last piece when all is read.
    at: usize,
    offset: usize,
    /// Bytes not yet read.
    left: usize,
}

impl PiecesBuf {
    fn new(pieces: Arc<[Bytes]>) -> PiecesBuf {
        let left = pieces.iter().map(Bytes::len).sum();
        let mut buf = PiecesBuf {
            pieces,
            at: 0,
            offset: 0,
            left,
        };
        buf.skip_read();
        buf
    }

    /// Moves past read and empty pieces, so that `at` is a piece with bytes left if any.
    fn skip_read(&mut self) {
        while self.at < self.pieces.len() && self.offset == self.pieces[self.at].len() {
            self.at += 1;
            self.offset = 0;
        }
    }
}

impl Buf for PiecesBuf {
    fn remaining(&self) -> usize {
        self.left
    }

    fn chunk(&self) -> &[u8] {
        self.pieces
            .get(self.at)
            .map_or(&[][..], |piece| &piece[self.offset..])
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(
            cnt <= self.left,
            "advanced {cnt} past the {} left",
            self.left
        );
        self.left -= cnt;
        while cnt > 0 {
            let here = self.pieces[self.at].len() - self.offset;
            let step = here.min(cnt);
            self.offset += step;
            cnt -= step;
            self.skip_read();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        let mut offset = self.offset;
        for piece in self.pieces.iter().skip(self.at) {
            if n == dst.len() {
                break;
            }
            if piece.len() > offset {
                dst[n] = IoSlice::new(&piece[offset..]);
                n += 1;
            }
            offset = 0;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pieces(lengths: &[usize]) -> (Arc<[Bytes]>, Vec<u8>) {
        let mut next = 0u8;
        let pieces: Vec<Bytes> = lengths
            .iter()
            .map(|&len| {
                (0..len)
                    .map(|_| {
                        next = next.wrapping_add(1);
                        next
                    })
                    .collect::<Vec<u8>>()
                    .into()
            })
            .collect();
        let whole = pieces.concat();
        (pieces.into(), whole)
    }

    proptest! {
        /// Read in any steps, directly or as the slices a writev would take, the buffer is the
        /// pieces joined, and says how much is left at every step.
        #[test]
        fn reads_as_the_pieces_joined(
            lengths in proptest::collection::vec(0usize..40, 0..8),
            steps in proptest::collection::vec((1usize..50, 0usize..4, any::<bool>()), 0..40),
        ) {
            let (pieces, whole) = pieces(&lengths);
            let mut buf = PiecesBuf::new(pieces);
            let mut read = Vec::new();
            for (step, slots, vectored) in steps {
                prop_assert_eq!(buf.remaining(), whole.len() - read.len());
                if buf.remaining() == 0 {
                    prop_assert!(buf.chunk().is_empty());
                    break;
                }
                let step = step.min(buf.remaining());
                let mut taken = Vec::new();
                if vectored {
                    let mut dst = vec![IoSlice::new(&[]); slots];
                    let n = buf.chunks_vectored(&mut dst);
                    prop_assert!(n <= slots);
                    dst[..n].iter().for_each(|s| taken.extend_from_slice(s));
                    prop_assert!(dst[..n].iter().all(|s| !s.is_empty()));
                    prop_assert!(whole[read.len()..].starts_with(&taken));
                    prop_assert!(slots == 0 || !taken.is_empty());
                } else {
                    prop_assert!(!buf.chunk().is_empty());
                    taken.extend_from_slice(buf.chunk());
                }
                let step = step.min(taken.len());
                if step == 0 {
                    continue;
                }
                read.extend_from_slice(&taken[..step]);
                buf.advance(step);
            }
            while buf.remaining() > 0 {
                let chunk = buf.chunk().to_vec();
                read.extend_from_slice(&chunk);
                buf.advance(chunk.len());
            }
            prop_assert_eq!(read, whole);
        }
    }
}
