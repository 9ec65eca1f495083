//! Job traces for the simulator: a CSV file (`submit_time,duration,agent_type`, seconds from the
//! start) or one of the built-in generators, each seeded and reproducible.
//!
//! - `bursty-day`: 24 h of CI. Pipelines arrive as a Poisson process whose rate follows the working
//!   day (0.3/h at night rising to 30/h at 14:00 on a sine); each pipeline fans out to 1, 4 or 8
//!   parallel jobs (p = 0.5 / 0.3 / 0.2) of 2–12 minutes (log-uniform).
//! - `gpu-shortage`: 24 h of GPU jobs (8/h in working hours, 1/h at night, 10–40 minutes); the
//!   first capacity pool has no capacity from 10:00 to 12:00 (the simulator's default scenario).
//! - `steady`: a constant 20 jobs/h of 1–5 minutes for 8 h.

use thiserror::Error;

/// Why a CSV trace was refused; `line` counts from 1.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("line {line}: {problem}")]
pub struct TraceError {
    pub line: usize,
    pub problem: String,
}
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, PartialEq)]
pub struct TraceJob {
    pub submit_s: f64,
    pub duration_s: f64,
    pub agent_type: String,
}

/// Reads `submit_time,duration,agent_type` rows (a header row is allowed).
pub fn read_csv(text: &str) -> Result<Vec<TraceJob>, TraceError> {
    let mut jobs = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty()
            || line.starts_with('#')
            || (number == 0 && line.starts_with("submit_time"))
        {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let refuse = |problem: String| TraceError {
            line: number + 1,
            problem,
        };
        if fields.len() != 3 {
            return Err(refuse("expected submit_time,duration,agent_type".into()));
        }
        let submit_s: f64 = fields[0]
            .parse()
            .map_err(|_| refuse(format!("bad submit_time '{}'", fields[0])))?;
        let duration_s: f64 = fields[1]
            .parse()
            .map_err(|_| refuse(format!("bad duration '{}'", fields[1])))?;
        if !(submit_s >= 0.0 && duration_s >= 0.0 && submit_s.is_finite() && duration_s.is_finite())
        {
            return Err(refuse(
                "times must be non-negative numbers of seconds".into(),
            ));
        }
        jobs.push(TraceJob {
            submit_s,
            duration_s,
            agent_type: fields[2].to_string(),
        });
    }
    jobs.sort_by(|a, b| a.submit_s.total_cmp(&b.submit_s));
    Ok(jobs)
}

pub fn to_csv(jobs: &[TraceJob]) -> String {
    let mut out = String::from("submit_time,duration,agent_type\n");
    for job in jobs {
        out.push_str(&format!(
            "{:.1},{:.1},{}\n",
            job.submit_s, job.duration_s, job.agent_type
        ));
    }
    out
}

/// Poisson arrivals with a time-varying rate (per hour), by thinning.
fn arrivals(
    rng: &mut StdRng,
    hours: f64,
    peak_per_hour: f64,
    rate: impl Fn(f64) -> f64,
) -> Vec<f64> {
    let mut times = Vec::new();
    let mut t = 0.0;
    let end = hours * 3600.0;
    loop {
        let gap: f64 = -rng.gen::<f64>().max(1e-12).ln() / (peak_per_hour / 3600.0);
        t += gap;
        if t >= end {
            return times;
        }
        if rng.gen::<f64>() < rate(t / 3600.0) / peak_per_hour {
            times.push(t);
        }
    }
}

fn log_uniform(rng: &mut StdRng, low: f64, high: f64) -> f64 {
    (low.ln() + rng.gen::<f64>() * (high.ln() - low.ln())).exp()
}

/// Working-day rate: `night` per hour outside 07:00–19:00, a sine up to `peak` at 13:00.
fn working_day(hour: f64, night: f64, peak: f64) -> f64 {
    let h = hour % 24.0;
    if (7.0..19.0).contains(&h) {
        night + (peak - night) * (std::f64::consts::PI * (h - 7.0) / 12.0).sin()
    } else {
        night
    }
}

pub fn bursty_day(seed: u64) -> Vec<TraceJob> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut jobs = Vec::new();
    for start in arrivals(&mut rng, 24.0, 30.0, |h| working_day(h, 0.3, 30.0)) {
        let fan_out = match rng.gen::<f64>() {
            x if x < 0.5 => 1,
            x if x < 0.8 => 4,
            _ => 8,
        };
        for _ in 0..fan_out {
            jobs.push(TraceJob {
                submit_s: start,
                duration_s: log_uniform(&mut rng, 120.0, 720.0),
                agent_type: "default".into(),
            });
        }
    }
    jobs
}

pub fn gpu_shortage_day(seed: u64) -> Vec<TraceJob> {
    let mut rng = StdRng::seed_from_u64(seed);
    arrivals(&mut rng, 24.0, 8.0, |h| working_day(h, 1.0, 8.0))
        .into_iter()
        .map(|t| TraceJob {
            submit_s: t,
            duration_s: rng.gen_range(600.0..2400.0),
            agent_type: "gpu".into(),
        })
        .collect()
}

pub fn steady(seed: u64) -> Vec<TraceJob> {
    let mut rng = StdRng::seed_from_u64(seed);
    arrivals(&mut rng, 8.0, 20.0, |_| 20.0)
        .into_iter()
        .map(|t| TraceJob {
            submit_s: t,
            duration_s: rng.gen_range(60.0..300.0),
            agent_type: "default".into(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generators_are_seeded_and_plausible() {
        assert_eq!(bursty_day(7), bursty_day(7));
        assert_ne!(bursty_day(7), bursty_day(8));
        let day = bursty_day(1);
        assert!(day.len() > 300 && day.len() < 2000, "{}", day.len());
        let by_night = day.iter().filter(|j| j.submit_s < 6.0 * 3600.0).count();
        let by_day = day
            .iter()
            .filter(|j| (10.0 * 3600.0..16.0 * 3600.0).contains(&j.submit_s))
            .count();
        assert!(
            by_day > 5 * by_night.max(1),
            "diurnal: {by_night} at night, {by_day} by day"
        );
        assert!(gpu_shortage_day(1)
            .iter()
            .all(|j| j.agent_type == "gpu" && j.duration_s >= 600.0));
        assert!(steady(1).iter().all(|j| j.submit_s < 8.0 * 3600.0));
    }

    #[test]
    fn csv_round_trip_and_errors() {
        let jobs = steady(3);
        let back = read_csv(&to_csv(&jobs)).unwrap();
        assert_eq!(back.len(), jobs.len());
        assert!((back[5].submit_s - jobs[5].submit_s).abs() < 0.06);
        assert!(read_csv("submit_time,duration,agent_type\n1,2\n")
            .unwrap_err()
            .to_string()
            .contains("line 2"));
        assert!(read_csv("x,2,a\n").is_err());
        assert!(read_csv("-1,2,a\n").is_err());
    }
}
