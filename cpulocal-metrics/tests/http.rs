//! Scraping the HTTP listener on 127.0.0.1 with a real HTTP client.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use cpulocal_metrics::{Builder, CONTENT_TYPE};
use metrics::{counter, gauge, histogram};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

#[test]
fn a_scrape_returns_the_render() {
    let recorder = Builder::new().buckets(&[1.0, 10.0]).unwrap().build();
    let handle = recorder.handle();
    let listener = handle.listen("127.0.0.1:0").expect("bind port 0");
    let addr = listener.local_addr();
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    metrics::with_local_recorder(&recorder, || {
        counter!("scrape_hits", "path" => "/x").increment(5);
        gauge!("queue_depth").set(12.0);
        histogram!("size").record(3.0);
    });

    let agent = agent();
    let url = format!("http://{addr}/metrics");
    for round in 1..=3u32 {
        metrics::with_local_recorder(&recorder, || counter!("scrapes").increment(1));
        let mut response = agent.get(&url).call().expect("scrape");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], CONTENT_TYPE);
        let body = response.body_mut().read_to_string().unwrap();
        let e = common::parse(&body);
        assert_eq!(e.get(r#"scrape_hits{path="/x"}"#), 5.0);
        assert_eq!(e.get("scrapes"), f64::from(round));
        assert_eq!(e.get("queue_depth"), 12.0);
        assert_eq!(e.get(r#"size_bucket{le="10"}"#), 1.0);
        assert_eq!(e.get("size_sum"), 3.0);
        assert_eq!(e.types["size"], "histogram");
        assert_eq!(body, handle.render());
    }

    let mut health = agent.get(format!("http://{addr}/health")).call().unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.body_mut().read_to_string().unwrap(), "OK");

    let head = agent.head(&url).call().unwrap();
    assert_eq!(head.status(), 200);
    let length: usize = head.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(length, handle.render().len());

    let post = agent.post(&url).send("x").unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");
}

/// Sends `request` raw and returns the whole response.
fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(request).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn malformed_requests_get_errors_and_the_listener_stops() {
    let listener = Builder::new()
        .build()
        .handle()
        .listen("127.0.0.1:0")
        .unwrap();
    let addr = listener.local_addr();
    assert!(raw(addr, b"nonsense\r\n\r\n").starts_with("HTTP/1.1 400 Bad Request\r\n"));
    assert!(raw(addr, b"GET / SPDY/3\r\n\r\n").starts_with("HTTP/1.1 400 "));
    let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
    assert!(raw(addr, big.as_bytes()).starts_with("HTTP/1.1 431 "));
    // A client that connects and leaves does not stop the listener.
    drop(TcpStream::connect(addr).unwrap());
    let ok = raw(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(
        ok.ends_with("Content-Length: 0\r\nConnection: close\r\n\r\n"),
        "{ok}"
    );

    listener.stop();
    assert!(
        TcpStream::connect(addr).is_err(),
        "still listening after stop"
    );
}

#[test]
fn binding_a_taken_port_is_a_typed_error() {
    let first = Builder::new()
        .build()
        .handle()
        .listen("127.0.0.1:0")
        .unwrap();
    let err = Builder::new()
        .build()
        .handle()
        .listen(first.local_addr())
        .unwrap_err();
    assert!(matches!(err, cpulocal_metrics::Error::Listen(_)), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("cannot start the scrape listener: "),
        "{err}"
    );
}
