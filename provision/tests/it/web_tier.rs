//! The web tier's nginx configuration, run for real: it must parse, pass `/api/health`
//! through, stream uploads to the API as they arrive, and answer a body over its limit
//! with the contract's 400 rather than its own HTML 413.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use provision::config::Config;
use provision::names::Tier;
use provision::userdata::{render, Release};

/// The server block the web script writes to /etc/nginx/sites-available/anb.
fn server_block() -> String {
    let script = render(
        Tier::Web,
        &Config::load(None).unwrap(),
        "123456789012",
        &Release {
            name: "r1",
            ..Release::default()
        },
    );
    let start = script.find("<<'NGINX'\n").unwrap() + "<<'NGINX'\n".len();
    let end = start + script[start..].find("\nNGINX\n").unwrap();
    script[start..end].to_owned()
}

struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nginx with the web tier's server block, on a free port, proxying to `api_port`.
fn start(api_port: u16) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let block = server_block();
    assert!(block.contains("listen 80 default_server;") && block.contains("127.0.0.1:8000"));
    let block = block
        .replace(
            "listen 80 default_server;",
            &format!("listen 127.0.0.1:{port};"),
        )
        .replace("127.0.0.1:8000", &format!("127.0.0.1:{api_port}"));
    let d = dir.path().display();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{}}\nhttp {{\n access_log off;\n client_body_temp_path {d}/body;\n\
         proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fastcgi;\n\
         uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n{block}\n}}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    // Its workers may run as another user when the tests run as root.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let nginx = ["/usr/sbin/nginx", "nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .unwrap_or("nginx");
    let args = |extra: &[&str]| {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend([
            "-p".into(),
            format!("{d}/"),
            "-c".into(),
            format!("{d}/nginx.conf"),
        ]);
        args
    };
    #[allow(clippy::disallowed_methods)] // the web tier's real proxy
    let check = Command::new(nginx)
        .args(args(&["-t", "-q"]))
        .output()
        .unwrap_or_else(|e| panic!("cannot run nginx ({e}): apt-get install nginx"));
    assert!(
        check.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    #[allow(clippy::disallowed_methods)] // the web tier's real proxy
    let child = Command::new(nginx)
        .args(args(&[]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Nginx {
        child,
        port,
        _dir: dir,
    }
}

/// Reads one request's head; returns its first line.
fn read_head(stream: &mut BufReader<TcpStream>) -> String {
    let mut first = String::new();
    stream.read_line(&mut first).unwrap();
    let mut line = String::new();
    while stream.read_line(&mut line).unwrap() > 2 {
        line.clear();
    }
    first
}

fn response(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

#[test]
fn the_web_tiers_nginx_streams_uploads_and_keeps_the_contracts_400() {
    let api = TcpListener::bind("127.0.0.1:0").unwrap();
    let nginx = start(api.local_addr().unwrap().port());

    // /api/health passes through to the API.
    let mut client = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    client
        .write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (upstream, _) = api.accept().unwrap();
    let mut upstream = BufReader::new(upstream);
    assert!(read_head(&mut upstream).starts_with("GET /api/health "));
    upstream
        .get_mut()
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        .unwrap();
    drop(upstream);
    assert!(response(&mut client).starts_with("HTTP/1.1 200"));

    // An upload reaches the API while it is still being sent: request buffering is
    // off, so the API's streaming size check is what counts.
    let mut client = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    client
        .write_all(
            b"POST /api/videos/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 90000000\r\n\r\n",
        )
        .unwrap();
    client.write_all(&vec![b'v'; 1 << 20]).unwrap();
    api.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let upstream = loop {
        match api.accept() {
            Ok((stream, _)) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("the API saw nothing of a 1 MB head start of an upload: {e}"),
        }
    };
    upstream.set_nonblocking(false).unwrap();
    let mut upstream = BufReader::new(upstream);
    assert!(read_head(&mut upstream).starts_with("POST /api/videos/upload "));
    drop(upstream);
    drop(client);

    // Beyond nginx's own limit (declared up front): the contract's JSON 400.
    let mut client = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    client
        .write_all(
            b"POST /api/videos/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 500000000\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let answer = response(&mut client);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("application/json"), "{answer}");
    assert!(
        answer.contains(r#"{"detail":"El archivo supera el tamaño máximo permitido de 100 MB."}"#),
        "{answer}"
    );
}

/// Sends one request through nginx; returns nginx's answer, and what the API received.
fn through(nginx: &Nginx, api: &TcpListener, request: &str) -> (String, Option<String>) {
    let mut client = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    client.write_all(request.as_bytes()).unwrap();
    api.set_nonblocking(true).unwrap();
    client.set_nonblocking(true).unwrap();
    // Until nginx either passes the request on or answers it itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut received = None;
    while Instant::now() < deadline {
        if client.peek(&mut [0u8; 1]).is_ok_and(|n| n > 0) {
            break;
        }
        if let Ok((upstream, _)) = api.accept() {
            upstream.set_nonblocking(false).unwrap();
            let mut upstream = BufReader::new(upstream);
            let mut head = String::new();
            let mut line = String::new();
            while upstream.read_line(&mut line).unwrap() > 2 {
                head.push_str(&line);
                line.clear();
            }
            upstream
                .get_mut()
                .write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .unwrap();
            received = Some(head);
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    client.set_nonblocking(false).unwrap();
    (response(&mut client), received)
}

#[test]
fn the_web_tiers_nginx_limits_logins_per_client_address() {
    let api = TcpListener::bind("127.0.0.1:0").unwrap();
    let nginx = start(api.local_addr().unwrap().port());
    let login = |forwarded_for: &str| {
        format!(
            "POST /api/auth/login HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {forwarded_for}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
    };
    // The load balancer puts the client last: that address is the one limited, and
    // the only one the API is told (what a client put before it is dropped).
    let (answer, received) = through(&nginx, &api, &login("10.9.9.9, 198.51.100.7"));
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let received = received.expect("the login reached the API");
    assert!(
        received.contains("X-Forwarded-For: 198.51.100.7\r\n"),
        "{received}"
    );
    // A burst from one address: past 10 more, nginx answers for the API.
    let answers: Vec<String> = (0..14)
        .map(|_| through(&nginx, &api, &login("198.51.100.7")).0)
        .collect();
    let limited = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 429"))
        .count();
    assert!(
        (3..=4).contains(&limited),
        "{limited} limited of 14: {answers:?}"
    );
    let refusal = answers
        .iter()
        .find(|a| a.starts_with("HTTP/1.1 429"))
        .unwrap();
    assert!(refusal.contains("application/json") && refusal.contains("Retry-After: 60"));
    assert!(
        refusal.contains(r#"{"detail":"Demasiadas solicitudes"#),
        "{refusal}"
    );
    // Another address is not affected.
    let (other, _) = through(&nginx, &api, &login("203.0.113.9"));
    assert!(other.starts_with("HTTP/1.1 401"), "{other}");
}
