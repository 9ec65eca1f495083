//! A multi-host test bed on one machine: each agent gets its own network namespace joined to the
//! host (where the hub runs) by a veth pair with addresses of its own, and the tests cut, make
//! lossy and heal that link with iptables rules inside the namespace (a cut drops every packet,
//! so connections hang as on a real partition rather than failing fast). This machine's kernel
//! has no `sch_netem`, so delay comes from [`DelayProxy`], a TCP relay that holds each chunk for
//! a delay with jitter. Needs root, iproute2 and iptables; everything it creates (namespaces,
//! links, rules, processes) is removed by `Drop`, even when a test fails.

use crate::agent_process::AgentProcess;
use crate::free_port;
use crate::hub_process::{agent_binary, scaler_binary, HubProcess};
use crate::scaler_run::ScalerRun;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Runs a command that must succeed; the error names it.
fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("{program} is missing ({error}): apt-get install iproute2"));
    assert!(
        output.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

static NEXT_LINK: AtomicU32 = AtomicU32::new(0);

/// One namespace and its veth link to the host: `host_ip` on the host side, `ns_ip` inside.
pub struct Link {
    pub namespace: String,
    host_dev: String,
    ns_dev: String,
    pub host_ip: String,
    pub ns_ip: String,
}

impl Link {
    /// Makes a namespace joined to the host by a new veth pair, with addresses of its own.
    pub fn create() -> Link {
        let index = NEXT_LINK.fetch_add(1, Ordering::SeqCst);
        // Unique per process and link: tests of one binary run in parallel.
        let tag = (std::process::id() % 200) * 10 + index % 10;
        let subnet = format!("10.{}.{}", 100 + tag / 250, tag % 250);
        let link = Link {
            namespace: format!("flt-{}-{index}", std::process::id()),
            host_dev: format!("fh{}x{index}", std::process::id()),
            ns_dev: format!("fa{}x{index}", std::process::id()),
            host_ip: format!("{subnet}.1"),
            ns_ip: format!("{subnet}.2"),
        };
        run("ip", &["netns", "add", &link.namespace]);
        let ns = link.namespace.as_str();
        let (host, inner) = (link.host_dev.as_str(), link.ns_dev.as_str());
        run(
            "ip",
            &["link", "add", host, "type", "veth", "peer", "name", inner],
        );
        run("ip", &["link", "set", inner, "netns", ns]);
        run(
            "ip",
            &["addr", "add", &format!("{}/24", link.host_ip), "dev", host],
        );
        run("ip", &["link", "set", host, "up"]);
        let in_ns = |args: &[&str]| run("ip", &[&["netns", "exec", ns, "ip"], args].concat());
        in_ns(&["addr", "add", &format!("{}/24", link.ns_ip), "dev", inner]);
        in_ns(&["link", "set", inner, "up"]);
        in_ns(&["link", "set", "lo", "up"]);
        // The hub may listen on another link's host address: reach the host through this one.
        in_ns(&["route", "add", "default", "via", &link.host_ip]);
        link
    }

    /// Runs `iptables ARGS` inside the namespace.
    fn iptables(&self, args: &[&str]) {
        run(
            "ip",
            &[&["netns", "exec", &self.namespace, "iptables"], args].concat(),
        );
    }

    /// Drops packets on the namespace's end of the link, both ways (`extra`: a match that
    /// selects which, e.g. a random fraction).
    fn drop_packets(&self, extra: &[&str]) {
        for (chain, direction) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            let rule = [
                &["-A", chain, direction, &self.ns_dev][..],
                extra,
                &["-j", "DROP"],
            ]
            .concat();
            self.iptables(&rule);
        }
    }

    /// A partition: every packet either way is dropped.
    pub fn cut(&self) {
        self.drop_packets(&[]);
    }

    /// A partition between the namespace and one service on the host (`port` on the host's
    /// end): the rest of the link stays up (the tests still read the namespace's own metrics).
    pub fn cut_port(&self, port: u16) {
        let port = port.to_string();
        let host = self.host_ip.clone();
        self.iptables(&[
            "-A", "OUTPUT", "-d", &host, "-p", "tcp", "--dport", &port, "-j", "DROP",
        ]);
        self.iptables(&[
            "-A", "INPUT", "-s", &host, "-p", "tcp", "--sport", &port, "-j", "DROP",
        ]);
    }

    /// A lossy link: `percent` of the packets either way are dropped at random.
    pub fn lossy(&self, percent: u32) {
        let probability = format!("{:.4}", f64::from(percent) / 100.0);
        self.drop_packets(&[
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &probability,
        ]);
    }

    /// Back to a clean link.
    pub fn heal(&self) {
        for chain in ["INPUT", "OUTPUT"] {
            self.iptables(&["-F", chain]);
        }
    }

    /// A wrapper that runs the agent inside this namespace (`ip netns exec` execs, so the
    /// wrapper's pid is the agent's).
    pub fn agent_wrapper(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("agent-in-{}", self.namespace));
        let script = format!(
            "#!/bin/sh\nexec ip netns exec {} {} \"$@\"\n",
            self.namespace,
            agent_binary().display()
        );
        std::fs::write(&path, script).unwrap();
        run("chmod", &["755", &path.display().to_string()]);
        path
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting the host end removes the pair; deleting the namespace kills nothing of ours
        // (the agents are killed by their own guards first).
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_dev])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .output();
    }
}

/// Which attempts of a job [`BedHub::output_lines`] reads.
pub enum Attempts {
    All,
    Last,
}

/// A job's output lines and its start and finish events ([`BedHub::output_lines`]).
pub struct OutputLines {
    pub lines: Vec<String>,
    pub started: usize,
    pub finished: usize,
}

/// A `scaler hub` serving on the host side of `link` (plain HTTP on a private address, as behind
/// a proxy), with the scaled timeouts of the partition tests: a [`HubProcess`] (which it derefs
/// to) with the test bed's readers and agents.
pub struct BedHub {
    pub hub: HubProcess,
}

impl std::ops::Deref for BedHub {
    type Target = HubProcess;

    fn deref(&self) -> &HubProcess {
        &self.hub
    }
}

impl std::ops::DerefMut for BedHub {
    fn deref_mut(&mut self) -> &mut HubProcess {
        &mut self.hub
    }
}

impl BedHub {
    pub fn start(link: &Link, args: &[&str]) -> BedHub {
        let port = free_port();
        let address = format!("{}:{port}", link.host_ip);
        BedHub::start_at(&address, &format!("http://{address}"), args)
    }

    /// A hub on `address` that tells agents to push logs to `public_url`.
    pub fn start_at(address: &str, public_url: &str, args: &[&str]) -> BedHub {
        let behind_proxy = ["--plain-http-behind-proxy", "--public-url", public_url];
        BedHub {
            hub: HubProcess::start_listening(address, &[&behind_proxy[..], args].concat()),
        }
    }

    /// A job's output lines that start with `prefix`, in log order, from its `attempt`: all of
    /// them, or only the last attempt's (from its last `job_started`); with the counts of
    /// `job_started` and `job_finished` events in the same span.
    pub fn output_lines(&self, job: &str, prefix: &str, attempt: Attempts) -> OutputLines {
        let events = self.log_events(job);
        let from = match attempt {
            Attempts::All => 0,
            Attempts::Last => events
                .iter()
                .rposition(|event| event["event"] == "job_started")
                .unwrap_or(0),
        };
        let span = &events[from..];
        let count = |name: &str| span.iter().filter(|event| event["event"] == name).count();
        let output: String = span
            .iter()
            .filter(|event| event["event"] == "cmd_output")
            .filter_map(|event| event["output"].as_str())
            .collect();
        OutputLines {
            lines: output
                .replace('\r', "")
                .lines()
                .filter(|line| line.starts_with(prefix))
                .map(str::to_string)
                .collect(),
            started: count("job_started"),
            finished: count("job_finished"),
        }
    }

    /// Every log line of a job, parsed.
    pub fn log_events(&self, id: &str) -> Vec<serde_json::Value> {
        let mut events = Vec::new();
        loop {
            let page = self.admin_get(&format!(
                "/api/v1/jobs/{id}/logs?start_from={}&limit=5000",
                events.len()
            ));
            let lines = page["lines"].as_array().cloned().unwrap_or_default();
            if lines.is_empty() {
                return events;
            }
            for line in lines {
                let text = line.as_str().unwrap_or_default();
                events.push(serde_json::from_str(text).unwrap());
            }
        }
    }

    /// Submits the job spec file at `path` with `scaler jobs submit`; returns its id.
    pub fn submit_file(&self, path: &Path) -> String {
        let (code, stdout, stderr) = self.cli(&["jobs", "submit", &path.display().to_string()]);
        assert_eq!(code, 0, "{stderr}");
        stdout.trim().to_string()
    }

    /// A single-job agent in `link`'s namespace with `extra_args`.
    pub fn agent_in(&self, link: &Link, extra_args: &[&str]) -> AgentProcess {
        self.agent_via(link, &self.address, extra_args)
    }

    /// A single-job agent in `link`'s namespace that reaches the hub at `endpoint`.
    pub fn agent_via(&self, link: &Link, endpoint: &str, extra_args: &[&str]) -> AgentProcess {
        let wrapper = link.agent_wrapper(self.dir.path());
        let args = [&["--disconnect-after-job"][..], extra_args].concat();
        AgentProcess::start(&wrapper, endpoint, &self.registration_token(), &args, None)
    }
}

/// A TCP relay on the host that holds every chunk, both ways, for `delay` ± `jitter` before
/// passing it on (in order): the delay `tc … netem` would add, which this kernel lacks. Agents
/// reach the hub through it at [`DelayProxy::address`]. Its threads end when it is dropped.
pub struct DelayProxy {
    pub address: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl DelayProxy {
    pub fn start(listen_ip: &str, upstream: &str, delay: Duration, jitter: Duration) -> DelayProxy {
        let listener = std::net::TcpListener::bind(format!("{listen_ip}:0")).unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (upstream, flag) = (upstream.to_string(), stop.clone());
        std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                            continue;
                        };
                        relay(&client, &server, delay, jitter);
                        relay(&server, &client, delay, jitter);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        DelayProxy { address, stop }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, each chunk released `delay` ± `jitter` after it was read, never
/// before an earlier one (a TCP stream stays in order).
fn relay(from: &std::net::TcpStream, to: &std::net::TcpStream, delay: Duration, jitter: Duration) {
    use std::io::{Read, Write};
    let (mut reader, mut writer) = (from.try_clone().unwrap(), to.try_clone().unwrap());
    let (sender, chunks) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut previous = std::time::Instant::now();
        let mut seed = u64::from(std::process::id()) | 1;
        while let Ok(read) = reader.read(&mut buffer) {
            if read == 0 {
                break;
            }
            // xorshift: a jitter in [-jitter, +jitter].
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let spread = jitter.as_millis() as u64 * 2 + 1;
            let offset = Duration::from_millis(seed % spread);
            let due = (std::time::Instant::now() + delay + offset)
                .checked_sub(jitter)
                .unwrap_or_else(std::time::Instant::now)
                .max(previous);
            previous = due;
            if sender.send((due, buffer[..read].to_vec())).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for (due, chunk) in chunks {
            std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
            if writer.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
}

/// `scaler run` with a local fleet inside `link`'s namespace (its agents start there too), against
/// `hub`, with at most `max` agents and extra environment variables (the local fleet's agents
/// inherit them, e.g. `SEMAPHORE_AGENT_GIVE_UP_AFTER`); its Prometheus metrics listen on the
/// namespace's address.
pub fn scaler_in_namespace(link: &Link, hub: &BedHub, max: u32, env: &[(&str, &str)]) -> ScalerRun {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &link.namespace])
        .arg(scaler_binary())
        .envs(env.iter().copied());
    ScalerRun::spawn(command, &link.ns_ip, hub, max, &[])
}
