//! Protocol detection for `protocol: auto` (and for HTTP connections that
//! negotiated nothing by ALPN): read the first bytes, with a short timeout,
//! and tell HTTP/2 prior knowledge, HTTP/1.x and opaque TCP apart. The
//! bytes read are replayed in front of the stream by [`Rewind`].

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
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longer than any registered HTTP method.
const MAX_METHOD: usize = 20;

/// Decides from the bytes so far, or `None` when more are needed.
pub fn classify(buf: &[u8]) -> Option<Detected> {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Detected::Http2);
    }
    // An HTTP/1 request line starts with a method token and a space. Real
    // methods are upper-case letters (and `-`, as in `VERSION-CONTROL`).
    for (i, &c) in buf.iter().enumerate().take(MAX_METHOD + 1) {
        match c {
            b' ' if i > 0 => return Some(Detected::Http1),
            b'A'..=b'Z' | b'-' if i < MAX_METHOD => {}
            _ => return Some(Detected::Tcp),
        }
    }
    None
}

/// Reads until the protocol is known, the peer stops sending, or `timeout`
/// passes (then it is TCP: server-speaks-first protocols send nothing).
/// Returns the verdict and every byte read, to be replayed.
pub async fn detect<S: AsyncRead + Unpin>(
    io: &mut S,
    timeout: Duration,
) -> io::Result<(Detected, Bytes)> {
    let mut buf = BytesMut::with_capacity(512);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await;
        match read {
            Err(_) => return Ok((Detected::Tcp, buf.freeze())),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => {
                let verdict = classify(&buf).unwrap_or(Detected::Tcp);
                return Ok((verdict, buf.freeze()));
            }
            Ok(Ok(_)) => {
                if let Some(v) = classify(&buf) {
                    return Ok((v, buf.freeze()));
                }
                if buf.len() == buf.capacity() {
                    return Ok((Detected::Tcp, buf.freeze()));
                }
            }
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
            (b"get / HTTP/1.1", Some(Tcp)),
            (b" GET", Some(Tcp)),
            (b"SSH-2.0-OpenSSH", Some(Tcp)),
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
    async fn silence_is_tcp_after_the_timeout() {
        let (_client, mut server) = tokio::io::duplex(64);
        let (d, prefix) = detect(&mut server, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(d, Detected::Tcp);
        assert!(prefix.is_empty());
    }
}
