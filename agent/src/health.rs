//! What the agent does about a machine whose GPUs are broken, between the pure checks
//! ([`crate::gpu_health`], [`crate::xid`]) and `main`: whether the health gate applies and what
//! it expects, what its verdict means (register, register with a warning, or leave), the gate's
//! report as registration sends it, and the record a faulty instance leaves on itself before it
//! goes — the `flotilla:fault` tag, `<unix seconds> <kind>: <detail>`, which the scaler reads
//! (also from terminated instances) to rest a pool whose machines keep failing.

use crate::config::{GateMode, GpuHealthOptions};
use crate::gpu_health::{Expected, GateReport};

/// The instance tag a faulty machine leaves (the scaler's pool-health rule reads it).
pub const FAULT_TAG: &str = "flotilla:fault";
/// EC2's longest tag value.
const MAX_TAG_VALUE: usize = 256;

/// Why a machine left the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// It failed the GPU health gate before registering.
    Gate,
    /// A fatal GPU Xid appeared in its kernel log.
    Xid,
}

impl FaultKind {
    fn as_str(self) -> &'static str {
        match self {
            FaultKind::Gate => "gpu-gate",
            FaultKind::Xid => "xid",
        }
    }
}

/// The `flotilla:fault` tag's value: `<unix seconds> <kind>: <detail>`, cut to EC2's 256
/// characters.
pub fn fault_tag_value(unix_now: i64, kind: FaultKind, detail: &str) -> String {
    let value = format!("{unix_now} {}: {detail}", kind.as_str());
    match value.char_indices().nth(MAX_TAG_VALUE) {
        Some((end, _)) => value[..end].to_string(),
        None => value,
    }
}

/// Whether the gate runs on this machine, and against what: `None` when it does not (turned off,
/// or a machine with no GPU that none was expected of); else what the machine should have
/// (`expect-gpus`, or its instance type's row in the image's table; `None` inside when nothing
/// says, and only the GPUs found are checked).
pub fn gate_plan(
    options: &GpuHealthOptions,
    instance_type: Option<&str>,
    gpus_found: bool,
) -> Option<Option<Expected>> {
    if options.gate == GateMode::Off {
        return None;
    }
    let expected = options
        .expect
        .clone()
        .or_else(|| instance_type.and_then(crate::gpu_health::expected_for));
    match (expected, gpus_found) {
        (None, false) => None,
        (expected, _) => Some(expected),
    }
}

/// What the agent does after the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Register,
    /// `gpu-gate: warn`: the failure is logged and reported at registration.
    RegisterDespiteFailure,
    /// The machine never registers; on EC2 it removes itself.
    Leave,
}

pub fn verdict(mode: GateMode, report: &GateReport) -> Verdict {
    match (report.passed(), mode) {
        (true, _) | (false, GateMode::Off) => Verdict::Register,
        (false, GateMode::Warn) => Verdict::RegisterDespiteFailure,
        (false, GateMode::Enforce) => Verdict::Leave,
    }
}

/// The gate's report as registration carries it.
pub fn to_wire(report: &GateReport) -> protocol::GpuGate {
    protocol::GpuGate {
        passed: report.passed(),
        checks: report
            .checks
            .iter()
            .map(|check| protocol::GpuGateCheck {
                name: check.name.to_string(),
                passed: check.passed,
                detail: check.detail.clone(),
            })
            .collect(),
    }
}

/// The reason a fatal Xid gives the job's log, the server and the fault tag.
pub fn fault_reason(agent_name: &str, event: &crate::xid::XidEvent) -> String {
    format!("GPU fault on {agent_name}: {}", crate::xid::describe(event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu_health::GateCheck;

    fn options(gate: GateMode, expect: Option<Expected>) -> GpuHealthOptions {
        GpuHealthOptions {
            gate,
            expect,
            ..GpuHealthOptions::default()
        }
    }

    #[test]
    fn when_the_gate_runs_and_what_it_expects() {
        let four = Expected::new(4, "A10G", "expect-gpus").unwrap();
        let enforce = options(GateMode::Enforce, None);
        let table = crate::gpu_health::expected_for("g5.12xlarge");
        assert!(table.is_some(), "the table knows g5.12xlarge");
        let rows = [
            (
                "a CPU machine",
                enforce.clone(),
                Some("c7i.large"),
                false,
                None,
            ),
            (
                "GPUs found, nothing expected",
                enforce.clone(),
                None,
                true,
                Some(None),
            ),
            (
                "the instance type's row",
                enforce.clone(),
                Some("g5.12xlarge"),
                false,
                Some(table.clone()),
            ),
            (
                "expect-gpus wins",
                options(GateMode::Enforce, Some(four.clone())),
                Some("g5.12xlarge"),
                true,
                Some(Some(four.clone())),
            ),
            (
                "turned off",
                options(GateMode::Off, Some(four)),
                Some("g5.12xlarge"),
                true,
                None,
            ),
        ];
        for (name, options, instance_type, found, expected) in rows {
            assert_eq!(
                gate_plan(&options, instance_type, found),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn verdicts_tags_and_the_wire_form() {
        let check = |passed| GateCheck {
            name: "GPU count",
            passed,
            detail: "3 of 4".into(),
        };
        let failed = GateReport {
            checks: vec![check(true), check(false)],
        };
        let passed = GateReport {
            checks: vec![check(true)],
        };
        assert_eq!(verdict(GateMode::Enforce, &failed), Verdict::Leave);
        assert_eq!(
            verdict(GateMode::Warn, &failed),
            Verdict::RegisterDespiteFailure
        );
        assert_eq!(verdict(GateMode::Enforce, &passed), Verdict::Register);
        let wire = to_wire(&failed);
        assert!(!wire.passed);
        assert_eq!(
            (wire.checks[1].name.as_str(), wire.checks[1].passed),
            ("GPU count", false)
        );
        assert_eq!(
            fault_tag_value(1_765_152_000, FaultKind::Xid, "Xid 79 on PCI 0000:00:1e"),
            "1765152000 xid: Xid 79 on PCI 0000:00:1e"
        );
        let long = fault_tag_value(1, FaultKind::Gate, &"é".repeat(400));
        assert_eq!(long.chars().count(), MAX_TAG_VALUE);
        assert!(long.starts_with("1 gpu-gate: é"));
    }
}
