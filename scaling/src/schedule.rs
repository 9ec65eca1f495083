//! Scheduled minimums: "keep at least N instances while this cron expression matches, in this
//! time zone" (e.g. `* 8-18 * * MON-FRI` in `Europe/Berlin`: warm capacity in office hours).
//! A small five-field cron matcher (minute hour day-of-month month day-of-week; `*`, lists,
//! ranges, steps, month and day names) evaluated in an IANA time zone.
//!
//! Kept hand-written on purpose (issue 12). `croner` 4.0 was tried and does the job with its jiff
//! backend (Vixie day rule, `7` = Sunday, names), but only behind two guards written here anyway
//! (it swaps names for numbers across the whole expression, so `JAN` in the day-of-week field
//! quietly meant Monday; its errors do not name the field), and it measured worse in the same
//! run: 1.1-1.6x the time per `applies_at` and ~30x per parse. `cron` needs a seconds field,
//! always ANDs the two day fields, counts `1` as Sunday and takes zones from chrono-tz; `saffron`
//! knows only UTC and has had no release since 0.1.0.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error(
        "cron expression '{0}' must have 5 fields (minute hour day-of-month month day-of-week)"
    )]
    FieldCount(String),
    #[error("cron field '{field}' in '{expression}' is invalid: {why}")]
    Field {
        expression: String,
        field: String,
        why: FieldError,
    },
    #[error("unknown time zone '{0}' (use an IANA name such as Europe/Berlin or UTC)")]
    TimeZone(String),
}

/// Why one field was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FieldError {
    #[error("'{0}' is not a number")]
    NotANumber(String),
    #[error("{value} is outside {min}-{max}")]
    OutOfRange { value: u32, min: u32, max: u32 },
    #[error("step '{0}' is not a number")]
    BadStep(String),
    #[error("a step of 0")]
    ZeroStep,
    #[error("range {0}-{1} runs backwards")]
    Backwards(u32, u32),
}

/// A parsed cron expression: for each field, which values match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: Vec<bool>,
    hours: Vec<bool>,
    days_of_month: Vec<bool>,
    months: Vec<bool>,
    days_of_week: Vec<bool>,
    /// Cron's rule: when both day fields are restricted, either may match.
    day_fields_restricted: (bool, bool),
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

fn parse_value(
    text: &str,
    min: u32,
    max: u32,
    names: &[&str],
    names_start: u32,
) -> Result<u32, FieldError> {
    let upper = text.to_ascii_uppercase();
    if let Some(index) = names.iter().position(|name| *name == upper) {
        return Ok(index as u32 + names_start);
    }
    let value: u32 = text
        .parse()
        .map_err(|_| FieldError::NotANumber(text.to_string()))?;
    // Day of week 7 is Sunday too.
    let value = if max == 6 && value == 7 { 0 } else { value };
    if value < min || value > max {
        return Err(FieldError::OutOfRange { value, min, max });
    }
    Ok(value)
}

fn parse_field(
    expression: &str,
    field: &str,
    min: u32,
    max: u32,
    names: &[&str],
    names_start: u32,
) -> Result<Vec<bool>, ScheduleError> {
    let error = |why: FieldError| ScheduleError::Field {
        expression: expression.to_string(),
        field: field.to_string(),
        why,
    };
    let mut matches = vec![false; max as usize + 1];
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .map_err(|_| error(FieldError::BadStep(step.to_string())))?;
                if step == 0 {
                    return Err(error(FieldError::ZeroStep));
                }
                (range, step)
            }
            None => (part, 1),
        };
        let (start, end) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = parse_value(a, min, max, names, names_start).map_err(&error)?;
            let b = parse_value(b, min, max, names, names_start).map_err(&error)?;
            if a > b {
                return Err(error(FieldError::Backwards(a, b)));
            }
            (a, b)
        } else {
            let value = parse_value(range, min, max, names, names_start).map_err(&error)?;
            (value, if step > 1 { max } else { value })
        };
        let mut value = start;
        while value <= end {
            matches[value as usize] = true;
            value += step;
        }
    }
    Ok(matches)
}

impl Cron {
    pub fn parse(expression: &str) -> Result<Cron, ScheduleError> {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(ScheduleError::FieldCount(expression.to_string()));
        }
        Ok(Cron {
            minutes: parse_field(expression, fields[0], 0, 59, &[], 0)?,
            hours: parse_field(expression, fields[1], 0, 23, &[], 0)?,
            days_of_month: parse_field(expression, fields[2], 1, 31, &[], 0)?,
            months: parse_field(expression, fields[3], 1, 12, &MONTHS, 1)?,
            days_of_week: parse_field(expression, fields[4], 0, 6, &DAYS, 0)?,
            day_fields_restricted: (fields[2] != "*", fields[4] != "*"),
        })
    }

    /// Whether the minute of `time` matches.
    pub fn matches(
        &self,
        minute: u32,
        hour: u32,
        day_of_month: u32,
        month: u32,
        day_of_week: u32,
    ) -> bool {
        let day = match self.day_fields_restricted {
            (true, true) => {
                self.days_of_month[day_of_month as usize] || self.days_of_week[day_of_week as usize]
            }
            _ => {
                self.days_of_month[day_of_month as usize] && self.days_of_week[day_of_week as usize]
            }
        };
        self.minutes[minute as usize]
            && self.hours[hour as usize]
            && self.months[month as usize]
            && day
    }
}

/// At least `minimum` instances while `cron` matches in `time_zone`.
#[derive(Debug, Clone)]
pub struct ScheduledMinimum {
    pub cron: Cron,
    pub time_zone: jiff::tz::TimeZone,
    pub minimum: u32,
}

impl ScheduledMinimum {
    pub fn new(
        cron: &str,
        time_zone: &str,
        minimum: u32,
    ) -> Result<ScheduledMinimum, ScheduleError> {
        let zone = jiff::tz::TimeZone::get(time_zone)
            .map_err(|_| ScheduleError::TimeZone(time_zone.to_string()))?;
        Ok(ScheduledMinimum {
            cron: Cron::parse(cron)?,
            time_zone: zone,
            minimum,
        })
    }

    /// Whether it applies at `unix_seconds`.
    pub fn applies_at(&self, unix_seconds: i64) -> bool {
        let Ok(timestamp) = jiff::Timestamp::from_second(unix_seconds) else {
            return false;
        };
        let local = timestamp.to_zoned(self.time_zone.clone());
        self.cron.matches(
            local.minute() as u32,
            local.hour() as u32,
            local.day() as u32,
            local.month() as u32,
            local.weekday().to_sunday_zero_offset() as u32,
        )
    }
}

/// The largest minimum that applies at `unix_seconds` (0 if none).
pub fn minimum_at(schedules: &[ScheduledMinimum], unix_seconds: i64) -> u32 {
    schedules
        .iter()
        .filter(|s| s.applies_at(unix_seconds))
        .map(|s| s.minimum)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_fields() {
        let office = Cron::parse("* 8-18 * * MON-FRI").unwrap();
        assert!(office.matches(0, 8, 24, 11, 1));
        assert!(office.matches(59, 18, 24, 11, 5));
        assert!(!office.matches(0, 19, 24, 11, 1));
        assert!(!office.matches(0, 9, 22, 11, 6), "Saturday");
        let steps = Cron::parse("*/15 0,12 1 JAN,jul 7").unwrap();
        assert!(steps.matches(45, 12, 1, 7, 3), "day-of-month 1 or Sunday");
        assert!(steps.matches(30, 0, 2, 1, 0), "Sunday (7)");
        assert!(!steps.matches(31, 0, 1, 1, 0));
        assert!(!steps.matches(0, 0, 1, 2, 0), "February");
    }

    #[test]
    fn bad_cron_and_zones_are_clear_errors() {
        assert_eq!(
            Cron::parse("* * *").unwrap_err(),
            ScheduleError::FieldCount("* * *".into())
        );
        for bad in [
            "61 * * * *",
            "* 5-2 * * *",
            "* * * * FUNDAY",
            "*/0 * * * *",
            "x * * * *",
        ] {
            assert!(
                matches!(Cron::parse(bad), Err(ScheduleError::Field { .. })),
                "{bad}"
            );
        }
        assert_eq!(
            ScheduledMinimum::new("* * * * *", "Mars/Olympus", 1).unwrap_err(),
            ScheduleError::TimeZone("Mars/Olympus".into())
        );
    }

    #[test]
    fn minimums_follow_the_time_zone() {
        // 2026-11-23 (a Monday) 07:30 UTC = 08:30 in Berlin (UTC+1 in November).
        let monday_0730_utc = 1_795_419_000;
        let berlin = ScheduledMinimum::new("* 8-18 * * MON-FRI", "Europe/Berlin", 3).unwrap();
        let utc = ScheduledMinimum::new("* 8-18 * * MON-FRI", "UTC", 5).unwrap();
        assert!(berlin.applies_at(monday_0730_utc));
        assert!(!utc.applies_at(monday_0730_utc));
        assert_eq!(
            minimum_at(&[berlin.clone(), utc.clone()], monday_0730_utc),
            3
        );
        assert_eq!(minimum_at(&[berlin, utc], monday_0730_utc + 3600), 5);
        assert_eq!(minimum_at(&[], monday_0730_utc), 0);
    }
}
