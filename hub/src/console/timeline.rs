//! A job's timeline, as the console draws it: the moments of its life (queued, instance
//! launched, agent registered, assigned, started, finished) and the phases between them, with
//! the wait split into "waiting for a machine" and "machine booting" — the question "why did my
//! job wait four minutes?" answered. Pure: times in, phases out.

/// The moments of a job's life, in Unix seconds; `None` where it has not happened or is not
/// known (the launch time comes from the instance's identity document, on EC2 only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Moments {
    pub queued: i64,
    pub launched: Option<i64>,
    pub registered: Option<i64>,
    pub assigned: Option<i64>,
    pub started: Option<i64>,
    pub finished: Option<i64>,
}

/// What a stretch of the timeline was spent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Queued with no machine for it yet (before its instance was launched, or, when the launch
    /// time is unknown, before its agent registered).
    WaitingForMachine,
    /// Its instance launched and booting until its agent registered.
    Booting,
    /// Its agent registered but not yet given the job (the next sync).
    Assigning,
    /// Given to its agent, which is starting it.
    Starting,
    Running,
}

impl Phase {
    pub(super) fn label(self) -> &'static str {
        match self {
            Phase::WaitingForMachine => "waiting for a machine",
            Phase::Booting => "machine booting",
            Phase::Assigning => "assigning",
            Phase::Starting => "starting",
            Phase::Running => "running",
        }
    }

    /// The CSS class of its bar segment.
    pub(super) fn class(self) -> &'static str {
        match self {
            Phase::WaitingForMachine => "p-wait",
            Phase::Booting => "p-boot",
            Phase::Assigning => "p-assign",
            Phase::Starting => "p-start",
            Phase::Running => "p-run",
        }
    }
}

/// One phase: from `start` to `end` (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    pub phase: Phase,
    pub start: i64,
    pub end: i64,
}

/// The phases of a job up to `now`, in order; empty phases are left out. An agent that was
/// already waiting when the job was queued makes the machine phases empty; a phase not yet
/// over ends at `now`, and a job stopped before it ran ends in the phase it was in.
pub(super) fn phases(moments: &Moments, now: i64) -> Vec<Span> {
    let queued = moments.queued;
    let open_end = moments.finished.unwrap_or(now).max(queued);
    // Each boundary is clamped into [queued, open_end] and kept in order.
    let mut cursor = queued;
    let mut at = |time: Option<i64>| -> Option<i64> {
        let time = time?.clamp(cursor, open_end);
        cursor = time;
        Some(time)
    };
    let launched = at(moments.launched);
    let registered = at(moments.registered);
    let assigned = at(moments.assigned);
    let started = at(moments.started);
    let boundaries = [
        (Phase::WaitingForMachine, launched.or(registered)),
        (Phase::Booting, launched.and(registered)),
        (Phase::Assigning, assigned),
        (Phase::Starting, started),
        (
            Phase::Running,
            started.and(moments.finished).map(|_| open_end),
        ),
    ];
    let mut spans = Vec::new();
    let mut start = queued;
    for (phase, end) in boundaries {
        let Some(end) = end else {
            continue;
        };
        if end > start {
            spans.push(Span { phase, start, end });
        }
        start = start.max(end);
    }
    // The phase the job is in (or was in when it finished without running).
    if open_end > start {
        let phase = match (registered, assigned, started) {
            (_, _, Some(_)) => Phase::Running,
            (_, Some(_), None) => Phase::Starting,
            (Some(_), None, None) => Phase::Assigning,
            (None, _, _) if launched.is_some() => Phase::Booting,
            _ => Phase::WaitingForMachine,
        };
        spans.push(Span {
            phase,
            start,
            end: open_end,
        });
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;
    use Phase::*;

    fn moments(times: [Option<i64>; 5]) -> Moments {
        let [launched, registered, assigned, started, finished] = times;
        Moments {
            queued: 100,
            launched,
            registered,
            assigned,
            started,
            finished,
        }
    }

    /// A scenario: name, the five optional moments after `queued` = 100, now, expected phases.
    type Case = (&'static str, [Option<i64>; 5], i64, Vec<(Phase, i64, i64)>);

    fn shape(spans: &[Span]) -> Vec<(Phase, i64, i64)> {
        spans.iter().map(|s| (s.phase, s.start, s.end)).collect()
    }

    #[test]
    fn timeline_phases_per_scenario() {
        let cases: [Case; 7] = [
            (
                "just queued",
                [None; 5],
                130,
                vec![(WaitingForMachine, 100, 130)],
            ),
            (
                "every phase, launch time known",
                [Some(110), Some(150), Some(151), Some(153), Some(200)],
                300,
                vec![
                    (WaitingForMachine, 100, 110),
                    (Booting, 110, 150),
                    (Assigning, 150, 151),
                    (Starting, 151, 153),
                    (Running, 153, 200),
                ],
            ),
            (
                "no launch time: the wait is all waiting for a machine",
                [None, Some(150), Some(150), Some(152), Some(160)],
                300,
                vec![
                    (WaitingForMachine, 100, 150),
                    (Starting, 150, 152),
                    (Running, 152, 160),
                ],
            ),
            (
                "an idle agent was waiting already",
                [Some(10), Some(50), Some(101), Some(102), Some(110)],
                300,
                vec![
                    (Assigning, 100, 101),
                    (Starting, 101, 102),
                    (Running, 102, 110),
                ],
            ),
            (
                "booting now",
                [Some(120), None, None, None, None],
                140,
                vec![(WaitingForMachine, 100, 120), (Booting, 120, 140)],
            ),
            (
                "running now",
                [None, Some(100), Some(100), Some(105), None],
                140,
                vec![(Starting, 100, 105), (Running, 105, 140)],
            ),
            (
                "stopped while queued",
                [None, None, None, None, Some(130)],
                300,
                vec![(WaitingForMachine, 100, 130)],
            ),
        ];
        for (name, times, now, expected) in cases {
            assert_eq!(shape(&phases(&moments(times), now)), expected, "{name}");
        }
    }
}
