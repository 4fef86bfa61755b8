//! `GET /metrics` over HTTP on a loopback address (`blocker run --metrics-listen`), for a local
//! Prometheus or agent. Served by a thread of its own with its own event loop, from the body the
//! daemon last rendered: a client, however hostile, costs the daemon's event loop nothing but
//! the swap of that body. Bounded for local clients that misbehave: a few connections at a
//! time (the rest wait in a short kernel backlog), a small request, a deadline for reading the
//! whole request (a client sending a byte at a time is cut off) and one for writing the
//! answer, one request per connection.

use std::{
    io,
    net::{SocketAddr, TcpListener as StdListener},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::timeout,
};

use super::CONTENT_TYPE;

/// Connections answered at a time; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 4;
/// Connections the kernel queues for accepting; beyond them it refuses or drops new ones.
const BACKLOG: i32 = 16;
/// The longest request read; a longer one is answered 431 and closed.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Time a client has to send its whole request.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Time a client has to take the whole answer.
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);
/// Pause after a failed accept (no descriptors left, say), so that it is not retried in a loop.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The endpoint; it serves until the process ends.
pub struct Endpoint {
    address: SocketAddr,
    body: Arc<Mutex<Bytes>>,
}

impl Endpoint {
    /// Listens on `requested`, a loopback address (port 0 picks a free port), and serves from
    /// a thread of its own.
    pub fn start(requested: SocketAddr) -> Result<Self> {
        if !requested.ip().is_loopback() {
            bail!(
                "--metrics-listen {requested}: the metrics endpoint listens on a loopback \
                 address only (127.0.0.1, ::1); it has no authentication, and denials name \
                 users' files. Expose it further through a proxy of your own, or use the \
                 node_exporter textfile (--metrics-file)"
            );
        }
        let listener = listen(requested)
            .with_context(|| format!("--metrics-listen {requested}: listening"))?;
        let address = listener.local_addr()?;
        let body = Arc::new(Mutex::new(Bytes::new()));
        let served = body.clone();
        std::thread::Builder::new()
            .name("metrics-http".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build();
                match runtime {
                    Ok(runtime) => runtime.block_on(serve(listener, served)),
                    Err(error) => log::error!("metrics endpoint: starting: {error}"),
                }
            })
            .context("starting the metrics endpoint's thread")?;
        log::info!("metrics: serving http://{address}/metrics");
        Ok(Self { address, body })
    }

    /// The address it listens on, its port chosen if 0 was asked for.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// What `GET /metrics` answers from now on.
    pub fn publish(&self, body: Bytes) {
        *self
            .body
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = body;
    }
}

/// A listening socket with a short backlog (the standard library's is long).
fn listen(address: SocketAddr) -> io::Result<StdListener> {
    let family = match address {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let socket = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    rustix::net::sockopt::set_socket_reuseaddr(&socket, true)?;
    rustix::net::bind(&socket, &address)?;
    rustix::net::listen(&socket, BACKLOG)?;
    Ok(StdListener::from(socket))
}

async fn serve(listener: StdListener, body: Arc<Mutex<Bytes>>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            log::error!("metrics endpoint: {error}");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Taken before accepting: beyond the limit, connections wait in the kernel's backlog.
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        match listener.accept().await {
            Ok((stream, _)) => {
                let body = body.clone();
                tokio::spawn(async move {
                    answer(stream, &body).await;
                    drop(slot);
                });
            }
            Err(error) => {
                log::debug!("metrics endpoint: accepting: {error}");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// Reads one request and answers it; every failure just closes the connection.
async fn answer(mut stream: TcpStream, body: &Mutex<Bytes>) {
    let mut request = [0; MAX_REQUEST_BYTES];
    let Ok(Ok(length)) = timeout(REQUEST_DEADLINE, read_head(&mut stream, &mut request)).await
    else {
        return;
    };
    let (status, content) = match length {
        Some(length) => route(&request[..length], body),
        None => (Status::TooLarge, Bytes::new()),
    };
    let _ = timeout(ANSWER_DEADLINE, async {
        stream.write_all(&status.head(content.len())).await?;
        stream.write_all(&content).await?;
        stream.shutdown().await
    })
    .await;
}

/// Reads until the end of the request's head; its length, or `None` if it does not fit.
async fn read_head(stream: &mut TcpStream, buffer: &mut [u8]) -> io::Result<Option<usize>> {
    let mut length = 0;
    loop {
        if length == buffer.len() {
            return Ok(None);
        }
        let read = stream.read(&mut buffer[length..]).await?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let searched_from = length.saturating_sub(3);
        length += read;
        if let Some(end) = buffer[searched_from..length]
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
        {
            return Ok(Some(searched_from + end + 4));
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    TooLarge,
}

impl Status {
    fn head(self, content_length: usize) -> Vec<u8> {
        let (line, content_type, allow) = match self {
            Status::Ok => ("200 OK", CONTENT_TYPE, ""),
            Status::BadRequest => ("400 Bad Request", "text/plain", ""),
            Status::NotFound => ("404 Not Found", "text/plain", ""),
            Status::MethodNotAllowed => ("405 Method Not Allowed", "text/plain", "Allow: GET\r\n"),
            Status::TooLarge => ("431 Request Header Fields Too Large", "text/plain", ""),
        };
        format!(
            "HTTP/1.1 {line}\r\nContent-Type: {content_type}\r\nContent-Length: \
             {content_length}\r\n{allow}Connection: close\r\n\r\n"
        )
        .into_bytes()
    }
}

/// The answer to a request whose head is `head`.
fn route(head: &[u8], body: &Mutex<Bytes>) -> (Status, Bytes) {
    let request_line = head.split(|&byte| byte == b'\r').next().unwrap_or_default();
    let mut parts = request_line.split(|&byte| byte == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (Status::BadRequest, Bytes::new());
    };
    if !version.starts_with(b"HTTP/1.") {
        return (Status::BadRequest, Bytes::new());
    }
    let path = target
        .split(|&byte| byte == b'?')
        .next()
        .unwrap_or_default();
    if path != b"/metrics" {
        return (Status::NotFound, Bytes::new());
    }
    if method != b"GET" {
        return (Status::MethodNotAllowed, Bytes::new());
    }
    let body = body
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    (Status::Ok, body)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn only_loopback_addresses_are_listened_on() {
        for address in ["0.0.0.0:0", "192.0.2.1:9000", "[::]:0"] {
            let error = Endpoint::start(address.parse().unwrap())
                .err()
                .expect("refused")
                .to_string();
            assert!(error.contains("loopback address only"), "{error}");
        }
    }

    #[test]
    fn requests_are_routed_by_method_and_path() {
        let body = Mutex::new(Bytes::from_static(b"blocker_rules_loaded 1\n"));
        let routed = |head: &str| route(head.as_bytes(), &body);
        assert_eq!(
            routed("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            (Status::Ok, Bytes::from_static(b"blocker_rules_loaded 1\n"))
        );
        assert_eq!(routed("GET /metrics?x=1 HTTP/1.0\r\n\r\n").0, Status::Ok);
        assert_eq!(
            routed("POST /metrics HTTP/1.1\r\n\r\n").0,
            Status::MethodNotAllowed
        );
        assert_eq!(routed("GET / HTTP/1.1\r\n\r\n").0, Status::NotFound);
        assert_eq!(routed("GET /metrics\r\n\r\n").0, Status::BadRequest);
        assert_eq!(routed("GET /metrics SSH-2.0\r\n\r\n").0, Status::BadRequest);
    }

    fn get(address: SocketAddr, request: &[u8]) -> String {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream.write_all(request).unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    }

    #[test]
    fn serves_what_was_published_and_refuses_oversized_requests() {
        let endpoint = Endpoint::start("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(endpoint.address().port(), 0);
        endpoint.publish(Bytes::from_static(b"blocker_rules_loaded 3\n"));
        let answer = get(endpoint.address(), b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")));
        assert!(
            answer.ends_with("\r\n\r\nblocker_rules_loaded 3\n"),
            "{answer}"
        );
        let oversized = [b'a'; MAX_REQUEST_BYTES];
        let answer = get(endpoint.address(), &oversized);
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    }
}
