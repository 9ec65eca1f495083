//! Attacks on a real `scaler hub` process, tried as a job on the fleet or anyone who can reach
//! its socket would: a job that never ends (run by a real agent), the hub started on a public
//! address without TLS, a TLS client that never finishes its handshake, a flood of idle
//! connections (and ones that never send a request), and other local users reading the hub's
//! data directory. Each test failed before the defence existed.

use std::ffi::OsStr;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testkit::hub_process::HubProcess;

const LONG: Duration = Duration::from_secs(60);

#[test]
fn a_job_past_its_time_limit_is_stopped_by_a_real_hub_and_agent() {
    let hub = HubProcess::start(&[]);
    let file = hub.data_dir().join("endless.yaml");
    let spec = "commands:\n  - echo started\n  - sleep 600\nexecution_time_limit:\n  seconds: 2\n";
    std::fs::write(&file, spec).unwrap();
    let (code, stdout, stderr) = hub.cli(&["jobs", "submit", &file.display().to_string()]);
    assert_eq!(code, 0, "{stderr}");
    let id = stdout.trim().to_string();
    let started = Instant::now();
    let mut agent = testkit::hub_process::start_agent(&hub, &["--disconnect-after-job"]);
    assert_eq!(agent.wait(LONG), 0, "{}", agent.output());
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "the job was not cut short"
    );
    let job = hub.job(&id);
    assert_eq!(job["state"], "finished");
    assert_eq!(job["result"], "stopped");
    let reason = "execution time limit of 2s exceeded";
    assert_eq!(job["reason"], reason);
    let (code, logs, stderr) = hub.cli(&["jobs", "logs", &id]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        logs.contains("started\n") && logs.contains(reason),
        "{logs}"
    );
    let (_, shown, _) = hub.cli(&["jobs", "show", &id]);
    assert!(shown.contains(reason), "{shown}");
}

/// Runs `scaler hub` with `args` until it exits or `timeout` passes; (exit code, stderr).
fn hub_exit(args: &[&str], timeout: Duration) -> (Option<i32>, String) {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(testkit::hub_process::scaler_binary())
        .arg("hub")
        .args(args)
        .arg("--data-dir")
        .arg(data.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            return (status.code(), stderr);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    (None, String::new())
}

#[test]
fn plain_http_on_a_public_address_is_refused_unless_behind_a_proxy() {
    let listen = format!("0.0.0.0:{}", testkit::free_port());
    let (code, stderr) = hub_exit(&["--listen", &listen], Duration::from_secs(20));
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}: {stderr}");
    assert!(
        stderr.contains("refusing to serve plain HTTP")
            && stderr.contains("--plain-http-behind-proxy"),
        "{stderr}"
    );
    let listen = format!("0.0.0.0:{}", testkit::free_port());
    let args = ["--listen", &listen, "--plain-http-behind-proxy"];
    let (code, stderr) = hub_exit(&args, Duration::from_secs(3));
    assert_eq!(code, None, "with the flag it serves: {stderr}");
}

/// A `scaler hub` on a free loopback port, killed when dropped.
struct Served {
    child: std::process::Child,
    port: u16,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `scaler hub` on `data` with `args` and waits until it accepts connections.
fn serve_hub(data: &Path, args: &[&OsStr]) -> Served {
    let port = testkit::free_port();
    let child = Command::new(testkit::hub_process::scaler_binary())
        .args(["hub", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    testkit::wait_for("the hub", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Served { child, port }
}

#[test]
fn the_data_directory_and_its_files_are_the_owners_only() {
    let dir = tempfile::tempdir().unwrap();
    // A temporary directory is 0700 already: look at a data directory the hub makes.
    let data = dir.path().join("made-by-the-hub");
    let served = serve_hub(&data, &[]);
    let url = format!("http://127.0.0.1:{}/healthz", served.port);
    testkit::wait_for("the hub", Duration::from_secs(20), || {
        testkit::http::get(&url, "").is_ok()
    });
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(
            mode(&path) & 0o077,
            0,
            "{} is readable by others",
            path.display()
        );
    }
}

/// Whether the server closes `stream` (EOF or reset) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buffer = [0u8; 64];
    match stream.read(&mut buffer) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => error.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn a_tls_client_that_never_finishes_its_handshake_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let generated = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is required by this test (.ci/run installs it)");
    assert!(generated.status.success());
    let data = tempfile::tempdir().unwrap();
    let tls: [&OsStr; 6] = [
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        key.as_os_str(),
        "--tls-handshake-timeout".as_ref(),
        "1".as_ref(),
    ];
    let served = serve_hub(data.path(), &tls);
    let mut silent = TcpStream::connect(("127.0.0.1", served.port)).unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(8)),
        "the silent client is still connected"
    );
}

/// A connection to `hub` that sent `head` (a request asking `Expect: 100-continue`, its body
/// not all sent), once the hub answered "100 Continue": the request is in, its body being read.
fn busy_connection(hub: &HubProcess, head: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", hub.port)).unwrap();
    std::io::Write::write_all(&mut stream, head.as_bytes()).unwrap();
    stream.set_read_timeout(Some(LONG)).unwrap();
    let continued = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut answer = vec![0u8; continued.len()];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(answer, continued, "{}", String::from_utf8_lossy(&answer));
    stream
}

#[test]
fn connections_beyond_the_limit_wait_until_one_closes() {
    let hub = HubProcess::start(&["--max-connections", "2"]);
    // Two busy connections: each sent a request whose body has not come yet (silent ones would
    // be closed to make room: `clients_that_send_nothing_...`).
    let head = format!(
        "POST /api/v1/jobs HTTP/1.1\r\nHost: hub\r\nAuthorization: Token {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n{{",
        hub.admin_token()
    );
    let idle: Vec<TcpStream> = (0..2).map(|_| busy_connection(&hub, &head)).collect();
    let mut third = TcpStream::connect(("127.0.0.1", hub.port)).unwrap();
    let request = "GET /healthz HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n";
    std::io::Write::write_all(&mut third, request.as_bytes()).unwrap();
    // The hub's word that the third connection waits for a place (not that it was slow).
    let waits = format!("peer={} ", third.local_addr().unwrap());
    testkit::wait_for(
        "the hub to log that the third connection waits",
        LONG,
        || {
            hub.log()
                .lines()
                .any(|line| line.contains("at the connection limit") && line.contains(&waits))
        },
    );
    third.set_nonblocking(true).unwrap();
    let unanswered = third.read(&mut [0u8; 64]);
    assert!(
        matches!(&unanswered, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a third connection was served past the limit of 2: {unanswered:?}"
    );
    // Control: once the busy ones close, it is served.
    third.set_nonblocking(false).unwrap();
    third.set_read_timeout(Some(LONG)).unwrap();
    drop(idle);
    let mut answer = String::new();
    third.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn clients_that_send_nothing_are_dropped_so_a_full_hub_answers_again() {
    let hub = HubProcess::start(&["--max-connections", "40", "--header-read-timeout", "1"]);
    let mut idle: Vec<TcpStream> = (0..60)
        .map(|_| TcpStream::connect(("127.0.0.1", hub.port)).unwrap())
        .collect();
    let started = Instant::now();
    let reply = testkit::http::get(&format!("{}/healthz", hub.url()), "");
    assert_eq!(reply.map(|reply| reply.status).ok(), Some(200));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    // Control: the idle clients were served, then closed by the hub.
    assert!(closed_within(&mut idle[0], Duration::from_secs(10)));
}

#[test]
fn edge_limits_of_zero_are_refused() {
    for flag in [
        "--header-read-timeout",
        "--keep-alive-timeout",
        "--body-read-timeout",
        "--max-log-pushes",
    ] {
        let (code, stderr) = hub_exit(&[flag, "0"], Duration::from_secs(20));
        assert!(matches!(code, Some(c) if c != 0), "{flag}: {code:?}");
        assert!(stderr.contains("must be positive"), "{flag}: {stderr}");
    }
    let (code, stderr) = hub_exit(&["--metrics-token", "short"], Duration::from_secs(20));
    assert!(matches!(code, Some(c) if c != 0), "{stderr}");
    assert!(stderr.contains("at least 16 characters"), "{stderr}");
}
