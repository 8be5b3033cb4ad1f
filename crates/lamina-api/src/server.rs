//! The API port's connections. Invoke, the product's hot path, is read and answered by
//! this module's own HTTP/1.1; at the first request that is anything else a connection
//! hands itself, with the bytes already read, to hyper, and stays with it.
//!
//! Why not hyper for Invoke too: its per-request machinery (the dispatcher, the body
//! channel, the boxed service future, the response encoder) was about a fifth of the
//! serving thread's time at concurrency 32, where that one thread is the bottleneck of
//! the whole machine (design.md, Invoke path). Only the plainest Invoke request is taken
//! here: HTTP/1.1, a valid target, a `Content-Length` body within the synchronous payload
//! limit, and no `Transfer-Encoding`, `Expect`, `Connection`, `Upgrade` or `X-Amz-Target`
//! header. Everything else, malformed requests included, goes to hyper and is answered
//! exactly as before; every SDK's Invoke is the plain kind.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::Request;
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::{Buf, Bytes, BytesMut};
use lamina_engine::MAX_SYNC_PAYLOAD_BYTES;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::{Service, ServiceExt as _};

use crate::LambdaApi;

/// A head longer than this, or with more headers than [`MAX_HEADERS`], is left to hyper
/// (whose own limits then apply).
const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 32;
/// Bodies up to this size go out in the same `write` as the head.
const INLINE_BODY_BYTES: usize = 64 * 1024;
/// The read buffer's spare room before each read, so that a head arrives in one read.
const READ_RESERVE: usize = 8 * 1024;

/// Serves the API on `listener` until `shutdown` completes, then stops accepting, lets
/// each connection finish the request it is serving, and returns when all are closed.
/// Invoke goes to `api`; every other request to `other` (through hyper).
pub async fn serve<S>(
    listener: TcpListener,
    api: Arc<LambdaApi>,
    other: S,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let (stop_sender, stop) = watch::channel(false);
    // Each connection holds a receiver: the sender sees it closed once all have ended.
    let (open_sender, open) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                // Most likely out of file descriptors: wait for connections to close.
                tracing::error!(%error, "accept error");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let connection = Connection {
            api: api.clone(),
            other: other.clone(),
            stop: stop.clone(),
            _open: open.clone(),
        };
        tokio::spawn(connection.run(tcp));
    }
    drop(listener);
    let _ = stop_sender.send(true);
    drop((stop, open));
    open_sender.closed().await;
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

struct Connection<S> {
    api: Arc<LambdaApi>,
    other: S,
    stop: watch::Receiver<bool>,
    _open: watch::Receiver<()>,
}

impl<S> Connection<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    async fn run(mut self, mut tcp: TcpStream) {
        let mut buffer = BytesMut::new();
        loop {
            let request = loop {
                match parse(&buffer) {
                    Parsed::Invoke(request) => break request,
                    Parsed::Other => return self.hand_over(tcp, buffer).await,
                    Parsed::Partial => {}
                }
                if buffer.capacity() - buffer.len() < READ_RESERVE / 2 {
                    buffer.reserve(READ_RESERVE);
                }
                let read = if buffer.is_empty() {
                    // Between requests: a stopping server closes the connection here.
                    tokio::select! {
                        read = tcp.read_buf(&mut buffer) => read,
                        () = stopped(&mut self.stop) => return,
                    }
                } else {
                    tcp.read_buf(&mut buffer).await
                };
                match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            };
            let length = request.head_length + request.content_length;
            if buffer.len() < length {
                buffer.reserve(length - buffer.len());
            }
            while buffer.len() < length {
                match tcp.read_buf(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
            let payload = buffer
                .split_to(length)
                .split_off(request.head_length)
                .freeze();
            let response = self
                .api
                .invoke(
                    request.name,
                    request.query.as_deref(),
                    &request.headers,
                    payload,
                )
                .await;
            if write_response(&mut tcp, response).await.is_err() || *self.stop.borrow() {
                return;
            }
        }
    }

    /// Serves the rest of the connection with hyper, starting with the bytes read so far.
    async fn hand_over(mut self, tcp: TcpStream, read: BytesMut) {
        let io = hyper_util::rt::TokioIo::new(Rewind {
            read_first: read.freeze(),
            tcp,
        });
        let service = hyper_util::service::TowerToHyperService::new(
            self.other
                .map_request(|request: Request<hyper::body::Incoming>| request.map(Body::new)),
        );
        let connection = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
        let mut connection = std::pin::pin!(connection);
        let mut stopping = false;
        loop {
            tokio::select! {
                _ = connection.as_mut() => return,
                () = stopped(&mut self.stop), if !stopping => {
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the server's sender is gone, which is a stop too.
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// An Invoke request's head, parsed.
#[derive(Debug)]
struct InvokeHead {
    head_length: usize,
    content_length: usize,
    name: String,
    query: Option<String>,
    headers: HeaderMap,
}

#[derive(Debug)]
enum Parsed {
    /// More bytes are needed.
    Partial,
    Invoke(InvokeHead),
    /// Anything else: hyper's to answer.
    Other,
}

fn parse(buffer: &[u8]) -> Parsed {
    if buffer.is_empty() {
        return Parsed::Partial;
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots);
    let head_length = match request.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buffer.len() < MAX_HEAD_BYTES => {
            return Parsed::Partial;
        }
        _ => return Parsed::Other,
    };
    if request.method != Some("POST") || request.version != Some(1) {
        return Parsed::Other;
    }
    // The target as hyper would take it: a malformed one is hyper's to refuse.
    let Some(target) = request
        .path
        .and_then(|path| PathAndQuery::try_from(path).ok())
    else {
        return Parsed::Other;
    };
    let Some(name) = crate::invoke::invoke_target_path(target.path()) else {
        return Parsed::Other;
    };
    let mut content_length = None;
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    for field in request.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(field.name.as_bytes()) else {
            return Parsed::Other;
        };
        if name == header::CONTENT_LENGTH {
            let length = std::str::from_utf8(field.value)
                .ok()
                .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|digits| digits.parse::<usize>().ok());
            if content_length.is_some() || length.is_none() {
                return Parsed::Other;
            }
            content_length = length;
        } else if name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || name == header::CONNECTION
            || name == header::UPGRADE
            || name.as_str() == "x-amz-target"
        {
            return Parsed::Other;
        }
        let Ok(value) = HeaderValue::from_bytes(field.value) else {
            return Parsed::Other;
        };
        headers.append(name, value);
    }
    match content_length {
        Some(content_length) if content_length <= MAX_SYNC_PAYLOAD_BYTES => {
            Parsed::Invoke(InvokeHead {
                head_length,
                content_length,
                name,
                query: target.query().map(str::to_owned),
                headers,
            })
        }
        _ => Parsed::Other,
    }
}

/// Writes `response` as hyper would: its headers in order, then `content-length` and
/// `date`.
async fn write_response(tcp: &mut TcpStream, response: Response) -> io::Result<()> {
    let (parts, body) = response.into_parts();
    // Every answer on this path is already in memory.
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(io::Error::other)?;
    let inline = body.len() <= INLINE_BODY_BYTES;
    let mut out = Vec::with_capacity(256 + if inline { body.len() } else { 0 });
    let status = parts.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if !bodiless {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        with_http_date(|date| out.extend_from_slice(date.as_bytes()));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if bodiless {
        tcp.write_all(&out).await
    } else if inline {
        out.extend_from_slice(&body);
        tcp.write_all(&out).await
    } else {
        tcp.write_all(&out).await?;
        tcp.write_all(&body).await
    }
}

/// The `date` header's value, formatted once a second as hyper does.
fn with_http_date(use_date: impl FnOnce(&str)) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((u64::MAX, String::new()))
        };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(cached_second, date)| {
        if *cached_second != second {
            *cached_second = second;
            *date = httpdate::fmt_http_date(now);
        }
        use_date(date);
    });
}

/// The connection's stream with the bytes already read put back in front, for hyper.
struct Rewind {
    read_first: Bytes,
    tcp: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.read_first.is_empty() {
            let count = this.read_first.len().min(buf.remaining());
            buf.put_slice(&this.read_first[..count]);
            this.read_first.advance(count);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tcp).poll_read(context, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(context, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(context, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &str) -> Parsed {
        parse(raw.as_bytes())
    }

    #[test]
    fn a_plain_invoke_is_taken_with_its_name_query_and_headers() {
        let raw = "POST /2015-03-31/functions/my%2Dfn/invocations?Qualifier=live HTTP/1.1\r\n\
                   Host: x\r\nX-Amz-Log-Type: Tail\r\nContent-Length: 2\r\n\r\n{}";
        let Parsed::Invoke(head) = parsed(raw) else {
            panic!("not taken: {raw}");
        };
        assert_eq!(head.name, "my-fn");
        assert_eq!(head.query.as_deref(), Some("Qualifier=live"));
        assert_eq!(head.content_length, 2);
        assert_eq!(head.head_length, raw.len() - 2);
        assert_eq!(head.headers["x-amz-log-type"], "Tail");
    }

    #[test]
    fn a_head_still_arriving_waits_for_more() {
        assert!(matches!(parsed(""), Parsed::Partial));
        assert!(matches!(
            parsed("POST /2015-03-31/functions/f/invocations HTTP/1.1\r\nContent-Le"),
            Parsed::Partial
        ));
    }

    #[test]
    fn everything_but_the_plainest_invoke_is_left_to_hyper() {
        let invoke = "POST /2015-03-31/functions/f/invocations HTTP/1.1\r\n";
        for raw in [
            "GET /2015-03-31/functions/f HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
            "POST /2015-03-31/functions/f/invocations HTTP/1.0\r\nContent-Length: 2\r\n\r\n"
                .to_owned(),
            "POST /2015-03-31/functions/a/b/invocations HTTP/1.1\r\nContent-Length: 2\r\n\r\n"
                .to_owned(),
            "POST /2015-03-31/functions/%FF/invocations HTTP/1.1\r\nContent-Length: 2\r\n\r\n"
                .to_owned(),
            format!("{invoke}\r\n"),
            format!("{invoke}Transfer-Encoding: chunked\r\n\r\n"),
            format!("{invoke}Content-Length: 2\r\nExpect: 100-continue\r\n\r\n"),
            format!("{invoke}Content-Length: 2\r\nConnection: close\r\n\r\n"),
            format!("{invoke}Content-Length: 2\r\nX-Amz-Target: Logs_20140328.X\r\n\r\n"),
            format!("{invoke}Content-Length: 2\r\nContent-Length: 2\r\n\r\n"),
            format!("{invoke}Content-Length: +2\r\n\r\n"),
            format!(
                "{invoke}Content-Length: {}\r\n\r\n",
                MAX_SYNC_PAYLOAD_BYTES + 1
            ),
            "BOGUS\r\n\r\n".to_owned(),
            format!("{invoke}X: {}", "y".repeat(MAX_HEAD_BYTES)),
        ] {
            assert!(matches!(parse(raw.as_bytes()), Parsed::Other), "{raw:.120}");
        }
    }
}
