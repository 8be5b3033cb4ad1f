//! What the benchmarks share: one keep-alive HTTP/1.1 connection to the Lambda API, and
//! percentiles.

#![allow(dead_code)] // each benchmark uses a different part of this module

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One keep-alive connection speaking just enough HTTP/1.1 for the Lambda API.
pub struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    host: String,
}

impl Connection {
    pub fn open(host: &str) -> Connection {
        let stream = TcpStream::connect(host).expect("connect to lamina");
        stream.set_nodelay(true).unwrap();
        Connection {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            host: host.to_owned(),
        }
    }

    /// Sends one request and reads the whole response; returns (status, body).
    pub fn request(&mut self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let (status, _, body) = self.request_with_headers(method, path, &[], body);
        (status, body)
    }

    /// Sends one request with extra headers; returns (status, response headers, body).
    pub fn request_with_headers(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        // Headers and body in one write: a small request must not wait on Nagle.
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n",
            self.host,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.writer.write_all(&request).expect("send");
        let mut status_line = String::new();
        self.reader
            .read_line(&mut status_line)
            .expect("status line");
        let status: u16 = status_line[9..12].parse().expect("status code");
        let mut length = 0usize;
        let mut response_headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
                response_headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).expect("body");
        (status, response_headers, body)
    }
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// A `lamina serve` (this build) on a free port with its own data directory, quiet but for
/// warnings; returns the process, its address and its sandbox description.
pub fn start_server(
    data_dir: &std::path::Path,
    args: &[&str],
) -> (std::process::Child, String, String) {
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env("LAMINA_LOG", "warn,lamina=info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("lamina starts");
    let stderr = BufReader::new(server.stderr.take().unwrap());
    let mut lines = stderr.lines();
    let (host, sandbox) = loop {
        let line = lines.next().expect("lamina printed its address").unwrap();
        if let Some(rest) = line.split("listening on http://").nth(1) {
            let host = rest.split_whitespace().next().unwrap().to_owned();
            let sandbox = rest.split("sandbox: ").nth(1).unwrap_or("?").to_owned();
            break (host, sandbox);
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (server, host, sandbox)
}

/// SIGTERM, so the server removes its environments, then waits.
pub fn stop_server(mut server: std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();
}
