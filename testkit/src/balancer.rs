//! A test load balancer: a TCP relay on 127.0.0.1 and a free port in front of several hub
//! replicas, as an AWS load balancer or a proxy would sit in front of `scaler hub` processes that
//! share one database. Each accepted connection goes to the next backend in turn (round-robin per
//! connection); when a backend refuses the connection (a replica killed with `kill -9`) the next
//! one is tried, so agents whose connections broke with the killed replica reconnect to the
//! others. The connection counts per backend show how the load was spread. Plain threads, one
//! pair per relayed connection: the tests relay a few hundred connections at most.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How one backend was used so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendCounts {
    pub address: String,
    /// Connections relayed to it since the start.
    pub opened: usize,
    /// Connections relayed to it and still open.
    pub open: usize,
    /// Connection attempts it refused (or that timed out).
    pub refused: usize,
}

#[derive(Default)]
struct Backend {
    address: String,
    opened: AtomicUsize,
    open: AtomicUsize,
    refused: AtomicUsize,
}

struct Shared {
    backends: Vec<Backend>,
    next: AtomicUsize,
    stop: AtomicBool,
    /// The client-side sockets of open connections, to cut them when the balancer is dropped.
    live: Mutex<HashMap<u64, TcpStream>>,
    ids: AtomicU64,
}

pub struct Balancer {
    /// `127.0.0.1:port` it listens on.
    pub address: String,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Balancer {
    /// Listens on 127.0.0.1 and a free port in front of `backends` (`host:port` each).
    pub fn start(backends: &[String]) -> Balancer {
        assert!(!backends.is_empty(), "a balancer needs a backend");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared {
            backends: backends
                .iter()
                .map(|address| Backend {
                    address: address.clone(),
                    ..Backend::default()
                })
                .collect(),
            next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            live: Mutex::new(HashMap::new()),
            ids: AtomicU64::new(0),
        });
        let accepting = shared.clone();
        let acceptor = std::thread::spawn(move || accept_loop(listener, accepting));
        Balancer {
            address,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Per backend, in the order given to `start`.
    pub fn counts(&self) -> Vec<BackendCounts> {
        self.shared
            .backends
            .iter()
            .map(|backend| BackendCounts {
                address: backend.address.clone(),
                opened: backend.opened.load(Ordering::SeqCst),
                open: backend.open.load(Ordering::SeqCst),
                refused: backend.refused.load(Ordering::SeqCst),
            })
            .collect()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor, which then sees the stop flag.
        let _ = TcpStream::connect(&self.address);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for (_, stream) in self.shared.live.lock().unwrap().drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let shared = shared.clone();
        std::thread::spawn(move || relay(client, shared));
    }
}

/// Connects to the backends in turn from the next one; None when every one refused.
fn connect_backend(shared: &Shared) -> Option<(usize, TcpStream)> {
    let count = shared.backends.len();
    let first = shared.next.fetch_add(1, Ordering::SeqCst);
    (0..count).find_map(|offset| {
        let index = (first + offset) % count;
        let backend = &shared.backends[index];
        let address = backend.address.parse().unwrap();
        match TcpStream::connect_timeout(&address, Duration::from_secs(2)) {
            Ok(stream) => Some((index, stream)),
            Err(_) => {
                backend.refused.fetch_add(1, Ordering::SeqCst);
                None
            }
        }
    })
}

/// Relays one client connection until either side closes it.
fn relay(client: TcpStream, shared: Arc<Shared>) {
    let Some((index, upstream)) = connect_backend(&shared) else {
        // Every backend is down: the client sees its connection closed.
        return;
    };
    let backend = &shared.backends[index];
    backend.opened.fetch_add(1, Ordering::SeqCst);
    backend.open.fetch_add(1, Ordering::SeqCst);
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let id = shared.ids.fetch_add(1, Ordering::SeqCst);
    if let Ok(handle) = client.try_clone() {
        shared.live.lock().unwrap().insert(id, handle);
    }
    let (client_reader, upstream_writer) =
        (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let requests = std::thread::spawn(move || {
        // Client to backend: the client closed; the backend sees the end of its requests.
        pump(client_reader, &upstream_writer);
        let _ = upstream_writer.shutdown(Shutdown::Write);
    });
    // Backend to client: the backend closed or died; so does the client's connection.
    pump(upstream.try_clone().unwrap(), &client);
    let _ = client.shutdown(Shutdown::Both);
    let _ = upstream.shutdown(Shutdown::Both);
    let _ = requests.join();
    shared.live.lock().unwrap().remove(&id);
    backend.open.fetch_sub(1, Ordering::SeqCst);
}

/// Copies bytes from `from` to `to` until either fails or `from` ends.
fn pump(mut from: TcpStream, mut to: &TcpStream) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) => return,
            Ok(read) => read,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if to.write_all(&buffer[..read]).is_err() {
            return;
        }
    }
}
