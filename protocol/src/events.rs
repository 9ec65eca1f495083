//! Job log events (docs/protocol.md §6.1): one JSON object per line, pushed to the log endpoint in
//! batches.

use crate::control::JobResult;
use crate::gojson::write_go_json;
use serde::{Deserialize, Serialize};

/// One job log event. Key order on the wire is `event`, `timestamp`, then the variant's fields.
/// All times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LogEvent {
    JobStarted {
        timestamp: i64,
    },
    CmdStarted {
        timestamp: i64,
        directive: String,
    },
    CmdOutput {
        timestamp: i64,
        output: String,
    },
    CmdFinished {
        timestamp: i64,
        directive: String,
        exit_code: i32,
        started_at: i64,
        finished_at: i64,
    },
    JobFinished {
        timestamp: i64,
        result: JobResult,
    },
}

impl LogEvent {
    /// Appends the event as one Go-encoded JSON line (with its `\n`) to `out`.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        // Serializing these plain structs into a Vec cannot fail.
        write_go_json(out, self).expect("log event serializes");
        out.push(b'\n');
    }

    /// Appends a `cmd_output` line for raw output bytes without building the event: the same
    /// bytes Go's agent writes (invalid UTF-8 bytes as `\ufffd`). The hot path of job logging.
    pub fn write_output_line(out: &mut Vec<u8>, timestamp: i64, output: &[u8]) {
        out.extend_from_slice(b"{\"event\":\"cmd_output\",\"timestamp\":");
        out.extend_from_slice(timestamp.to_string().as_bytes());
        out.extend_from_slice(b",\"output\":");
        crate::gojson::write_go_string_bytes(out, output);
        out.extend_from_slice(b"}\n");
    }

    /// The event as one Go-encoded JSON line, `\n`-terminated.
    pub fn to_line(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        self.write_line(&mut out);
        out
    }

    pub fn timestamp(&self) -> i64 {
        match self {
            LogEvent::JobStarted { timestamp }
            | LogEvent::CmdStarted { timestamp, .. }
            | LogEvent::CmdOutput { timestamp, .. }
            | LogEvent::CmdFinished { timestamp, .. }
            | LogEvent::JobFinished { timestamp, .. } => *timestamp,
        }
    }

    /// The compact one-line form upstream's tests compare (docs/protocol.md §9.2
    /// `SimplifiedEvents`).
    pub fn simplified(&self) -> String {
        match self {
            LogEvent::JobStarted { .. } => "job_started".to_string(),
            LogEvent::CmdStarted { directive, .. } => format!("directive: {directive}"),
            LogEvent::CmdOutput { output, .. } => output.clone(),
            LogEvent::CmdFinished { exit_code, .. } => format!("Exit Code: {exit_code}"),
            LogEvent::JobFinished { result, .. } => format!("job_finished: {result}"),
        }
    }
}

/// Renders events as a terminal transcript: `$ directive`, output as is, a footer per command.
/// Tracks whether the output so far ended a line, so footers start on a line of their own.
#[derive(Debug, Default)]
pub struct TextRenderer {
    mid_line: bool,
}

impl TextRenderer {
    pub fn render(&mut self, event: &LogEvent) -> String {
        let newline = if self.mid_line { "\n" } else { "" };
        let text = match event {
            LogEvent::JobStarted { .. } => "== job started\n".to_string(),
            LogEvent::CmdStarted { directive, .. } => format!("{newline}$ {directive}\n"),
            LogEvent::CmdOutput { output, .. } => output.clone(),
            LogEvent::CmdFinished {
                exit_code,
                started_at,
                finished_at,
                ..
            } => {
                format!(
                    "{newline}-- exit code {exit_code} ({}s)\n",
                    finished_at - started_at
                )
            }
            LogEvent::JobFinished { result, .. } => format!("{newline}== job finished: {result}\n"),
        };
        self.mid_line = match event {
            LogEvent::CmdOutput { output, .. } if output.is_empty() => self.mid_line,
            LogEvent::CmdOutput { output, .. } => !output.ends_with('\n'),
            _ => false,
        };
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_LINES: &str = r#"{"event":"job_started","timestamp":1700000000}
{"event":"cmd_started","timestamp":1700000000,"directive":"echo hello"}
{"event":"cmd_output","timestamp":1700000000,"output":"hello\n"}
{"event":"cmd_finished","timestamp":1700000000,"directive":"echo hello","exit_code":0,"started_at":1700000000,"finished_at":1700000000}
{"event":"job_finished","timestamp":1700000000,"result":"passed"}
"#;

    #[test]
    fn spec_example_lines_round_trip_byte_for_byte() {
        let mut encoded = Vec::new();
        for line in SPEC_LINES.lines() {
            let event: LogEvent = serde_json::from_str(line).unwrap();
            event.write_line(&mut encoded);
        }
        assert_eq!(String::from_utf8(encoded).unwrap(), SPEC_LINES);
    }

    #[test]
    fn output_is_html_escaped_like_go() {
        let event = LogEvent::CmdOutput {
            timestamp: 1,
            output: "a<b>&\n".into(),
        };
        assert_eq!(
            String::from_utf8(event.to_line()).unwrap(),
            "{\"event\":\"cmd_output\",\"timestamp\":1,\"output\":\"a\\u003cb\\u003e\\u0026\\n\"}\n"
        );
    }

    #[test]
    fn raw_output_lines_equal_serialized_events() {
        for output in ["hello\n", "a<b>&\"q\"", "━特定\r\n"] {
            let mut fast = Vec::new();
            LogEvent::write_output_line(&mut fast, 1_700_000_000, output.as_bytes());
            let event = LogEvent::CmdOutput {
                timestamp: 1_700_000_000,
                output: output.to_string(),
            };
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(event.to_line()).unwrap()
            );
        }
    }

    #[test]
    fn text_rendering_keeps_footers_on_their_own_line() {
        let mut renderer = TextRenderer::default();
        let events = [
            LogEvent::JobStarted { timestamp: 0 },
            LogEvent::CmdStarted {
                timestamp: 0,
                directive: "echo -n hi".into(),
            },
            LogEvent::CmdOutput {
                timestamp: 0,
                output: "hi".into(),
            },
            LogEvent::CmdFinished {
                timestamp: 2,
                directive: "echo -n hi".into(),
                exit_code: 0,
                started_at: 0,
                finished_at: 2,
            },
            LogEvent::JobFinished {
                timestamp: 2,
                result: JobResult::Passed,
            },
        ];
        let text: String = events.iter().map(|e| renderer.render(e)).collect();
        assert_eq!(
            text,
            "== job started\n$ echo -n hi\nhi\n-- exit code 0 (2s)\n== job finished: passed\n"
        );
    }

    #[test]
    fn unknown_fields_are_ignored_when_decoding() {
        let event: LogEvent = serde_json::from_str(
            r#"{"event":"job_finished","timestamp":5,"result":"failed","x":true}"#,
        )
        .unwrap();
        assert_eq!(
            event,
            LogEvent::JobFinished {
                timestamp: 5,
                result: JobResult::Failed
            }
        );
        assert_eq!(event.simplified(), "job_finished: failed");
        assert_eq!(event.timestamp(), 5);
    }
}
