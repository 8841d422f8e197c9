//! [`Listener`]: a minimal HTTP/1.1 scrape endpoint on std's `TcpListener`
//! (feature `http-listener`).

use std::io::{self, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{Error, Handle};

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a connection may take to send its request or take the response.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest request head read; a longer one is answered 431.
const MAX_HEAD: usize = 8 * 1024;

/// A scrape endpoint serving a [`Handle`]'s render on one thread of its
/// own, started by [`Handle::listen`]; dropping it (or
/// [`stop`](Self::stop)) closes the socket and joins the thread.
///
/// It answers `GET` (and `HEAD`) of any path with the render, as
/// `metrics-exporter-prometheus`'s listener does, except `/health`, which
/// answers `OK`; other methods get `405`, malformed requests `400`. Each
/// response closes its connection. Connections are served one at a time,
/// each within a 5-second read and write timeout, so a stalled client
/// delays other scrapes by at most that.
///
/// # Examples
///
/// ```
/// use std::io::{Read, Write};
///
/// let recorder = cpulocal_metrics::Recorder::new();
/// let listener = recorder.handle().listen("127.0.0.1:0")?;
/// metrics::with_local_recorder(&recorder, || metrics::counter!("hits").increment(1));
///
/// let mut scrape = std::net::TcpStream::connect(listener.local_addr())?;
/// scrape.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
/// let mut response = String::new();
/// scrape.read_to_string(&mut response)?;
/// assert!(response.starts_with("HTTP/1.1 200 OK\r\n"));
/// assert!(response.ends_with("# TYPE hits counter\nhits 1\n\n"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Listener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Handle {
    /// Serves this handle's render over HTTP at `addr` (port 0 picks a free
    /// port: see [`Listener::local_addr`]) until the [`Listener`] is
    /// dropped.
    ///
    /// # Errors
    ///
    /// [`Error::Listen`] if the address does not resolve, cannot be bound,
    /// or the serving thread cannot be started.
    pub fn listen(&self, addr: impl ToSocketAddrs) -> Result<Listener, Error> {
        let socket = TcpListener::bind(addr).map_err(Error::Listen)?;
        let local = socket.local_addr().map_err(Error::Listen)?;
        let stop = Arc::new(AtomicBool::new(false));
        let handle = self.clone();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cpulocal-metrics-http".into())
            .spawn(move || serve(socket, &handle, &flag))
            .map_err(Error::Listen)?;
        Ok(Listener {
            addr: local,
            stop,
            thread: Some(thread),
        })
    }
}

impl Listener {
    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the socket and waits for the serving thread (as dropping
    /// does).
    pub fn stop(self) {}
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the thread from `accept` with a connection of our own.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        let woken = TcpStream::connect_timeout(&wake, IO_TIMEOUT).is_ok();
        if let Some(thread) = self.thread.take() {
            // If the wake-up could not connect, the thread ends at its next
            // connection instead; do not wait for that.
            if woken {
                let _ = thread.join();
            }
        }
    }
}

/// The accept loop.
fn serve(socket: TcpListener, handle: &Handle, stop: &AtomicBool) {
    loop {
        let accepted = socket.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, _)) => {
                let _ = respond(stream, handle);
            }
            // Out of descriptors and the like: back off rather than spin.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Reads one request from `stream` and answers it.
fn respond(mut stream: TcpStream, handle: &Handle) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let reply = match read_head(&mut stream)? {
        Head::Complete(head) => route(&head, handle),
        Head::TooLarge => Reply::error("431 Request Header Fields Too Large"),
        Head::Closed => return Ok(()),
    };
    stream.write_all(reply.head.as_bytes())?;
    if reply.send_body {
        stream.write_all(reply.body.as_bytes())?;
    }
    stream.flush()?;
    // Close our side, then drain what the client may still send, so that
    // closing does not reset the connection before it read the response.
    stream.shutdown(Shutdown::Write)?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut sink = [0u8; 1024];
    let mut drained = 0;
    while drained < 64 * 1024 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

/// A request head as read.
enum Head {
    Complete(String),
    TooLarge,
    Closed,
}

/// Reads up to the blank line that ends the request head.
fn read_head(stream: &mut TcpStream) -> io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return Ok(Head::Complete(String::from_utf8_lossy(&buf).into_owned()));
        }
        if buf.len() > MAX_HEAD {
            return Ok(Head::TooLarge);
        }
    }
}

/// A response.
struct Reply {
    head: String,
    body: String,
    send_body: bool,
}

impl Reply {
    fn new(status: &str, content_type: &str, body: String, extra: &str) -> Reply {
        Reply {
            head: format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
                body.len()
            ),
            body,
            send_body: true,
        }
    }

    fn error(status: &str) -> Reply {
        Reply::new(
            status,
            "text/plain; charset=utf-8",
            format!("{status}\n"),
            "",
        )
    }
}

/// The response to request head `head`.
fn route(head: &str, handle: &Handle) -> Reply {
    let line = head.split("\r\n").next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Reply::error("400 Bad Request");
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Reply::error("400 Bad Request");
    }
    let send_body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => {
            return Reply::new(
                "405 Method Not Allowed",
                "text/plain; charset=utf-8",
                "405 Method Not Allowed\n".into(),
                "Allow: GET, HEAD\r\n",
            )
        }
    };
    let path = target.split('?').next().unwrap_or(target);
    let mut reply = if path == "/health" {
        Reply::new("200 OK", "text/plain; charset=utf-8", "OK".into(), "")
    } else {
        Reply::new("200 OK", CONTENT_TYPE, handle.render(), "")
    };
    reply.send_body = send_body;
    reply
}
