//! The agent's own log (docs/protocol.md §0): to stdout and appended to
//! `$SEMAPHORE_AGENT_LOG_FILE_PATH` (default `$TMPDIR/agent_log`), one line per message in
//! upstream's format `Jan _2 15:04:05.000 [<agent name>] : <message>` (UTC). Level from
//! `SEMAPHORE_AGENT_LOG_LEVEL`. The agent logs through `tracing`; this module is the subscriber:
//! a `tracing_subscriber` fmt layer with upstream's line format, writing each line whole to both
//! destinations. Only the agent's own events are shown (not those of the HTTP or AWS crates).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex, RwLock};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;

/// The `[name]` of every line; empty until the listener knows it.
static NAME: RwLock<String> = RwLock::new(String::new());

/// Upstream's line: `<StampMilli> [<name>] : <message and fields>`.
struct AgentFormat;

impl<S, N> FormatEvent<S, N> for AgentFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let name = NAME.read().map(|n| n.clone()).unwrap_or_default();
        write!(
            writer,
            "{} [{name}] : ",
            stamp_milli(std::time::SystemTime::now())
        )?;
        context.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Where lines go: stdout and/or the log file. The fmt layer writes each line with one
/// `write_all`, so lines from different threads never interleave.
#[derive(Clone)]
struct Destinations {
    stdout: bool,
    file: Option<Arc<Mutex<File>>>,
}

impl Write for Destinations {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        if self.stdout {
            let _ = std::io::stdout().lock().write_all(line);
        }
        if let Some(file) = &self.file {
            if let Ok(mut file) = file.lock() {
                let _ = file.write_all(line);
            }
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Destinations {
    type Writer = Destinations;

    fn make_writer(&'a self) -> Destinations {
        self.clone()
    }
}

/// Parses a logrus level name.
pub fn parse_level(text: &str) -> Option<LevelFilter> {
    Some(match text.to_ascii_lowercase().as_str() {
        "panic" | "fatal" | "error" => LevelFilter::ERROR,
        "warn" | "warning" => LevelFilter::WARN,
        "info" => LevelFilter::INFO,
        "debug" => LevelFilter::DEBUG,
        "trace" => LevelFilter::TRACE,
        _ => return None,
    })
}

/// Installs the agent's log as the global subscriber (once; later calls change nothing).
/// `file_path` None means no file (used by `agent run`).
pub fn init(
    name: &str,
    file_path: Option<&std::path::Path>,
    to_stdout: bool,
    level: LevelFilter,
) -> std::io::Result<()> {
    let file = match file_path {
        Some(path) => {
            if let Some(parent) = path.parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent)?;
                }
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)?;
            Some(Arc::new(Mutex::new(file)))
        }
        None => None,
    };
    set_name(name);
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .event_format(AgentFormat)
        .with_writer(Destinations {
            stdout: to_stdout,
            file,
        });
    let subscriber = tracing_subscriber::registry()
        .with(layer)
        .with(Targets::new().with_target(env!("CARGO_CRATE_NAME"), level));
    let _ = tracing::subscriber::set_global_default(subscriber);
    Ok(())
}

/// Changes the `[name]` prefix (after registration returns the real name).
pub(crate) fn set_name(name: &str) {
    if let Ok(mut current) = NAME.write() {
        *current = name.to_string();
    }
}

/// Go's `StampMilli` layout (`Jan _2 15:04:05.000`) in UTC.
pub(crate) fn stamp_milli(time: std::time::SystemTime) -> String {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since.as_secs() as i64;
    let (_, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let second_of_day = seconds.rem_euclid(86_400);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {:>2} {:02}:{:02}:{:02}.{:03}",
        MONTHS[(month - 1) as usize],
        day,
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31) (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn stamp_matches_go_stamp_milli() {
        // 2023-11-14 22:13:20.123 UTC
        let time = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(stamp_milli(time), "Nov 14 22:13:20.123");
        let time = UNIX_EPOCH + Duration::from_secs(1_704_153_600); // 2024-01-02 00:00:00
        assert_eq!(stamp_milli(time), "Jan  2 00:00:00.000");
    }

    #[test]
    fn levels_follow_logrus_names() {
        assert_eq!(parse_level("info"), Some(LevelFilter::INFO));
        assert_eq!(parse_level("DEBUG"), Some(LevelFilter::DEBUG));
        assert_eq!(parse_level("loud"), None);
    }
}
