//! A no-op `provided` function with the smallest Runtime API client that works: blocking
//! std I/O on one keep-alive connection, no async runtime. The invoke benchmark runs it
//! beside the `lambda_runtime` function (`LAMINA_BENCH_FUNCTION=minimal`) to tell the
//! platform's cost per invoke from the client library's: `lambda_runtime` spends more CPU
//! per invoke than the whole platform does. It answers `null` to every event.
//!
//! Hand-written on purpose: it is the lower bound of a runtime client, which a crate with
//! an HTTP stack cannot show.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;

/// Reads one HTTP/1.1 response: the request id header (if any) and the body. Anything
/// but a 2xx status is an error, so that a refused answer is never counted as served.
fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<(Option<String>, Vec<u8>)> {
    let mut line = String::new();
    let mut request_id = None;
    let mut length = 0usize;
    reader.read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    if line
        .split(' ')
        .nth(1)
        .is_none_or(|status| !status.starts_with('2'))
    {
        return Err(std::io::Error::other(format!(
            "the Runtime API answered {line:?}"
        )));
    }
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("lambda-runtime-aws-request-id") {
                request_id = Some(value.to_owned());
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((request_id, body))
}

fn main() -> std::io::Result<()> {
    let api = std::env::var("AWS_LAMBDA_RUNTIME_API").expect("AWS_LAMBDA_RUNTIME_API is set");
    let stream = TcpStream::connect(&api)?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let next = format!("GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: {api}\r\n\r\n");
    loop {
        writer.write_all(next.as_bytes())?;
        let (request_id, _event) = read_response(&mut reader)?;
        let request_id = request_id.expect("the Runtime API names the request");
        let answer = format!(
            "POST /2018-06-01/runtime/invocation/{request_id}/response HTTP/1.1\r\nHost: {api}\r\n\
             Content-Type: application/json\r\nContent-Length: 4\r\n\r\nnull"
        );
        writer.write_all(answer.as_bytes())?;
        read_response(&mut reader)?;
    }
}
