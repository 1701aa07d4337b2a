//! The first request's head, read before hyper takes the connection: a client that sends
//! half a request costs a small buffer here, not hyper's per-connection buffers.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The longest request head accepted (hyper's own buffer is this size).
pub const MAX_HEAD: usize = 8192;

/// Reads until the end of the request head (`\r\n\r\n`), within `timeout`. `None` when the
/// client closed or timed out, or sent a head larger than [`MAX_HEAD`] (it is told so).
pub async fn read_head<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(256);
    let read = async {
        loop {
            let mut chunk = [0u8; 512];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            let from = head.len().saturating_sub(3);
            head.extend_from_slice(&chunk[..n]);
            if head[from..].windows(4).any(|w| w == b"\r\n\r\n") {
                return Some(true);
            }
            if head.len() > MAX_HEAD {
                return Some(false);
            }
        }
    };
    match tokio::time::timeout(timeout, read).await.ok().flatten()? {
        true => Some(head),
        false => {
            let _ = stream.write_all(TOO_LARGE).await;
            let _ = stream.shutdown().await;
            None
        }
    }
}

const TOO_LARGE: &[u8] =
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

/// A stream that yields `prefix` before reading from `inner`.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
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

    #[tokio::test]
    async fn reads_a_head_then_replays_it_ahead_of_the_rest() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody")
            .await
            .expect("write");
        let head = read_head(&mut server, Duration::from_secs(1))
            .await
            .expect("a head");
        assert!(head.ends_with(b"\r\n\r\n") || head.ends_with(b"body"));
        let mut all = Vec::new();
        drop(client);
        Prefixed::new(head, server)
            .read_to_end(&mut all)
            .await
            .expect("read");
        assert_eq!(all, b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody");
    }

    #[tokio::test]
    async fn gives_up_on_half_sent_and_oversized_heads() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        assert!(
            read_head(&mut server, Duration::from_millis(50))
                .await
                .is_none()
        );
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client
            .write_all(&[b'a'; MAX_HEAD + 600])
            .await
            .expect("write");
        assert!(
            read_head(&mut server, Duration::from_secs(1))
                .await
                .is_none()
        );
    }
}
