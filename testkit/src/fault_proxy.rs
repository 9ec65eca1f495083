//! A fault-injecting HTTP proxy in front of moto server: it forwards every request unchanged
//! except that, while armed, it answers `Throttling` (HTTP 400) or 503, and it can rewrite a
//! group's `DescribeScalingActivities` answer to a failed launch (moto never produces one). Real
//! AWS SDK clients talk to it with `endpoint_url`, so their retry and error paths run for real.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Faults {
    /// The next this many requests get `Throttling`.
    pub throttle_next: u32,
    /// The next this many requests (after throttling) get HTTP 503.
    pub unavailable_next: u32,
    /// Only requests with this `Action` get the faults above (all requests when unset).
    pub only_action: Option<String>,
    /// Group name → failure message for its newest scaling activity.
    pub failed_launches: HashMap<String, String>,
    /// Requests seen, faults answered.
    pub requests: u32,
    pub faults_answered: u32,
    /// The `Action=` of every request seen, in order.
    pub actions: Vec<String>,
}

pub struct FaultProxy {
    pub url: String,
    pub faults: Arc<Mutex<Faults>>,
}

impl FaultProxy {
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fault proxy");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let faults = Arc::new(Mutex::new(Faults::default()));
        let shared = faults.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (shared, upstream) = (shared.clone(), upstream.clone());
                std::thread::spawn(move || serve(stream, &upstream, &shared));
            }
        });
        FaultProxy { url, faults }
    }

    /// Environment for an SDK client (agent or scaler process) going through the proxy.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.url.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }
}

struct Request {
    head: Vec<String>,
    body: Vec<u8>,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    let length = head
        .iter()
        .find_map(|h| {
            let (name, value) = h.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request { head, body })
}

fn form_value(body: &str, key: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.replace("%2F", "/").replace('+', " "))
    })
}

fn answer(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn serve(stream: TcpStream, upstream: &str, faults: &Mutex<Faults>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut client = stream;
    let Some(request) = read_request(&mut reader) else {
        return;
    };
    let body = String::from_utf8_lossy(&request.body).to_string();
    let action = form_value(&body, "Action").unwrap_or_else(|| {
        request
            .head
            .iter()
            .find_map(|h| {
                h.strip_prefix("X-Amz-Target: ")
                    .or(h.strip_prefix("x-amz-target: "))
            })
            .unwrap_or("?")
            .to_string()
    });
    {
        let mut state = faults.lock().unwrap();
        state.requests += 1;
        state.actions.push(action.clone());
        let targeted = state.only_action.as_ref().is_none_or(|a| *a == action);
        let fault = if !targeted {
            None
        } else if state.throttle_next > 0 {
            state.throttle_next -= 1;
            Some(("400 Bad Request", "Sender", "Throttling", "Rate exceeded"))
        } else if state.unavailable_next > 0 {
            state.unavailable_next -= 1;
            Some((
                "503 Service Unavailable",
                "Receiver",
                "ServiceUnavailable",
                "try again",
            ))
        } else {
            None
        };
        if let Some((status, kind, code, message)) = fault {
            state.faults_answered += 1;
            drop(state);
            let body = format!("<ErrorResponse><Error><Type>{kind}</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>fault-proxy</RequestId></ErrorResponse>");
            answer(&mut client, status, "text/xml", &body);
            return;
        }
        if action == "DescribeScalingActivities" {
            let group = form_value(&body, "AutoScalingGroupName").unwrap_or_default();
            if let Some(message) = state.failed_launches.get(&group).cloned() {
                drop(state);
                let xml = format!(
                    "<DescribeScalingActivitiesResponse xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\"><DescribeScalingActivitiesResult><Activities><member><ActivityId>fault-1</ActivityId><AutoScalingGroupName>{group}</AutoScalingGroupName><Cause>At 2026-11-23T12:00:00Z an instance was started in response to a difference between desired and actual capacity.</Cause><StartTime>2026-11-23T12:00:00Z</StartTime><EndTime>2026-11-23T12:00:01Z</EndTime><StatusCode>Failed</StatusCode><StatusMessage>{message}</StatusMessage><Progress>100</Progress></member></Activities></DescribeScalingActivitiesResult><ResponseMetadata><RequestId>fault-proxy</RequestId></ResponseMetadata></DescribeScalingActivitiesResponse>"
                );
                answer(&mut client, "200 OK", "text/xml", &xml);
                return;
            }
        }
    }
    // Forward, one request per connection.
    let Ok(mut server) = TcpStream::connect(upstream) else {
        answer(&mut client, "502 Bad Gateway", "text/plain", "moto is down");
        return;
    };
    let mut head = String::new();
    for (index, line) in request.head.iter().enumerate() {
        let name = line.split(':').next().unwrap_or_default();
        if index > 0 && name.eq_ignore_ascii_case("connection") {
            continue;
        }
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    if server.write_all(head.as_bytes()).is_err() || server.write_all(&request.body).is_err() {
        return;
    }
    let mut response = Vec::new();
    let _ = server.read_to_end(&mut response);
    let _ = client.write_all(&response);
}
