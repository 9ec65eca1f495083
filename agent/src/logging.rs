//! The agent's own log (spec §0): to stdout and appended to `$SEMAPHORE_AGENT_LOG_FILE_PATH`
//! (default `$TMPDIR/agent_log`), one line per message in upstream's format
//! `Jan _2 15:04:05.000 [<agent name>] : <message>` (UTC). Level from `SEMAPHORE_AGENT_LOG_LEVEL`.

use std::fs::File;
use std::io::Write;
use std::sync::{Mutex, RwLock};

struct AgentLogger {
    name: RwLock<String>,
    file: Mutex<Option<File>>,
    to_stdout: bool,
    level: log::LevelFilter,
}

static LOGGER: std::sync::OnceLock<AgentLogger> = std::sync::OnceLock::new();

impl log::Log for AgentLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
            && !metadata.target().starts_with("ureq")
            && !metadata.target().starts_with("rustls")
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let name = self.name.read().map(|n| n.clone()).unwrap_or_default();
        let line = format!(
            "{} [{}] : {}\n",
            stamp_milli(std::time::SystemTime::now()),
            name,
            record.args()
        );
        if self.to_stdout {
            let _ = std::io::stdout().lock().write_all(line.as_bytes());
        }
        if let Ok(mut file) = self.file.lock() {
            if let Some(file) = file.as_mut() {
                let _ = file.write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

/// Parses a logrus level name.
pub fn parse_level(text: &str) -> Option<log::LevelFilter> {
    Some(match text.to_ascii_lowercase().as_str() {
        "panic" | "fatal" | "error" => log::LevelFilter::Error,
        "warn" | "warning" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        _ => return None,
    })
}

/// Installs the logger. `file_path` None means no file (used by `agent run`).
pub fn init(
    name: &str,
    file_path: Option<&std::path::Path>,
    to_stdout: bool,
    level: log::LevelFilter,
) -> std::io::Result<()> {
    let file = match file_path {
        Some(path) => {
            if let Some(parent) = path.parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent)?;
                }
            }
            Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        }
        None => None,
    };
    let logger = LOGGER.get_or_init(|| AgentLogger {
        name: RwLock::new(name.to_string()),
        file: Mutex::new(file),
        to_stdout,
        level,
    });
    let _ = log::set_logger(logger);
    log::set_max_level(level);
    Ok(())
}

/// Changes the `[name]` prefix (after registration returns the real name).
pub fn set_name(name: &str) {
    if let Some(logger) = LOGGER.get() {
        if let Ok(mut current) = logger.name.write() {
            *current = name.to_string();
        }
    }
}

/// Go's `StampMilli` layout (`Jan _2 15:04:05.000`) in UTC.
pub fn stamp_milli(time: std::time::SystemTime) -> String {
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
        assert_eq!(parse_level("info"), Some(log::LevelFilter::Info));
        assert_eq!(parse_level("DEBUG"), Some(log::LevelFilter::Debug));
        assert_eq!(parse_level("loud"), None);
    }
}
