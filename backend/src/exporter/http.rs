//! The metrics listener's HTTP: one connection at a time, one request per connection, each
//! connection bounded in time and size; `GET /metrics` answered with the rendered metrics.
//!
//! Bounds, so that no client can hold the thread or grow its memory:
//! - connections are taken one at a time; the others wait in the kernel's listen backlog, and
//!   at most [`ACCEPTS_PER_WAKE`] are served before the thread checks whether it must stop;
//! - a connection gets [`CONNECTION_DEADLINE`] in all, for reading the request head and
//!   writing the answer: every `read` and `write` is given only the time left (a client that
//!   sends or reads one byte at a time is cut off at the deadline, not per call);
//! - the request head may be at most [`MAX_HEAD_BYTES`] with at most [`MAX_HEADERS`] headers
//!   (else `431`); any body is ignored, and the connection is closed after the answer.
//!
//! The request head is parsed by `httparse`; the answers are fixed texts and the metrics.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{Epoll, EpollEvent};

use crate::logging::RateLimiter;

/// How long one connection may take, from accept to the last byte of the answer.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);
/// The largest request head read.
pub const MAX_HEAD_BYTES: usize = 8192;
/// The most headers a request may have.
pub const MAX_HEADERS: usize = 64;
/// Connections served in a row before the thread looks at its stop event again.
pub const ACCEPTS_PER_WAKE: usize = 16;
/// The one path served.
pub const METRICS_PATH: &str = "/metrics";
/// The content type of the metrics: the OpenMetrics text that `prometheus-client`'s
/// `encoding::text` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The epoll token of the listener.
pub const LISTENER_TOKEN: u64 = 0;
/// The epoll token of the stop eventfd.
pub const STOP_TOKEN: u64 = 1;

/// A pause after an accept error that is not about one connection (out of descriptors or
/// memory), so that the thread does not spin on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What renders the metrics for one `GET /metrics`.
pub type Render<'a> = &'a dyn Fn() -> Result<String, std::fmt::Error>;

/// Serves `listener` (non-blocking, registered in `epoll` as [`LISTENER_TOKEN`]) until the
/// stop eventfd (registered as [`STOP_TOKEN`]) is readable.
pub fn serve(listener: &TcpListener, epoll: &Epoll, render: Render<'_>) {
    let mut events = [EpollEvent::default(); 2];
    // Out of descriptors, an accept fails at every wake until some are freed.
    let warn = RateLimiter::per_packet();
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "metrics listener: waiting failed");
                std::thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        if events[..n].iter().any(|e| e.data() == STOP_TOKEN) {
            return;
        }
        accept_some(listener, render, &warn);
    }
}

/// Serves the connections waiting on `listener`, at most [`ACCEPTS_PER_WAKE`].
fn accept_some(listener: &TcpListener, render: Render<'_>, warn: &RateLimiter) {
    for _ in 0..ACCEPTS_PER_WAKE {
        match listener.accept() {
            Ok((stream, peer)) => serve_connection(stream, peer, render),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            // A connection that went away before it was taken.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => {
                crate::warn_limited!(warn, error = %e, "metrics listener: cannot accept a connection");
                std::thread::sleep(ACCEPT_BACKOFF);
                return;
            }
        }
    }
}

/// One connection: read a request head, answer, close.
fn serve_connection(mut stream: TcpStream, peer: SocketAddr, render: Render<'_>) {
    let deadline = Instant::now() + CONNECTION_DEADLINE;
    match exchange(&mut stream, deadline, render) {
        Ok(status) => tracing::debug!(%peer, status, "metrics request answered"),
        Err(e) => tracing::debug!(%peer, error = %e, "metrics connection dropped"),
    }
}

/// Reads the request, writes the answer; returns its status code.
fn exchange(stream: &mut TcpStream, deadline: Instant, render: Render<'_>) -> io::Result<u16> {
    let response = match read_head(stream, deadline)? {
        Head::Request { method, path } => respond(&method, &path, render),
        Head::TooLarge => Response::text(431, "Request Header Fields Too Large"),
        Head::Malformed => Response::text(400, "Bad Request"),
    };
    write_all_by(stream, response.head().as_bytes(), deadline)?;
    write_all_by(stream, response.body.as_bytes(), deadline)?;
    // The answer is complete: the client sees the end of the stream at once.
    let _ = stream.shutdown(Shutdown::Write);
    Ok(response.status)
}

/// A request head, read and parsed.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// A complete head.
    Request { method: String, path: String },
    /// More than [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`].
    TooLarge,
    /// Not HTTP/1.x.
    Malformed,
}

/// The time left before `deadline`, or a `TimedOut` error when none is.
fn time_left(deadline: Instant) -> io::Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "connection deadline passed"))
}

/// Reads until the request head is complete, too large or malformed, each read given only the
/// time left before `deadline`.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        stream.set_read_timeout(Some(time_left(deadline)?))?;
        // At most one byte past the limit, to tell "too large" from "exactly full".
        let room = (MAX_HEAD_BYTES + 1 - buf.len()).min(chunk.len());
        let n = match stream.read(&mut chunk[..room]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before the end of the request head",
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                return Ok(Head::Request {
                    method: request.method.unwrap_or_default().to_owned(),
                    path: request.path.unwrap_or_default().to_owned(),
                })
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                return Ok(Head::TooLarge)
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Ok(Head::TooLarge),
            Err(_) => return Ok(Head::Malformed),
        }
    }
}

/// Writes `bytes`, each write given only the time left before `deadline`.
fn write_all_by(stream: &mut TcpStream, bytes: &[u8], deadline: Instant) -> io::Result<()> {
    let mut done = 0;
    while done < bytes.len() {
        stream.set_write_timeout(Some(time_left(deadline)?))?;
        match stream.write(&bytes[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// An answer.
#[derive(Debug)]
struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    /// `Allow: GET` (a 405).
    allow_get: bool,
    body: String,
}

impl Response {
    /// A plain-text answer whose body is its reason.
    fn text(status: u16, reason: &'static str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            allow_get: false,
            body: format!("{reason}\n"),
        }
    }

    /// The status line and headers.
    fn head(&self) -> String {
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len(),
            if self.allow_get { "Allow: GET\r\n" } else { "" },
        )
    }
}

/// The answer to `method path`: 404 for any path but [`METRICS_PATH`] (a query is ignored),
/// 405 for any method but `GET`, else the metrics (500 if they cannot be rendered).
fn respond(method: &str, path: &str, render: Render<'_>) -> Response {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    if path != METRICS_PATH {
        return Response::text(404, "Not Found");
    }
    if method != "GET" {
        return Response {
            allow_get: true,
            ..Response::text(405, "Method Not Allowed")
        };
    }
    match render() {
        Ok(body) => Response {
            status: 200,
            reason: "OK",
            content_type: CONTENT_TYPE,
            allow_get: false,
            body,
        },
        Err(e) => {
            tracing::error!(error = %e, "cannot render the metrics");
            Response::text(500, "Internal Server Error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `exchange` on the server side of a fresh connection with `deadline` from now while
    /// `client` talks on the other side; returns the exchange's result, how long it took, and
    /// what the client returned.
    fn with_client<T: Send + 'static>(
        deadline: Duration,
        client: impl FnOnce(TcpStream) -> T + Send + 'static,
    ) -> (io::Result<u16>, Duration, T) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let peer = std::thread::spawn(move || {
            let s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("client timeout");
            client(s)
        });
        let (mut stream, _) = listener.accept().expect("accept");
        let start = Instant::now();
        let render = || Ok::<_, std::fmt::Error>("metrics body\n# EOF\n".to_owned());
        let result = exchange(&mut stream, start + deadline, &render);
        let took = start.elapsed();
        drop(stream);
        (result, took, peer.join().expect("client thread"))
    }

    /// A client that sends `request` and reads the whole answer.
    fn ask(request: &'static [u8]) -> impl FnOnce(TcpStream) -> String {
        move |mut s| {
            s.write_all(request).expect("send");
            let mut answer = String::new();
            s.read_to_string(&mut answer).expect("answer");
            answer
        }
    }

    #[test]
    fn get_metrics_is_answered_with_the_rendered_body() {
        let (status, _, answer) = with_client(
            Duration::from_secs(5),
            ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"),
        );
        assert_eq!(status.expect("exchange"), 200);
        let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")));
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(head.contains("Connection: close"));
        assert_eq!(body, "metrics body\n# EOF\n");
    }

    #[test]
    fn other_paths_are_404_other_methods_405() {
        let cases: [(&'static [u8], &str); 6] = [
            (b"GET /other HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found\r\n"),
            (b"GET / HTTP/1.0\r\n\r\n", "HTTP/1.1 404 Not Found\r\n"),
            (
                b"POST /other HTTP/1.1\r\n\r\n",
                "HTTP/1.1 404 Not Found\r\n",
            ),
            (
                b"POST /metrics HTTP/1.1\r\n\r\n",
                "HTTP/1.1 405 Method Not Allowed\r\n",
            ),
            (
                b"HEAD /metrics HTTP/1.1\r\n\r\n",
                "HTTP/1.1 405 Method Not Allowed\r\n",
            ),
            (b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", "HTTP/1.1 200 OK\r\n"),
        ];
        for (request, status_line) in cases {
            let (_, _, answer) = with_client(Duration::from_secs(5), ask(request));
            assert!(
                answer.starts_with(status_line),
                "{:?}: {answer:?}",
                String::from_utf8_lossy(request)
            );
            assert_eq!(
                answer.contains("Allow: GET\r\n"),
                status_line.contains("405"),
                "{answer:?}"
            );
        }
    }

    #[test]
    fn malformed_and_oversized_heads_are_refused() {
        let (status, _, answer) =
            with_client(Duration::from_secs(5), ask(b"\x01\x02 nonsense\r\n\r\n"));
        assert_eq!(status.expect("exchange"), 400);
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");

        let (status, _, answer) = with_client(Duration::from_secs(5), |mut s| {
            let mut request = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
            request.resize(MAX_HEAD_BYTES + 100, b'a');
            // The server may answer and close before it has read everything.
            let _ = s.write_all(&request);
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            answer
        });
        assert_eq!(status.expect("exchange"), 431);
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:?}");

        let many: String = (0..=MAX_HEADERS).map(|i| format!("H{i}: v\r\n")).collect();
        let request: &'static [u8] = format!("GET /metrics HTTP/1.1\r\n{many}\r\n")
            .leak()
            .as_bytes();
        let (status, _, _) = with_client(Duration::from_secs(5), ask(request));
        assert_eq!(status.expect("exchange"), 431);
    }

    #[test]
    fn a_silent_client_is_cut_off_at_the_deadline() {
        let deadline = Duration::from_millis(300);
        let (status, took, ()) = with_client(deadline, |mut s| {
            s.write_all(b"GET /metr").expect("send");
            // Holds the connection open, sending nothing more, until the server closes it.
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        });
        assert!(status.is_err(), "{status:?}");
        assert!(took >= deadline, "cut off early: {took:?}");
        // Slack for a loaded machine; without the deadline the exchange would wait for ever.
        assert!(
            took < deadline + Duration::from_millis(1500),
            "cut off late: {took:?}"
        );
    }

    #[test]
    fn a_client_dribbling_bytes_is_cut_off_at_the_deadline_not_per_read() {
        let deadline = Duration::from_millis(400);
        let (status, took, ()) = with_client(deadline, |mut s| {
            // One byte every 50 ms for 5 s: each read succeeds well within any per-read
            // timeout, so only a deadline for the whole exchange ends it early.
            for _ in 0..100 {
                if s.write_all(b"a").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        assert!(status.is_err(), "{status:?}");
        assert!(took >= deadline, "cut off early: {took:?}");
        assert!(
            took < deadline + Duration::from_millis(1500),
            "held for {took:?}"
        );
    }
}
