//! Demand that is seen coming: the arrival rate of the last minutes, a time-of-day profile learned
//! from past days (the queue history: arrivals the loop has seen, or a simulated trace's past
//! days), and how CI work comes in batches (a pipeline fans out to several jobs at once). From
//! them, [`size`] decides two numbers: the running warm capacity (idle agents that start a job at
//! once) and the stopped pool (pre-initialised, stopped instances that start in a fraction of a
//! cold boot). Both grow ahead of the morning ramp (the profile is read `lookahead_s` ahead) and
//! shrink at night (the chance that a batch comes soon is small).
//!
//! The profile has a slot per 15 minutes of the UTC day and no notion of weekdays: a quiet
//! weekend after busy weekdays keeps the stopped pool (cheap) and some warm capacity until the
//! profile learns otherwise, which the recent rate cannot undo (it only raises). On a real fleet
//! the profile starts empty and is learned from what the loop sees; a restart starts it over.
//!
//! Pure like the rest of the policy: time comes in as an argument, nothing reads a clock, and
//! every number a decision used is returned in [`Forecast`] so the decision log can show it.

use std::collections::VecDeque;

/// The profile's resolution: a slot of the day.
pub const SLOT_S: i64 = 900;
const SLOTS: usize = (86_400 / SLOT_S) as usize;
/// Batches larger than this count as this large.
const MAX_BATCH: usize = 64;
/// Past days beyond this weigh like this many (the profile follows a changing team).
const MEMORY_DAYS: f64 = 14.0;

/// How the forecast sizes warm capacity and the stopped pool.
#[derive(Debug, Clone, PartialEq)]
pub struct ForecastConfig {
    /// Read the profile this far ahead: capacity is ready before the ramp.
    pub lookahead_s: i64,
    /// The recent rate counts arrivals over this window.
    pub recent_window_s: i64,
    /// Arrivals this close together form one batch (one pipeline's fan-out).
    pub batch_gap_s: i64,
    /// Running warm capacity: enough idle agents that this share of the jobs of a batch finds
    /// one ready (given the batch sizes jobs come in) ...
    pub warm_share: f64,
    /// ... times the chance that a batch comes within this many seconds ...
    pub warm_keep_s: f64,
    /// ... at most this many.
    pub warm_max: u32,
    /// Stopped pool: this quantile of the batch sizes ...
    pub pool_quantile: f64,
    /// ... times the chance that a batch comes within this many seconds, plus the jobs expected
    /// while a used instance is replaced (`pool_refill_s`: a launch and its initialisation).
    pub pool_keep_s: f64,
    pub pool_refill_s: f64,
    /// A smaller stopped pool takes effect only after the larger one was not wanted for this long
    /// (each stopped instance cost a boot to prepare).
    pub pool_hold_s: i64,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        ForecastConfig {
            lookahead_s: 900,
            recent_window_s: 900,
            batch_gap_s: 5,
            warm_share: 0.6,
            warm_keep_s: 300.0,
            warm_max: 8,
            pool_quantile: 0.95,
            pool_keep_s: 1200.0,
            pool_refill_s: 120.0,
            pool_hold_s: 1800,
        }
    }
}

/// Arrivals per slot of the day and the batch sizes jobs came in, averaged over past days.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Mean arrivals in each slot of the day.
    per_slot: Vec<f64>,
    /// Days each slot has been learned over.
    days: Vec<f64>,
    /// Jobs that came in a batch of `index + 1` jobs (decayed like the slots).
    batch_jobs: Vec<f64>,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            per_slot: vec![0.0; SLOTS],
            days: vec![0.0; SLOTS],
            batch_jobs: vec![0.0; MAX_BATCH],
        }
    }
}

/// The slot of the day `unix` falls in (UTC).
fn slot_of(unix: i64) -> usize {
    (unix.rem_euclid(86_400) / SLOT_S) as usize
}

impl Profile {
    /// Learns from past arrivals (Unix seconds, any order), whole days counted from the first
    /// arrival's midnight to the last arrival's.
    pub fn learn(arrivals: &[i64], batch_gap_s: i64) -> Profile {
        let mut profile = Profile::default();
        let mut sorted = arrivals.to_vec();
        sorted.sort_unstable();
        let (Some(&first), Some(&last)) = (sorted.first(), sorted.last()) else {
            return profile;
        };
        let days = (last.div_euclid(86_400) - first.div_euclid(86_400) + 1) as f64;
        for &at in &sorted {
            profile.per_slot[slot_of(at)] += 1.0 / days;
        }
        profile.days = vec![days.min(MEMORY_DAYS); SLOTS];
        for size in batch_sizes(&sorted, batch_gap_s) {
            profile.add_batch(size, 1.0);
        }
        profile
    }

    /// Folds one finished slot's arrivals into the mean for that slot of the day.
    fn fold_slot(&mut self, slot: usize, arrivals: f64) {
        let days = (self.days[slot] + 1.0).min(MEMORY_DAYS);
        self.per_slot[slot] += (arrivals - self.per_slot[slot]) / days;
        self.days[slot] = days;
    }

    fn add_batch(&mut self, size: usize, weight: f64) {
        let index = size.clamp(1, MAX_BATCH) - 1;
        self.batch_jobs[index] += size as f64 * weight;
    }

    /// The highest arrival rate (jobs per second) the profile expects in [from, to].
    pub fn peak_rate(&self, from: i64, to: i64) -> f64 {
        let mut peak: f64 = 0.0;
        let mut at = from;
        loop {
            peak = peak.max(self.per_slot[slot_of(at)] / SLOT_S as f64);
            if at >= to {
                return peak;
            }
            at = (at + SLOT_S).min(to);
        }
    }

    /// The batch size at quantile `q` of the jobs (half the jobs came in batches this large or
    /// smaller at 0.5); 1 before any batch was seen.
    pub fn batch_quantile(&self, q: f64) -> u32 {
        let total: f64 = self.batch_jobs.iter().sum();
        if total <= 0.0 {
            return 1;
        }
        let mut seen = 0.0;
        for (index, jobs) in self.batch_jobs.iter().enumerate() {
            seen += jobs;
            if seen >= q.clamp(0.0, 1.0) * total - 1e-9 {
                return index as u32 + 1;
            }
        }
        MAX_BATCH as u32
    }

    /// The fewest idle agents that start at least `share` of the jobs at once, if every batch
    /// found that many ready: a batch of b jobs starts min(k, b) of them.
    pub fn agents_for_share(&self, share: f64) -> u32 {
        let total: f64 = self.batch_jobs.iter().sum();
        if total <= 0.0 {
            return 1;
        }
        (1..=MAX_BATCH)
            .find(|&k| {
                let served: f64 = self
                    .batch_jobs
                    .iter()
                    .enumerate()
                    .map(|(index, jobs)| jobs * k.min(index + 1) as f64 / (index + 1) as f64)
                    .sum();
                served >= share.clamp(0.0, 1.0) * total - 1e-9
            })
            .unwrap_or(MAX_BATCH) as u32
    }

    /// Jobs per batch, on average over batches (1 before any was seen).
    pub fn mean_batch(&self) -> f64 {
        let jobs: f64 = self.batch_jobs.iter().sum();
        let batches: f64 = self
            .batch_jobs
            .iter()
            .enumerate()
            .map(|(index, jobs)| jobs / (index + 1) as f64)
            .sum();
        if batches > 0.0 {
            jobs / batches
        } else {
            1.0
        }
    }
}

/// Sorted arrival times cut into batches: a gap longer than `gap_s` starts a new one.
fn batch_sizes(sorted: &[i64], gap_s: i64) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut last: Option<i64> = None;
    for &at in sorted {
        match last {
            Some(previous) if at - previous <= gap_s => {
                if let Some(size) = sizes.last_mut() {
                    *size += 1;
                }
            }
            _ => sizes.push(1),
        }
        last = Some(at);
    }
    sizes
}

/// What the forecast saw and decided, for the decision's reason.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forecast {
    /// Arrivals per hour over the recent window.
    pub recent_per_hour: f64,
    /// The profile's highest rate from now to the lookahead, per hour.
    pub profile_per_hour: f64,
    /// Jobs per batch on average; agents that start `warm_share` of a batch's jobs at once; the
    /// batch size at the pool quantile.
    pub mean_batch: f64,
    pub warm_batch: u32,
    pub pool_batch: u32,
    /// Running warm capacity and stopped pool wanted now.
    pub warm: u32,
    pub stopped: u32,
}

impl Forecast {
    pub fn explain(&self) -> String {
        format!(
            "forecast: recent {:.1}/h, profile ahead {:.1}/h, batch mean {:.1}, agents for the share {}, large batch {} -> warm {}, stopped pool {}",
            self.recent_per_hour,
            self.profile_per_hour,
            self.mean_batch,
            self.warm_batch,
            self.pool_batch,
            self.warm,
            self.stopped
        )
    }
}

/// The sizing rule, pure: the expected rate (the higher of the recent one and the profile's
/// ahead, jobs per second) in batches of `mean_batch`; warm capacity = `warm_batch` (the agents
/// that start the wanted share of a batch at once) × P(a batch within `warm_keep_s`), rounded;
/// stopped pool = the `pool_batch` batch size × P(a batch within `pool_keep_s`) + the jobs
/// expected while used instances are replaced, rounded up.
pub fn size(
    rate_per_s: f64,
    mean_batch: f64,
    warm_batch: u32,
    pool_batch: u32,
    config: &ForecastConfig,
) -> (u32, u32) {
    let batches_per_s = rate_per_s.max(0.0) / mean_batch.max(1.0);
    let chance = |within_s: f64| 1.0 - (-batches_per_s * within_s).exp();
    let warm = (warm_batch as f64 * chance(config.warm_keep_s)).round() as u32;
    let refill_jobs = rate_per_s.max(0.0) * config.pool_refill_s;
    let stopped = (pool_batch as f64 * chance(config.pool_keep_s) + refill_jobs).ceil() as u32;
    (warm.min(config.warm_max), stopped)
}

/// The forecast's memory: the profile (learned from history and kept learning), recent arrivals,
/// the batch being formed, the slot being counted and the stopped-pool sizes wanted lately.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Forecaster {
    pub profile: Profile,
    /// (Unix second, arrivals) within the recent window, oldest first.
    recent: VecDeque<(i64, u32)>,
    /// Queued + running last seen: arrivals are its rises.
    last_demand: Option<u32>,
    /// The batch being formed: last arrival, jobs so far.
    batch: Option<(i64, usize)>,
    /// The slot being counted: (day number, slot), arrivals so far.
    slot: Option<((i64, usize), f64)>,
    /// (Unix second, stopped pool wanted), for the hold before shrinking.
    stopped_wanted: VecDeque<(i64, u32)>,
}

impl Forecaster {
    /// A forecaster that starts from what past days taught.
    pub fn with_profile(profile: Profile) -> Forecaster {
        Forecaster {
            profile,
            ..Forecaster::default()
        }
    }

    /// Records the queue's demand (queued + running) at `unix`: a rise is that many arrivals, and
    /// so is the demand found at the first observation (work waiting when the scaler starts).
    /// (A job that finishes as another arrives in the same observation hides one arrival; the
    /// hub's long-poll makes such coincidences rare.)
    pub fn observe(&mut self, unix: i64, demand: u32, config: &ForecastConfig) {
        let arrivals = demand.saturating_sub(self.last_demand.unwrap_or(0));
        self.last_demand = Some(demand);
        self.roll_slot(unix);
        if arrivals > 0 {
            self.recent.push_back((unix, arrivals));
            if let Some((_, count)) = &mut self.slot {
                *count += arrivals as f64;
            }
            self.batch = match self.batch {
                Some((last, jobs)) if unix - last <= config.batch_gap_s => {
                    Some((unix, jobs + arrivals as usize))
                }
                other => {
                    self.close_batch(other);
                    Some((unix, arrivals as usize))
                }
            };
        } else if self
            .batch
            .is_some_and(|(last, _)| unix - last > config.batch_gap_s)
        {
            let done = self.batch.take();
            self.close_batch(done);
        }
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| unix - at > config.recent_window_s)
        {
            self.recent.pop_front();
        }
    }

    fn close_batch(&mut self, batch: Option<(i64, usize)>) {
        if let Some((_, jobs)) = batch {
            self.profile.add_batch(jobs, 1.0);
        }
    }

    /// Folds the slot that ended into the profile when `unix` is in a new one.
    fn roll_slot(&mut self, unix: i64) {
        let key = (unix.div_euclid(86_400), slot_of(unix));
        match self.slot {
            Some((current, _)) if current == key => {}
            Some(((_, slot), count)) => {
                self.profile.fold_slot(slot, count);
                self.slot = Some((key, 0.0));
            }
            None => self.slot = Some((key, 0.0)),
        }
    }

    /// The forecast at `unix`: rates, batch sizes, and the warm capacity and stopped pool to keep
    /// (the pool only shrinks after `pool_hold_s`).
    pub fn forecast(&mut self, unix: i64, config: &ForecastConfig) -> Forecast {
        let recent: u32 = self
            .recent
            .iter()
            .filter(|(at, _)| unix - at <= config.recent_window_s)
            .map(|(_, n)| n)
            .sum();
        let recent_rate = recent as f64 / config.recent_window_s.max(1) as f64;
        let profile_rate = self.profile.peak_rate(unix, unix + config.lookahead_s);
        let mean_batch = self.profile.mean_batch();
        let warm_batch = self.profile.agents_for_share(config.warm_share);
        let pool_batch = self.profile.batch_quantile(config.pool_quantile);
        let (warm, stopped_now) = size(
            recent_rate.max(profile_rate),
            mean_batch,
            warm_batch,
            pool_batch,
            config,
        );
        let stopped = self.hold(unix, stopped_now, config.pool_hold_s);
        Forecast {
            recent_per_hour: recent_rate * 3600.0,
            profile_per_hour: profile_rate * 3600.0,
            mean_batch,
            warm_batch,
            pool_batch,
            warm,
            stopped,
        }
    }

    /// The largest stopped pool wanted within the last `hold_s`, `wanted` included.
    fn hold(&mut self, unix: i64, wanted: u32, hold_s: i64) -> u32 {
        while self
            .stopped_wanted
            .front()
            .is_some_and(|(at, _)| unix - at > hold_s)
        {
            self.stopped_wanted.pop_front();
        }
        while self
            .stopped_wanted
            .back()
            .is_some_and(|(_, w)| *w <= wanted)
        {
            self.stopped_wanted.pop_back();
        }
        self.stopped_wanted.push_back((unix, wanted));
        self.stopped_wanted.front().map_or(wanted, |(_, w)| *w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Monday 2026-11-23 00:00 UTC.
    const MIDNIGHT: i64 = 1_795_392_000;
    const HOUR: i64 = 3600;

    /// `days` days with a batch of `size` jobs at each of `times` (seconds after midnight).
    fn days_of(days: i64, times: &[i64], size: usize) -> Vec<i64> {
        (0..days)
            .flat_map(|day| {
                times.iter().flat_map(move |at| {
                    std::iter::repeat_n(MIDNIGHT - (day + 1) * 86_400 + at, size)
                })
            })
            .collect()
    }

    #[test]
    fn a_profile_learns_rates_per_slot_and_batch_sizes() {
        // Three days; a batch of 4 at 09:00 and a single job at 09:20 each day.
        let mut history = days_of(3, &[9 * HOUR], 4);
        history.extend(days_of(3, &[9 * HOUR + 1200], 1));
        let profile = Profile::learn(&history, 5);
        let per_hour = |at: i64| profile.peak_rate(at, at) * 3600.0;
        assert!(
            (per_hour(MIDNIGHT + 9 * HOUR) - 16.0).abs() < 1e-9,
            "4 jobs a 15-minute slot"
        );
        assert!((per_hour(MIDNIGHT + 9 * HOUR + 1200) - 4.0).abs() < 1e-9);
        assert_eq!(per_hour(MIDNIGHT + 3 * HOUR), 0.0);
        // 12 of 15 jobs came in batches of 4.
        assert_eq!(profile.batch_quantile(0.1), 1);
        assert_eq!(profile.batch_quantile(0.5), 4);
        assert!(
            (profile.mean_batch() - 2.5).abs() < 1e-9,
            "15 jobs in 6 batches"
        );
        assert_eq!(Profile::default().batch_quantile(0.5), 1);
    }

    #[test]
    fn agents_for_a_share_of_the_jobs() {
        // Jobs-weighted: 1/9 single, 8/9 in batches of 8 (one single, one batch of 8).
        let mut history = days_of(1, &[10 * HOUR], 8);
        history.extend(days_of(1, &[12 * HOUR], 1));
        let profile = Profile::learn(&history, 5);
        // k agents start 1 + min(k, 8) of the 9 jobs.
        let rows = [(0.2, 1), (0.25, 2), (0.5, 4), (0.9, 8), (1.0, 8)];
        for (share, agents) in rows {
            assert_eq!(profile.agents_for_share(share), agents, "share {share}");
        }
    }

    #[test]
    fn sizing_table() {
        let config = ForecastConfig::default();
        // name, jobs per hour, mean batch, warm batch, pool batch, (warm, stopped)
        let rows = [
            ("no demand foreseen", 0.0, 3.0, 3, 8, (0, 0)),
            // 0.1 batches an hour: a batch within 5 min 0.8 %, within 20 min 3.3 %.
            ("night", 0.3, 3.0, 3, 8, (0, 1)),
            // 10 batches an hour: 1 - e^-0.83 = 0.57 → warm round(1.7) = 2; stopped
            // 8 × (1 - e^-3.33) + 30 × 120/3600 = 7.71 + 1 → 9.
            ("shoulder", 30.0, 3.0, 3, 8, (2, 9)),
            // 30 batches an hour: warm 3; stopped 8 × 0.99995 + 3.33 → 12.
            ("peak", 100.0, 3.33, 3, 8, (3, 12)),
            ("warm capped at warm_max", 1000.0, 1.0, 20, 8, (8, 42)),
        ];
        for (name, per_hour, mean, warm_batch, pool_batch, expected) in rows {
            let sized = size(per_hour / 3600.0, mean, warm_batch, pool_batch, &config);
            assert_eq!(sized, expected, "{name}");
        }
    }

    #[test]
    fn the_forecast_sees_the_morning_ramp_before_it_comes() {
        let config = ForecastConfig::default();
        // A week of batches of 4 every 5 minutes from 07:00 to 09:00.
        let times: Vec<i64> = (0..24).map(|i| 7 * HOUR + i * 300).collect();
        let mut forecaster = Forecaster::with_profile(Profile::learn(&days_of(7, &times, 4), 5));
        let night = forecaster.forecast(MIDNIGHT + 3 * HOUR, &config);
        assert_eq!((night.warm, night.stopped), (0, 0), "{}", night.explain());
        // 06:50, nothing queued yet: the profile 10 minutes ahead already asks for capacity.
        let before = forecaster.forecast(MIDNIGHT + 6 * HOUR + 3000, &config);
        assert_eq!(before.recent_per_hour, 0.0);
        assert!((before.profile_per_hour - 48.0).abs() < 1e-9);
        assert!(
            before.warm >= 2 && before.stopped >= 4,
            "{}",
            before.explain()
        );
    }

    #[test]
    fn observed_arrivals_make_the_recent_rate_batches_and_the_profile() {
        let config = ForecastConfig::default();
        let mut forecaster = Forecaster::default();
        let start = MIDNIGHT + 9 * HOUR;
        // Demand (queued + running): a batch of 3 over two observations, then a single job; a
        // fall (jobs finishing) is not an arrival.
        for (offset, demand) in [(0, 0), (1, 2), (2, 3), (30, 1), (60, 2)] {
            forecaster.observe(start + offset, demand, &config);
        }
        let forecast = forecaster.forecast(start + 60, &config);
        assert!((forecast.recent_per_hour - 4.0 * 3600.0 / 900.0).abs() < 1e-9);
        assert_eq!(
            forecaster.profile.batch_quantile(1.0),
            3,
            "the batch of 3 closed"
        );
        // The next day's 09:00 slot has learned the 4 arrivals.
        forecaster.observe(start + 900, 2, &config);
        let next_day = start + 86_400;
        assert!((forecaster.profile.peak_rate(next_day, next_day) * 900.0 - 4.0).abs() < 1e-9);
        // Out of the recent window, the rate is gone.
        let later = forecaster.forecast(start + 2000, &config);
        assert_eq!(later.recent_per_hour, 0.0);
        // Work found waiting at the first observation arrived recently.
        let mut restarted = Forecaster::default();
        restarted.observe(start, 8, &config);
        let found = restarted.forecast(start, &config);
        assert!(
            (found.recent_per_hour - 32.0).abs() < 1e-9,
            "{}",
            found.explain()
        );
    }

    #[test]
    fn the_stopped_pool_shrinks_only_after_the_hold() {
        let config = ForecastConfig {
            pool_hold_s: 600,
            ..ForecastConfig::default()
        };
        let mut forecaster = Forecaster::default();
        assert_eq!(forecaster.hold(0, 10, config.pool_hold_s), 10);
        assert_eq!(forecaster.hold(300, 2, config.pool_hold_s), 10);
        assert_eq!(
            forecaster.hold(500, 12, config.pool_hold_s),
            12,
            "grows at once"
        );
        assert_eq!(forecaster.hold(1000, 3, config.pool_hold_s), 12);
        assert_eq!(
            forecaster.hold(1101, 3, config.pool_hold_s),
            3,
            "600 s after the 12"
        );
    }
}
