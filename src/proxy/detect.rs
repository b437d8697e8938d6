//! Protocol detection for `protocol: auto` (and for HTTP connections that
//! negotiated nothing by ALPN): read the first bytes, with a short timeout,
//! and tell HTTP/2 prior knowledge, HTTP/1.x, opaque TCP and silence
//! apart. Only bytes that no HTTP server could take as a request are TCP.
//! The bytes read are replayed in front of the stream by [`Rewind`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Tcp,
    /// Nothing arrived before the timeout. Silence is not evidence of
    /// anything: on an inbound `auto` listener the app speaking first is
    /// (see `proxy/inbound`); outbound, the local app is trusted to be
    /// what it is and silence means a server-first protocol.
    Silent,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longer than any registered HTTP method.
const MAX_METHOD: usize = 20;

/// Decides from the bytes so far, or `None` when more are needed.
///
/// The rule leans to HTTP: anything an HTTP server might take as a request
/// is HTTP here, so a peer cannot dress a request up to pass as opaque
/// bytes and reach the app around per-request policy. Empty lines and
/// blanks before the request line are skipped (RFC 9112 §2.2 has servers
/// skip empty lines, and some skip more); a method is letters and `-` in
/// either case (methods are case-sensitive, but lenient apps fold them),
/// followed by a space or a tab. Anything else in the first bytes is TCP.
pub fn classify(buf: &[u8]) -> Option<Detected> {
    let start = buf
        .iter()
        .position(|c| !matches!(c, b'\r' | b'\n' | b' ' | b'\t'))?;
    let rest = &buf[start..];
    if start == 0 {
        let n = rest.len().min(H2_PREFACE.len());
        if rest[..n] == H2_PREFACE[..n] {
            return (n == H2_PREFACE.len()).then_some(Detected::Http2);
        }
    }
    for (i, &c) in rest.iter().enumerate().take(MAX_METHOD + 1) {
        match c {
            b' ' | b'\t' if i > 0 => return Some(Detected::Http1),
            b'A'..=b'Z' | b'a'..=b'z' | b'-' if i < MAX_METHOD => {}
            _ => return Some(Detected::Tcp),
        }
    }
    None
}

/// Reads until the protocol is known, or `timeout` passes. Bytes that
/// could still begin an HTTP request when time runs out, the buffer fills
/// or the peer stops sending are HTTP/1 (the HTTP server then answers them
/// or times them out); no bytes at all is [`Detected::Silent`] (or TCP, if
/// the peer closed). Returns the verdict and every byte read, to be
/// replayed.
pub async fn detect<S: AsyncRead + Unpin>(
    io: &mut S,
    timeout: Duration,
) -> io::Result<(Detected, Bytes)> {
    detect_from(io, BytesMut::with_capacity(512), timeout).await
}

/// As [`detect`], continuing from bytes already read.
pub async fn detect_from<S: AsyncRead + Unpin>(
    io: &mut S,
    mut buf: BytesMut,
    timeout: Duration,
) -> io::Result<(Detected, Bytes)> {
    buf.reserve(512usize.saturating_sub(buf.len()));
    let deadline = tokio::time::Instant::now() + timeout;
    let undecided = |buf: &BytesMut| {
        if buf.is_empty() {
            Detected::Silent
        } else {
            Detected::Http1
        }
    };
    loop {
        if let Some(v) = classify(&buf) {
            return Ok((v, buf.freeze()));
        }
        if buf.len() >= 512 {
            return Ok((Detected::Http1, buf.freeze()));
        }
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await;
        match read {
            Err(_) => return Ok((undecided(&buf), buf.freeze())),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) if buf.is_empty() => return Ok((Detected::Tcp, buf.freeze())),
            Ok(Ok(0)) => {
                let v = classify(&buf).unwrap_or(Detected::Http1);
                return Ok((v, buf.freeze()));
            }
            Ok(Ok(_)) => {}
        }
    }
}

/// A stream that first replays bytes already read from it.
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Rewind { prefix, inner }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn classifies_first_bytes() {
        use Detected::*;
        for (bytes, want) in [
            (&b"GET / HTTP/1.1\r\n"[..], Some(Http1)),
            (b"POST ", Some(Http1)),
            (b"M-SEARCH * HTTP/1.1", Some(Http1)),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(Http2)),
            (b"PRI * HTTP/2", None),
            (b"PRI", None),
            (b"GE", None),
            (b"", None),
            (b"\x16\x03\x01\x02\x00", Some(Tcp)),
            // What an app may still read as a request is HTTP.
            (b"get / HTTP/1.1", Some(Http1)),
            (b"GET\t/admin HTTP/1.1", Some(Http1)),
            (b"\r\nGET /admin HTTP/1.1", Some(Http1)),
            (b"\r\n\r\n\n  GET /", Some(Http1)),
            (b" GET /", Some(Http1)),
            (b"\r\n", None),
            (b"\r\nGE", None),
            (b"\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(Http1)),
            (b"SSH-2.0-OpenSSH_9.6p1 Ubuntu", Some(Tcp)),
            (b"*1\r\n$4\r\nPING\r\n", Some(Tcp)),
            (b"AAAAAAAAAAAAAAAAAAAAAAAA", Some(Tcp)),
            (b"PRI * HTTP/1.1\r\n", Some(Http1)),
        ] {
            assert_eq!(
                classify(bytes),
                want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[tokio::test]
    async fn detection_waits_for_enough_bytes_then_replays_them() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            client.write_all(b"PRI * HTT").await.unwrap();
            tokio::task::yield_now().await;
            client
                .write_all(b"P/2.0\r\n\r\nSM\r\n\r\nrest")
                .await
                .unwrap();
            client
        });
        let (d, prefix) = detect(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(d, Detected::Http2);
        let _client = writer.await.unwrap();
        let mut rewound = Rewind::new(prefix, server);
        let mut got = vec![0u8; 28];
        rewound.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nrest");
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_silence_not_tcp() {
        let (_client, mut server) = tokio::io::duplex(64);
        let (d, prefix) = detect(&mut server, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(d, Detected::Silent);
        assert!(prefix.is_empty());
    }

    /// A request that stalls part-way, or hides behind a buffer's worth of
    /// empty lines, is still HTTP: stalling is not a way around L7.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_or_padded_request_is_http() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(b"GE").await.unwrap();
        let (d, prefix) = detect(&mut server, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!((d, &prefix[..]), (Detected::Http1, &b"GE"[..]));

        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(&b"\r\n".repeat(600)).await.unwrap();
        let (d, _) = detect(&mut server, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(d, Detected::Http1);

        // A peer that closes after part of a method.
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"\r\nGE").await.unwrap();
        drop(client);
        let (d, _) = detect(&mut server, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(d, Detected::Http1);
    }
}
