//! The HTTP/1.1 this server speaks: request heads parsed with `httparse`, bodies framed by
//! `Content-Length` or `chunked`, `Expect: 100-continue`, keep-alive, and responses
//! written from one buffer.
//!
//! **Why not hyper.** Two of every invocation's three HTTP requests come to the Runtime
//! API, and hyper's per-request machinery (its dispatcher, body channel, `HeaderMap`s and
//! boxed service futures) made this path ~19% of the serving thread's samples beyond the
//! kernel's; with this module it is ~11%, tokio and the endpoints included. Five
//! interleaved pairs of the invoke bench at concurrency 32 (minimal function): +19%
//! invokes/s (4 won), server ÷ (functions + clients) CPU 1.11 against 1.19. The Runtime
//! API is four endpoints answering small JSON documents to one client per environment, so
//! what it needs of HTTP/1.1 is small; heads are parsed by `httparse` (hyper's own head
//! parser), chunk sizes by its `parse_chunk_size`.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request head larger than this is refused (431); the runtime sends a few hundred bytes.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// A body over its endpoint's limit is read and dropped up to this much, so the answer
/// (413) reaches a runtime still writing; beyond it the answer is sent at once and the
/// connection closed.
const MAX_DISCARDED_BYTES: usize = 32 * 1024 * 1024;
/// Payloads up to this size are copied behind the head and written with it in one call.
const COALESCED_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Post,
    /// Answered like any other method, without the body.
    Head,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(usize),
    Chunked,
}

/// What the server needs of a request head.
#[derive(Debug)]
pub(crate) struct Head {
    pub method: Method,
    pub path: String,
    /// `Lambda-Runtime-Function-Error-Type`, if any.
    pub error_type: Option<String>,
    framing: Framing,
    expects_continue: bool,
    pub keep_alive: bool,
    /// An HTTP/1.0 request, whose kept-alive connection must be said so in the answer.
    http10: bool,
}

/// Why a request could not be read; each is answered (when the connection still can be)
/// and ends the connection.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The connection closed or failed.
    Io,
    /// The head is not HTTP/1.x or its framing is contradictory.
    Malformed,
    HeadTooLarge,
}

/// A request body as read: whole, or over its limit (what was sent is dropped).
#[derive(Debug)]
pub(crate) enum Body {
    Complete(Bytes),
    TooLarge,
}

/// One direction of a runtime's connection: bytes read ahead of the request being served
/// (a pipelined request, say) stay in `buffer`.
#[derive(Debug)]
pub(crate) struct Connection {
    tcp: TcpStream,
    buffer: BytesMut,
    output: Vec<u8>,
    /// A body was left unread: the connection is out of step and closes after the answer.
    out_of_step: bool,
}

impl Connection {
    pub fn new(tcp: TcpStream) -> Self {
        Connection {
            tcp,
            buffer: BytesMut::with_capacity(8 * 1024),
            output: Vec::with_capacity(1024),
            out_of_step: false,
        }
    }

    /// Reads more bytes into the buffer; `Io` at end of stream.
    async fn fill(&mut self) -> Result<(), ReadError> {
        if self.buffer.capacity() - self.buffer.len() < 1024 {
            self.buffer.reserve(8 * 1024);
        }
        match self.tcp.read_buf(&mut self.buffer).await {
            Ok(0) | Err(_) => Err(ReadError::Io),
            Ok(_) => Ok(()),
        }
    }

    /// The next request's head; `Ok(None)` when the runtime closed the connection between
    /// requests.
    pub async fn read_head(&mut self) -> Result<Option<Head>, ReadError> {
        loop {
            if !self.buffer.is_empty() {
                if let Some((head, length)) = parse_head(&self.buffer)? {
                    self.buffer.advance(length);
                    return Ok(Some(head));
                }
                if self.buffer.len() > MAX_HEAD_BYTES {
                    return Err(ReadError::HeadTooLarge);
                }
            }
            match self.fill().await {
                Ok(()) => {}
                Err(_) if self.buffer.is_empty() => return Ok(None),
                Err(error) => return Err(error),
            }
        }
    }

    /// Reads the body `head` announces, keeping at most `limit` bytes. Sends
    /// `100 Continue` first when the runtime waits for it.
    pub async fn read_body(&mut self, head: &Head, limit: usize) -> Result<Body, ReadError> {
        let invited = match head.framing {
            Framing::Empty => false,
            // A body that will not be read is not asked for: the answer comes at once.
            Framing::Length(length) => length <= limit,
            Framing::Chunked => true,
        };
        if head.expects_continue && invited {
            self.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        match head.framing {
            Framing::Empty => Ok(Body::Complete(Bytes::new())),
            Framing::Length(length) => {
                if length > limit {
                    if head.expects_continue || length > MAX_DISCARDED_BYTES {
                        self.out_of_step = true;
                    } else {
                        self.discard(length).await?;
                    }
                    return Ok(Body::TooLarge);
                }
                while self.buffer.len() < length {
                    // In steps, so a length announced and never sent reserves little.
                    self.buffer
                        .reserve((length - self.buffer.len()).min(1024 * 1024));
                    self.fill().await?;
                }
                Ok(Body::Complete(self.buffer.split_to(length).freeze()))
            }
            Framing::Chunked => self.read_chunked(limit).await,
        }
    }

    /// Drops `length` body bytes.
    async fn discard(&mut self, mut length: usize) -> Result<(), ReadError> {
        loop {
            let taken = length.min(self.buffer.len());
            self.buffer.advance(taken);
            length -= taken;
            if length == 0 {
                return Ok(());
            }
            self.fill().await?;
        }
    }

    /// A `chunked` body: chunk sizes parsed by `httparse`, extensions and trailers ignored.
    async fn read_chunked(&mut self, limit: usize) -> Result<Body, ReadError> {
        let mut body = BytesMut::new();
        let mut total = 0usize;
        loop {
            let (size_length, size) = loop {
                match httparse::parse_chunk_size(&self.buffer) {
                    Ok(httparse::Status::Complete((length, size))) => break (length, size),
                    Ok(httparse::Status::Partial) if self.buffer.len() <= MAX_HEAD_BYTES => {
                        self.fill().await?
                    }
                    _ => return Err(ReadError::Malformed),
                }
            };
            self.buffer.advance(size_length);
            if size == 0 {
                self.skip_trailers().await?;
                return Ok(if total > limit {
                    Body::TooLarge
                } else {
                    Body::Complete(body.freeze())
                });
            }
            let size = usize::try_from(size).map_err(|_| ReadError::Malformed)?;
            total = total.saturating_add(size);
            if total > limit.saturating_add(MAX_DISCARDED_BYTES) {
                self.out_of_step = true;
                return Ok(Body::TooLarge);
            }
            // The chunk's data and its CRLF.
            let mut remaining = size;
            while remaining > 0 {
                if self.buffer.is_empty() {
                    self.fill().await?;
                }
                let taken = remaining.min(self.buffer.len());
                if total <= limit {
                    body.extend_from_slice(&self.buffer[..taken]);
                }
                self.buffer.advance(taken);
                remaining -= taken;
            }
            while self.buffer.len() < 2 {
                self.fill().await?;
            }
            if &self.buffer[..2] != b"\r\n" {
                return Err(ReadError::Malformed);
            }
            self.buffer.advance(2);
        }
    }

    /// The trailer section after the last chunk, up to its empty line.
    async fn skip_trailers(&mut self) -> Result<(), ReadError> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|pair| pair == b"\r\n") {
                self.buffer.advance(end + 2);
                if end == 0 {
                    return Ok(());
                }
                continue;
            }
            if self.buffer.len() > MAX_HEAD_BYTES {
                return Err(ReadError::Malformed);
            }
            self.fill().await?;
        }
    }

    /// Whether the runtime has hung up already, as far as the reactor has seen: reads what
    /// is there without waiting (no system call unless the socket was reported readable).
    pub fn hung_up(&mut self) -> bool {
        if self.buffer.len() > MAX_HEAD_BYTES {
            return false;
        }
        self.buffer.reserve(1024);
        match self.tcp.try_read_buf(&mut self.buffer) {
            Ok(0) => true,
            Ok(_) => false,
            Err(error) => error.kind() != std::io::ErrorKind::WouldBlock,
        }
    }

    /// Whether a body was left unread, so the connection must close after its answer.
    pub fn out_of_step(&self) -> bool {
        self.out_of_step
    }

    /// Resolves when the runtime closes its side (or the connection fails), reading what
    /// it sends meanwhile into the buffer for later: a runtime that hangs up while
    /// waiting for `next` must not keep holding the environment's inbox.
    pub async fn closed(&mut self) {
        loop {
            if self.buffer.len() > MAX_HEAD_BYTES {
                // Enough read ahead: stop watching rather than buffer without end.
                std::future::pending::<()>().await;
            }
            if self.fill().await.is_err() {
                return;
            }
        }
    }

    /// Writes one response to `head` (its body left out for `HEAD`).
    pub async fn respond(&mut self, head: Option<&Head>, reply: &Reply) -> Result<(), ReadError> {
        let mut output = std::mem::take(&mut self.output);
        output.clear();
        output.extend_from_slice(b"HTTP/1.1 ");
        output.extend_from_slice(reply.status.line().as_bytes());
        output.extend_from_slice(b"\r\n");
        if let Some(content_type) = reply.content_type {
            output.extend_from_slice(b"content-type: ");
            output.extend_from_slice(content_type.as_bytes());
            output.extend_from_slice(b"\r\n");
        }
        output.extend_from_slice(reply.headers.as_bytes());
        output.extend_from_slice(b"content-length: ");
        output.extend_from_slice(decimal(reply.body.len() as u64, &mut [0u8; 20]).as_bytes());
        output.extend_from_slice(b"\r\n");
        if reply.close {
            output.extend_from_slice(b"connection: close\r\n");
        } else if head.is_some_and(|head| head.http10) {
            output.extend_from_slice(b"connection: keep-alive\r\n");
        }
        output.extend_from_slice(b"\r\n");
        let written = if head.is_some_and(|head| head.method == Method::Head) {
            self.write_all(&output).await
        } else if reply.body.len() <= COALESCED_BODY_BYTES {
            output.extend_from_slice(&reply.body);
            self.write_all(&output).await
        } else {
            match self.write_all(&output).await {
                Ok(()) => self.write_all(&reply.body).await,
                Err(error) => Err(error),
            }
        };
        self.output = output;
        written
    }

    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), ReadError> {
        self.tcp.write_all(bytes).await.map_err(|_| ReadError::Io)
    }
}

/// Parses a head if the buffer holds a whole one: `(head, its length)`.
fn parse_head(buffer: &[u8]) -> Result<Option<(Head, usize)>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let length = match request.parse(buffer) {
        Ok(httparse::Status::Complete(length)) if length > MAX_HEAD_BYTES => {
            return Err(ReadError::HeadTooLarge);
        }
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ReadError::HeadTooLarge),
        Err(_) => return Err(ReadError::Malformed),
    };
    let method = match request.method {
        Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        Some("HEAD") => Method::Head,
        _ => Method::Other,
    };
    let http10 = request.version == Some(0);
    let mut framing = Framing::Empty;
    let mut content_length = None;
    let mut chunked = false;
    let mut expects_continue = false;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut error_type = None;
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let digits = header.value.trim_ascii();
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(ReadError::Malformed);
            }
            let value = std::str::from_utf8(digits)
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or(ReadError::Malformed)?;
            // Repeated lengths must agree (RFC 9112 §6.3).
            if content_length.is_some_and(|earlier| earlier != value) {
                return Err(ReadError::Malformed);
            }
            content_length = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only `chunked`, and it must come last: anything else cannot be framed.
            let value = std::str::from_utf8(header.value).map_err(|_| ReadError::Malformed)?;
            let last = value.rsplit(',').next().unwrap_or("").trim();
            if !last.eq_ignore_ascii_case("chunked") {
                return Err(ReadError::Malformed);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("expect") {
            expects_continue = header.value.eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                connection_close |= token.eq_ignore_ascii_case(b"close");
                connection_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("lambda-runtime-function-error-type") {
            error_type = std::str::from_utf8(header.value)
                .ok()
                .filter(|value| is_header_value(value))
                .map(str::to_owned);
        }
    }
    if chunked {
        // Both framings at once is how requests are smuggled, and HTTP/1.0 has no
        // chunked framing (RFC 9112 §6.1): refuse both.
        if content_length.is_some() || http10 {
            return Err(ReadError::Malformed);
        }
        framing = Framing::Chunked;
    } else if let Some(length) = content_length.filter(|l| *l > 0) {
        framing = Framing::Length(length);
    }
    let head = Head {
        method,
        path: request.path.unwrap_or("/").to_owned(),
        error_type,
        framing,
        // RFC 9110 §10.1.1: an HTTP/1.0 client's `Expect` is ignored.
        expects_continue: expects_continue && !http10,
        keep_alive: !connection_close && (!http10 || connection_keep_alive),
        http10,
    };
    Ok(Some((head, length)))
}

/// The statuses the Runtime API answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Ok,
    Accepted,
    BadRequest,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    HeadersTooLarge,
    InternalServerError,
}

impl Status {
    fn line(self) -> &'static str {
        match self {
            Status::Ok => "200 OK",
            Status::Accepted => "202 Accepted",
            Status::BadRequest => "400 Bad Request",
            Status::Forbidden => "403 Forbidden",
            Status::NotFound => "404 Not Found",
            Status::MethodNotAllowed => "405 Method Not Allowed",
            Status::PayloadTooLarge => "413 Payload Too Large",
            Status::HeadersTooLarge => "431 Request Header Fields Too Large",
            Status::InternalServerError => "500 Internal Server Error",
        }
    }
}

/// One response.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: Status,
    pub content_type: Option<&'static str>,
    /// Further headers, each a whole `name: value\r\n` line.
    pub headers: String,
    pub body: Bytes,
    /// Close the connection after this response.
    pub close: bool,
}

impl Reply {
    pub fn json(status: Status, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            content_type: Some("application/json"),
            headers: String::new(),
            body: body.into(),
            close: false,
        }
    }
}

/// Appends `name: value\r\n` if `value` may be a header value (visible ASCII, spaces and
/// tabs): anything else, a newline from a client context say, is left out rather than
/// allowed to end the head early.
pub(crate) fn push_header(headers: &mut String, name: &str, value: &str) {
    if is_header_value(value) {
        headers.push_str(name);
        headers.push_str(": ");
        headers.push_str(value);
        headers.push_str("\r\n");
    }
}

/// Visible ASCII, spaces and tabs: what `http::HeaderValue::from_str` accepts.
fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// `value` as decimal digits, without a formatter.
pub(crate) fn decimal(mut value: u64, digits: &mut [u8; 20]) -> &str {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    std::str::from_utf8(&digits[at..]).expect("ASCII digits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_framed_as_rfc_9112_says() {
        let parse = |raw: &str| parse_head(raw.as_bytes()).map(|h| h.map(|(head, _)| head));
        let head = parse("POST /x HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.expects_continue && head.keep_alive);
        let head = parse("POST /x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().keep_alive);
        let old = parse("POST / HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n");
        assert!(
            !old.unwrap().unwrap().expects_continue,
            "ignored from HTTP/1.0"
        );
        assert!(
            parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
        assert!(
            !parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
        assert!(parse("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        for smuggled in [
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "NOT HTTP\r\n\r\n",
        ] {
            assert!(
                matches!(parse(smuggled), Err(ReadError::Malformed)),
                "{smuggled:?}"
            );
        }
    }

    #[test]
    fn header_values_never_carry_line_breaks() {
        let mut headers = String::new();
        push_header(&mut headers, "a", "fine value\twith tab");
        push_header(&mut headers, "b", "{\n\"x\":1}");
        push_header(&mut headers, "c", "caf\u{e9}");
        assert_eq!(headers, "a: fine value\twith tab\r\n");
        assert_eq!(decimal(0, &mut [0; 20]), "0");
        assert_eq!(decimal(u64::MAX, &mut [0; 20]), "18446744073709551615");
    }
}
