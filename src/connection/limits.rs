//! Limits on what a client may send.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Fragments one message may arrive in; more closes the connection (1009).
pub(crate) const MAX_FRAGMENTS: u32 = 64;

/// Why [`Metered`] stopped reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tripped {
    /// More frames than `messagesPerSecond` / `messageBurst` allow.
    RateLimited,
    /// A message in more than [`MAX_FRAGMENTS`] fragments.
    TooFragmented,
}

impl std::fmt::Display for Tripped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tripped::RateLimited => "too many frames",
            Tripped::TooFragmented => "message in too many fragments",
        })
    }
}

impl std::error::Error for Tripped {}

impl Tripped {
    /// The limit an I/O error from [`Metered`] reports, if it is one.
    pub(crate) fn of(e: &io::Error) -> Option<Tripped> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<Tripped>()).copied()
    }
}

/// The client's socket, charged per frame as bytes arrive: tungstenite only yields whole
/// messages, so a message that never ends (empty continuation frames) would otherwise never be
/// seen. Every frame but a close takes a token of a frame bucket (four times the message rate
/// and burst, so that whole messages meet the message limit first); a message's fragments are
/// capped. Once tripped, the next read fails with the [`Tripped`] reason.
pub(crate) struct Metered<S> {
    inner: S,
    /// The frame bucket's rate and burst.
    rate: f64,
    burst: f64,
    bucket: TokenBucket,
    /// Bytes of the current frame header read so far, and how many it needs (at most 14: bytes,
    /// as every connection holds these).
    header: [u8; 14],
    have: u8,
    need: u8,
    /// Payload bytes of the current frame still to skip.
    payload: u64,
    fragments: u32,
    /// Set when a limit tripped: the next read fails with it, once.
    tripped: Option<Tripped>,
    /// After that failure, bytes pass unscanned (the close handshake drains them).
    reported: bool,
    /// Writes the socket accepted (wrapping): a blocked batch whose count still moves belongs to
    /// a client that reads, however slowly (see `connection::write`).
    writes: u32,
}

impl<S> Metered<S> {
    pub(crate) fn new(inner: S, rate: f64, burst: f64) -> Self {
        Self {
            inner,
            rate,
            burst,
            bucket: TokenBucket::new(burst),
            header: [0; 14],
            have: 0,
            need: 2,
            payload: 0,
            fragments: 0,
            tripped: None,
            reported: false,
            writes: 0,
        }
    }

    /// Writes the socket has accepted so far (wrapping).
    pub(crate) fn writes(&self) -> u32 {
        self.writes
    }

    /// Scans `bytes` (the next bytes from the client) frame by frame.
    fn scan(&mut self, mut bytes: &[u8]) -> Result<(), Tripped> {
        while !bytes.is_empty() {
            if self.payload > 0 {
                let skip = (bytes.len() as u64).min(self.payload);
                self.payload -= skip;
                bytes = &bytes[skip as usize..];
                continue;
            }
            let have = usize::from(self.have);
            let take = usize::from(self.need - self.have).min(bytes.len());
            self.header[have..have + take].copy_from_slice(&bytes[..take]);
            // At most 14 (the header's length).
            self.have += take as u8;
            bytes = &bytes[take..];
            if self.have < self.need {
                continue;
            }
            let masked = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
            let len7 = self.header[1] & 0x7f;
            let full = 2
                + masked
                + if len7 == 126 {
                    2
                } else if len7 == 127 {
                    8
                } else {
                    0
                };
            if self.need < full {
                self.need = full;
                continue;
            }
            let len = match len7 {
                126 => u16::from_be_bytes([self.header[2], self.header[3]]) as u64,
                127 => u64::from_be_bytes(self.header[2..10].try_into().unwrap_or([0; 8])),
                n => n as u64,
            };
            self.frame(self.header[0])?;
            self.payload = len;
            self.have = 0;
            self.need = 2;
        }
        Ok(())
    }

    /// Charges one frame (its first header byte).
    fn frame(&mut self, first: u8) -> Result<(), Tripped> {
        let (fin, opcode) = (first & 0x80 != 0, first & 0x0f);
        if opcode == 0x8 {
            return Ok(()); // a close is always let through
        }
        if !self.bucket.take(self.rate, self.burst, Instant::now()) {
            return Err(Tripped::RateLimited);
        }
        match opcode {
            0x0 => {
                self.fragments += 1;
                if self.fragments > MAX_FRAGMENTS {
                    return Err(Tripped::TooFragmented);
                }
                if fin {
                    self.fragments = 0;
                }
            }
            0x1 | 0x2 => self.fragments = u32::from(!fin),
            _ => {}
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let (Some(why), false) = (this.tripped, this.reported) {
            this.reported = true;
            return Poll::Ready(Err(io::Error::other(why)));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            if this.tripped.is_none() {
                // The bytes go through (whole messages among them are still answered, and
                // counted by the message rate); the next read reports the limit.
                if let Err(why) = this.scan(&buf.filled()[before..]) {
                    this.tripped = Some(why);
                }
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.writes = self.writes.wrapping_add(1);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.writes = self.writes.wrapping_add(1);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A token bucket: `rate` tokens per second, holding at most `burst`. The rate and burst are
/// the caller's (the same for every connection): every connection holds its buckets.
pub(crate) struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(burst: f64) -> Self {
        Self { tokens: burst, updated: Instant::now() }
    }

    pub(crate) fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        if rate <= 0.0 {
            return true; // 0: no limit, as for every other limit
        }
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Bytes a client may draw with its requests (replays, subscription states, error replies):
/// [`ByteBudget::BURST`] at once, refilled at [`ByteBudget::RATE`] per second.
pub(super) struct ByteBudget {
    bytes: f64,
    updated: Instant,
}

impl ByteBudget {
    /// A full replay of a default history (10,000 events of ~800 bytes) fits.
    pub(super) const BURST: f64 = 8.0 * 1024.0 * 1024.0;
    pub(super) const RATE: f64 = 64.0 * 1024.0;

    pub(super) fn new() -> Self {
        Self { bytes: Self::BURST, updated: Instant::now() }
    }

    /// Takes `n` bytes if the budget holds them.
    pub(super) fn take(&mut self, n: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.bytes = (self.bytes + elapsed * Self::RATE).min(Self::BURST);
        self.updated = now;
        if self.bytes >= n as f64 {
            self.bytes -= n as f64;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn metered_charges_frames_and_caps_fragments() {
        // A non-final text frame, then empty masked continuation frames.
        let mut m = Metered::new((), 0.0, 1.0);
        let mut bytes = vec![0x01, 0x81, 1, 2, 3, 4, b'{' ^ 1];
        // The text frame is fragment 1; 62 continuations make 63.
        for _ in 0..MAX_FRAGMENTS - 2 {
            bytes.extend_from_slice(&[0x00, 0x80, 0, 0, 0, 0]);
        }
        // Split anywhere: the scan keeps its place across reads.
        let (a, b) = bytes.split_at(9);
        assert_eq!(m.scan(a), Ok(()));
        assert_eq!(m.scan(b), Ok(()));
        assert_eq!(m.scan(&[0x00, 0x80, 0, 0]), Ok(()));
        assert_eq!(m.scan(&[0, 0]), Ok(()), "fragment 64 is allowed");
        assert_eq!(m.scan(&[0x00, 0x80, 0, 0, 0, 0]), Err(Tripped::TooFragmented));
        let mut rated = Metered::new((), 10.0, 2.0);
        let ping = [0x89, 0x80, 0, 0, 0, 0];
        assert_eq!(rated.scan(&ping), Ok(()));
        assert_eq!(rated.scan(&ping), Ok(()));
        assert_eq!(rated.scan(&ping), Err(Tripped::RateLimited));
        let mut drained = Metered::new((), 10.0, 1.0);
        assert_eq!(drained.scan(&ping), Ok(()));
        assert_eq!(drained.scan(&[0x88, 0x80, 0, 0, 0, 0]), Ok(()), "a close always passes");
    }

    #[test]
    fn token_bucket_allows_the_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(3.0);
        let mut take = |at| bucket.take(10.0, 3.0, at);
        assert!(take(start) && take(start) && take(start));
        assert!(!take(start));
        assert!(take(start + Duration::from_millis(100)));
        assert!(!take(start + Duration::from_millis(100)));
    }
}
