//! The GPU health gate: what a GPU machine must show before it registers and takes a job. EC2
//! sometimes hands out a GPU instance whose driver did not load, that shows fewer GPUs than its
//! type has, or whose GPU memory already has uncorrectable errors or pending repairs; a job that
//! lands there fails in ways that look like the job's fault. The gate compares what `nvidia-smi`
//! reports with what the instance type should have (a table of EC2 GPU types), reads each GPU's
//! memory health, optionally runs DCGM's quick diagnostic, and looks for a fatal Xid in the kernel
//! log since boot ([`crate::xid`]). [`judge`] is the whole rule set, pure; [`run`] gathers its
//! input from the machine.

use crate::command::{find_program, Captured, CommandError};
use crate::gpu::{self, Gpu};
use crate::xid::{self, XidAction, XidEvent};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use thiserror::Error;

/// What a machine should have: `count` GPUs whose `nvidia-smi` name contains `model` as a word
/// (`A10G` matches `NVIDIA A10G`; `L4` does not match `NVIDIA L40S`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub count: u32,
    pub model: String,
    /// Where the expectation comes from, for messages: an instance type, or the configuration.
    pub source: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ExpectedError {
    #[error("the expected GPU count must be at least 1")]
    ZeroCount,
    #[error("the expected GPU model must not be empty")]
    EmptyModel,
}

impl Expected {
    pub fn new(count: u32, model: &str, source: &str) -> Result<Self, ExpectedError> {
        if count == 0 {
            return Err(ExpectedError::ZeroCount);
        }
        if model.trim().is_empty() {
            return Err(ExpectedError::EmptyModel);
        }
        Ok(Self {
            count,
            model: model.trim().to_string(),
            source: source.to_string(),
        })
    }

    /// Whether an `nvidia-smi` GPU name is this model: the model's words appear in the name, in
    /// order and whole, ignoring case (words split at spaces and dashes).
    pub fn matches_model(&self, name: &str) -> bool {
        let words = |text: &str| -> Vec<String> {
            text.split([' ', '-'])
                .filter(|w| !w.is_empty())
                .map(str::to_ascii_lowercase)
                .collect()
        };
        let (model, name) = (words(&self.model), words(name));
        !model.is_empty() && name.windows(model.len()).any(|window| window == model)
    }

    /// `4 NVIDIA A10G for g5.12xlarge`.
    pub fn describe(&self) -> String {
        let vendor = if self.model.starts_with("NVIDIA") || self.model.starts_with("Tesla") {
            ""
        } else {
            "NVIDIA "
        };
        format!("{} {vendor}{} for {}", self.count, self.model, self.source)
    }
}

/// One EC2 GPU family: its model, its sizes with more than the usual count, and that count
/// (`None`: only the listed sizes are known).
struct Family {
    family: &'static str,
    model: &'static str,
    sizes: &'static [Size],
    others: Option<u32>,
}

struct Size {
    size: &'static str,
    gpus: u32,
}

const fn size(size: &'static str, gpus: u32) -> Size {
    Size { size, gpus }
}

const fn family(
    family: &'static str,
    model: &'static str,
    sizes: &'static [Size],
    others: Option<u32>,
) -> Family {
    Family {
        family,
        model,
        sizes,
        others,
    }
}

/// EC2's GPU instance types and their NVIDIA GPUs, from AWS's "Accelerated computing instance
/// specifications" (<https://docs.aws.amazon.com/ec2/latest/instancetypes/ac.html>); models as
/// `nvidia-smi` names them (`Tesla T4`, `NVIDIA A10G`, `NVIDIA L4`, `NVIDIA L40S`,
/// `Tesla V100-SXM2-16GB`, `NVIDIA A100-SXM4-40GB`, `NVIDIA H100 80GB HBM3`, `NVIDIA H200`,
/// `NVIDIA T4G`).
// One family per line: a table, read down its columns.
#[rustfmt::skip]
const FAMILIES: &[Family] = &[
    family("g4dn", "T4", &[size("12xlarge", 4), size("metal", 8)], Some(1)),
    family("g5", "A10G", &[size("12xlarge", 4), size("24xlarge", 4), size("48xlarge", 8)], Some(1)),
    family("g6", "L4", &[size("12xlarge", 4), size("24xlarge", 4), size("48xlarge", 8)], Some(1)),
    family("g6e", "L40S", &[size("12xlarge", 4), size("24xlarge", 4), size("48xlarge", 8)], Some(1)),
    family("gr6", "L4", &[], Some(1)),
    family("g5g", "T4G", &[size("16xlarge", 2), size("metal", 2)], Some(1)),
    family("p3", "V100", &[size("2xlarge", 1), size("8xlarge", 4), size("16xlarge", 8)], None),
    family("p3dn", "V100", &[size("24xlarge", 8)], None),
    family("p4d", "A100", &[size("24xlarge", 8)], None),
    family("p4de", "A100", &[size("24xlarge", 8)], None),
    family("p5", "H100", &[size("48xlarge", 8)], None),
    family("p5e", "H200", &[size("48xlarge", 8)], None),
    family("p5en", "H200", &[size("48xlarge", 8)], None),
];

/// The GPUs an EC2 instance type has; `None` for a type the table does not know (a CPU type, or
/// a GPU type newer than the table: then the gate checks only what it can).
pub fn expected_for(instance_type: &str) -> Option<Expected> {
    let (family, size) = instance_type.trim().split_once('.')?;
    let entry = FAMILIES.iter().find(|f| f.family == family)?;
    let count = entry
        .sizes
        .iter()
        .find(|s| s.size == size)
        .map(|s| s.gpus)
        .or(entry.others)?;
    Expected::new(count, entry.model, instance_type.trim()).ok()
}

/// The per-GPU memory health query. The fields are `nvidia-smi --help-query-gpu`'s (listed there
/// by drivers 550 to 610): `ecc.errors.uncorrected.volatile.total` (uncorrectable ECC errors
/// since the driver loaded), `retired_pages.pending` (pages to retire at the next reboot; GPUs
/// before Ampere), `remapped_rows.pending` (a row remapping needing a GPU reset) and
/// `remapped_rows.failure` (a remapping ever failed; Ampere and later) — see NVIDIA's
/// "GPU memory error management" (<https://docs.nvidia.com/deploy/a100-gpu-mem-error-mgmt/>).
/// An unknown field fails the whole query, so these are spelled exactly.
pub const HEALTH_QUERY: &str = "--query-gpu=index,uuid,ecc.errors.uncorrected.volatile.total,retired_pages.pending,remapped_rows.pending,remapped_rows.failure";
/// The format both queries use.
pub const QUERY_FORMAT: &str = "--format=csv,noheader,nounits";

/// One GPU's memory health. `None`: the GPU does not report the value (`[N/A]`, `[Not
/// Supported]`: ECC off, or a GPU without page retirement or row remapping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuHealth {
    pub index: u32,
    pub uuid: String,
    pub ecc_uncorrected: Option<u64>,
    pub retired_pending: Option<bool>,
    pub remapped_pending: Option<bool>,
    pub remapped_failure: Option<bool>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum HealthError {
    #[error("unexpected health query line '{0}'")]
    BadLine(String),
    #[error("GPU {index} reports '{value}' for {field}")]
    BadValue {
        index: String,
        field: &'static str,
        value: String,
    },
}

fn not_reported(value: &str) -> bool {
    matches!(value, "[N/A]" | "N/A" | "[Not Supported]" | "Not Supported")
}

/// Parses the output of `nvidia-smi` [`HEALTH_QUERY`] [`QUERY_FORMAT`]. A value other than a
/// number, `Yes`/`No` or not-reported (`[GPU is lost]`, `[Unknown Error]`) is an error.
pub fn parse_health(text: &str) -> Result<Vec<GpuHealth>, HealthError> {
    let mut gpus = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [index, uuid, ecc, retired, remap_pending, remap_failure] = fields[..] else {
            return Err(HealthError::BadLine(line.to_string()));
        };
        let bad = |field: &'static str, value: &str| HealthError::BadValue {
            index: index.to_string(),
            field,
            value: value.to_string(),
        };
        let flag = |field: &'static str, value: &str| match value {
            "Yes" => Ok(Some(true)),
            "No" => Ok(Some(false)),
            v if not_reported(v) => Ok(None),
            v => Err(bad(field, v)),
        };
        gpus.push(GpuHealth {
            index: index.parse().map_err(|_| bad("index", index))?,
            uuid: uuid.to_string(),
            ecc_uncorrected: match ecc {
                v if not_reported(v) => None,
                v => Some(v.parse().map_err(|_| bad("uncorrectable ECC errors", v))?),
            },
            retired_pending: flag("retired pages pending", retired)?,
            remapped_pending: flag("row remapping pending", remap_pending)?,
            remapped_failure: flag("row remapping failure", remap_failure)?,
        });
    }
    Ok(gpus)
}

/// DCGM's quick diagnostic (`dcgmi diag -r 1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dcgm {
    /// The gate was asked for it but `dcgmi` is not installed: a pass.
    NotInstalled,
    /// The gate was not asked to run it.
    NotRequested,
    Passed,
    /// The failing rows (and DCGM's message), or why it did not run.
    Failed(String),
}

/// One row of `dcgmi diag`'s table: `| Persistence Mode          | Pass |`.
struct DiagRow<'a> {
    name: &'a str,
    result: &'a str,
}

fn diag_row(line: &str) -> Option<DiagRow<'_>> {
    let inner = line.trim().strip_prefix('|')?.strip_suffix('|')?;
    let (name, result) = inner.split_once('|')?;
    Some(DiagRow {
        name: name.trim(),
        result,
    })
}

/// A failing test and DCGM's message about it.
struct DiagFailure {
    test: String,
    message: String,
}

/// Reads `dcgmi diag -r 1` output: a table of `| Test | Pass |` rows under section lines
/// (`|-----  Deployment  ---…|`), where a failing test reads `Fail` (or, per GPU, `GPU0: Fail`)
/// and its `Error`/`Warning` rows, wrapped at 45 characters, say why (the format of DCGM 3 and
/// 4, <https://docs.nvidia.com/datacenter/dcgm/latest/reference/command-line-reference/dcgmi/dcgmi-diag.html>).
/// `success`: whether `dcgmi` exited 0; a failure without a `Fail` row fails with the output.
pub fn parse_dcgm_diag(output: &str, success: bool) -> Dcgm {
    let mut failures: Vec<DiagFailure> = Vec::new();
    let mut last_test = String::new();
    let mut failing = false;
    for row in output.lines().filter_map(diag_row) {
        let result = row.result.trim();
        match row.name {
            "Error" | "Warning" | "" if failing => {
                if let Some(failure) = failures.last_mut() {
                    failure.message.extend(row.result.chars().skip(1).take(45));
                }
            }
            "" if result.contains("Fail") => {
                failing = true;
                failures.push(DiagFailure {
                    test: last_test.clone(),
                    message: String::new(),
                });
            }
            "Error" | "Warning" | "Info" | "" => {}
            name => {
                last_test = name.to_string();
                failing = result.starts_with("Fail");
                if failing {
                    failures.push(DiagFailure {
                        test: name.to_string(),
                        message: String::new(),
                    });
                }
            }
        }
    }
    match (failures.is_empty(), success) {
        (true, true) => Dcgm::Passed,
        (true, false) => Dcgm::Failed(first_line(output, "dcgmi diag failed and printed nothing")),
        (false, _) => Dcgm::Failed(describe_failures(&failures)),
    }
}

fn describe_failures(failures: &[DiagFailure]) -> String {
    let mut named: Vec<String> = Vec::new();
    for failure in failures {
        let message = failure
            .message
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let line = match message.is_empty() {
            true => failure.test.clone(),
            false => format!("{} ({message})", failure.test),
        };
        if !named.contains(&line) {
            named.push(line);
        }
    }
    named.join("; ")
}

fn first_line(text: &str, otherwise: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(otherwise)
        .to_string()
}

/// One verdict of the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateCheck {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

fn check(name: &'static str, passed: bool, detail: impl Into<String>) -> GateCheck {
    GateCheck {
        name,
        passed,
        detail: detail.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateReport {
    pub checks: Vec<GateCheck>,
}

impl GateReport {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// The failed checks' details on one line, `; `-separated (empty when it passed).
    pub fn failures(&self) -> String {
        let failed: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.detail.as_str())
            .collect();
        failed.join("; ")
    }

    /// One line per check, `ok` or `FAIL` first, as the agent's self-test prints them.
    pub fn describe(&self) -> String {
        self.checks
            .iter()
            .map(|c| {
                let verdict = if c.passed { "ok" } else { "FAIL" };
                format!("{verdict:<4} {}: {}\n", c.name, c.detail)
            })
            .collect()
    }
}

/// Everything the gate judges, gathered by [`run`] (or written by a test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateInput {
    /// What the machine should have; `None`: unknown, so count and model are not checked.
    pub expected: Option<Expected>,
    /// `nvidia-smi`'s inventory, or why it failed (its message and exit status).
    pub inventory: Result<Vec<Gpu>, String>,
    /// `nvidia-smi` [`HEALTH_QUERY`], or why it failed.
    pub health: Result<Vec<GpuHealth>, String>,
    pub dcgm: Dcgm,
    /// The fatal Xids in the kernel log since boot (Note ones given here are ignored).
    pub fatal_xids: Vec<XidEvent>,
    /// Why the kernel log could not be read, when it could not.
    pub kernel_log_error: Option<String>,
}

/// The whole rule set, pure: the driver answers (and lists GPUs when some are expected); count
/// and model match `expected`; no GPU has uncorrectable volatile ECC errors, retired pages
/// pending, or a row remapping pending or failed; DCGM's diagnostic passed (or is not installed);
/// no fatal Xid since boot. A machine that expects no GPU and has none (a CPU machine) passes.
pub fn judge(input: &GateInput) -> GateReport {
    let mut checks = vec![driver_check(input)];
    if let Ok(gpus) = &input.inventory {
        if !gpus.is_empty() {
            checks.extend(inventory_checks(input.expected.as_ref(), gpus));
            checks.extend(memory_checks(&input.health));
        }
    }
    checks.push(dcgm_check(&input.dcgm));
    checks.push(xid_check(input));
    GateReport { checks }
}

fn driver_check(input: &GateInput) -> GateCheck {
    const NAME: &str = "NVIDIA driver";
    let expected = input.expected.as_ref();
    match (&input.inventory, expected) {
        (Ok(gpus), _) if !gpus.is_empty() => check(NAME, true, gpu::describe(gpus)),
        (Ok(_), None) => check(NAME, true, "no NVIDIA GPUs, none expected"),
        (Ok(_), Some(expected)) => check(
            NAME,
            false,
            format!(
                "nvidia-smi lists no GPUs (expected {})",
                expected.describe()
            ),
        ),
        (Err(error), _)
            if error.contains("NVIDIA-SMI has failed")
                || error.contains("driver is not loaded") =>
        {
            check(NAME, false, format!("driver not loaded: {error}"))
        }
        (Err(error), _) => check(NAME, false, format!("nvidia-smi: {error}")),
    }
}

fn inventory_checks(expected: Option<&Expected>, gpus: &[Gpu]) -> Vec<GateCheck> {
    let visible = gpus.len();
    let Some(expected) = expected else {
        let detail = format!("{visible} GPU(s) visible; no expected count for this machine");
        return vec![check("GPU count", true, detail)];
    };
    let wanted = expected.count as usize;
    let count = match visible.cmp(&wanted) {
        std::cmp::Ordering::Equal => check(
            "GPU count",
            true,
            format!("{visible} of {wanted} GPUs visible"),
        ),
        std::cmp::Ordering::Less => check(
            "GPU count",
            false,
            format!(
                "{visible} of {wanted} GPUs visible (expected {})",
                expected.describe()
            ),
        ),
        std::cmp::Ordering::Greater => check(
            "GPU count",
            false,
            format!("{visible} GPUs visible (expected {})", expected.describe()),
        ),
    };
    let wrong: Vec<String> = gpus
        .iter()
        .filter(|g| !expected.matches_model(&g.name))
        .map(|g| format!("GPU {} is {}, not {}", g.index, g.name, expected.model))
        .collect();
    let model = match wrong.is_empty() {
        true => check(
            "GPU model",
            true,
            format!("every GPU is a {}", expected.model),
        ),
        false => check("GPU model", false, wrong.join(", ")),
    };
    vec![count, model]
}

fn memory_checks(health: &Result<Vec<GpuHealth>, String>) -> Vec<GateCheck> {
    let gpus = match health {
        Ok(gpus) => gpus,
        Err(error) => {
            return vec![check(
                "GPU memory health",
                false,
                format!("the health query failed: {error}"),
            )]
        }
    };
    let ecc = per_gpu(
        gpus,
        |g| g.ecc_uncorrected.map(|n| n > 0),
        |g| {
            let n = g.ecc_uncorrected.unwrap_or(0);
            format!(
                "{n} uncorrectable ECC error{}",
                if n == 1 { "" } else { "s" }
            )
        },
    );
    let retired = per_gpu(
        gpus,
        |g| g.retired_pending,
        |_| "retired pages pending (reboot to retire them)".to_string(),
    );
    let remap = per_gpu(
        gpus,
        |g| match (g.remapped_pending, g.remapped_failure) {
            (None, None) => None,
            (pending, failure) => Some(pending == Some(true) || failure == Some(true)),
        },
        |g| match g.remapped_failure {
            Some(true) => "row remapping failed".to_string(),
            _ => "row remapping pending (reset the GPU)".to_string(),
        },
    );
    vec![
        memory_check(
            "uncorrectable ECC errors",
            ecc,
            "none since the driver loaded",
        ),
        memory_check("retired pages", retired, "none pending"),
        memory_check("row remapping", remap, "none pending or failed"),
    ]
}

/// One memory check over every GPU: the failing GPUs, and whether any GPU reports the value.
struct PerGpu {
    failures: Vec<String>,
    reported: bool,
}

/// `bad` says whether a GPU fails (`None`: it does not report the value), `why` says how.
fn per_gpu(
    gpus: &[GpuHealth],
    bad: impl Fn(&GpuHealth) -> Option<bool>,
    why: impl Fn(&GpuHealth) -> String,
) -> PerGpu {
    let failures = gpus
        .iter()
        .filter(|g| bad(g) == Some(true))
        .map(|g| format!("GPU {}: {}", g.index, why(g)))
        .collect();
    PerGpu {
        failures,
        reported: gpus.iter().any(|g| bad(g).is_some()),
    }
}

fn memory_check(name: &'static str, result: PerGpu, clean: &str) -> GateCheck {
    match (result.failures.is_empty(), result.reported) {
        (false, _) => check(name, false, result.failures.join(", ")),
        (true, true) => check(name, true, clean),
        (true, false) => check(name, true, "not reported by these GPUs"),
    }
}

fn dcgm_check(dcgm: &Dcgm) -> GateCheck {
    const NAME: &str = "DCGM diagnostic";
    match dcgm {
        Dcgm::NotInstalled => check(NAME, true, "not installed, skipped"),
        Dcgm::NotRequested => check(NAME, true, "not requested, skipped"),
        Dcgm::Passed => check(NAME, true, "dcgmi diag -r 1 passed"),
        Dcgm::Failed(why) => check(NAME, false, format!("DCGM diagnostic failed: {why}")),
    }
}

fn xid_check(input: &GateInput) -> GateCheck {
    const NAME: &str = "fatal Xid since boot";
    let fatal: Vec<String> = input
        .fatal_xids
        .iter()
        .filter(|e| xid::classify(e.xid).action == XidAction::Fatal)
        .map(|e| format!("{} since boot", xid::describe(e)))
        .collect();
    // An unreadable log says nothing about the hardware (the image's agent may read it:
    // CAP_SYSLOG; an agent run by hand on a workstation may not): the check is skipped and says
    // so, rather than keeping a healthy machine out of the fleet.
    match (&input.kernel_log_error, fatal.is_empty()) {
        (_, false) => check(NAME, false, fatal.join(", ")),
        (Some(error), true) => check(
            NAME,
            true,
            format!("not checked: cannot read the kernel log: {error}"),
        ),
        (None, true) => check(NAME, true, "none in the kernel log"),
    }
}

/// How long `nvidia-smi` may take (it can hang on a wedged driver), as in [`crate::gpu`].
const NVIDIA_SMI_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `dcgmi diag -r 1` may take: seconds normally.
const DCGMI_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the gate on this machine: `nvidia-smi` (the inventory and [`HEALTH_QUERY`]) and, when
/// `dcgm` is set and `dcgmi` is installed, `dcgmi diag -r 1`, both found on `PATH`; reads what
/// `kernel_log` (`/dev/kmsg`, or a file) holds; then [`judge`]s.
pub fn run(expected: Option<Expected>, dcgm: bool, kernel_log: &Path) -> GateReport {
    let path = std::env::var("PATH").unwrap_or_default();
    run_in(&path, expected, dcgm, kernel_log)
}

/// [`run`] with the tools looked up in `path` (a `PATH` value) instead of the environment's.
pub fn run_in(path: &str, expected: Option<Expected>, dcgm: bool, kernel_log: &Path) -> GateReport {
    let (inventory, health) = match find_program("nvidia-smi", path) {
        None if expected.is_none() => (Ok(Vec::new()), Ok(Vec::new())),
        None => {
            let missing = "not installed (not on PATH)".to_string();
            (Err(missing.clone()), Err(missing))
        }
        Some(smi) => query_nvidia_smi(&smi),
    };
    let dcgm = match (dcgm, find_program("dcgmi", path)) {
        (false, _) => Dcgm::NotRequested,
        (true, None) => Dcgm::NotInstalled,
        (true, Some(dcgmi)) => run_dcgmi(&dcgmi),
    };
    let (fatal_xids, kernel_log_error) = match xid::since_boot(kernel_log) {
        Ok(events) => (
            events
                .into_iter()
                .filter(|e| xid::classify(e.xid).action == XidAction::Fatal)
                .collect(),
            None,
        ),
        Err(error) => (
            Vec::new(),
            Some(format!("{}: {error}", kernel_log.display())),
        ),
    };
    judge(&GateInput {
        expected,
        inventory,
        health,
        dcgm,
        fatal_xids,
        kernel_log_error,
    })
}

type Queried = (Result<Vec<Gpu>, String>, Result<Vec<GpuHealth>, String>);

fn query_nvidia_smi(smi: &Path) -> Queried {
    let inventory = capture(smi, &[gpu::QUERY, QUERY_FORMAT], NVIDIA_SMI_TIMEOUT)
        .and_then(|out| gpu::parse_nvidia_smi(&out).map_err(|e| e.to_string()));
    if let Err(error) = &inventory {
        // The health query would fail the same way, ten seconds later on a wedged driver.
        return (inventory.clone(), Err(error.clone()));
    }
    let health = capture(smi, &[HEALTH_QUERY, QUERY_FORMAT], NVIDIA_SMI_TIMEOUT)
        .and_then(|out| parse_health(&out).map_err(|e| e.to_string()));
    (inventory, health)
}

fn run_dcgmi(dcgmi: &Path) -> Dcgm {
    match run_captured(dcgmi, &["diag", "-r", "1"], DCGMI_TIMEOUT) {
        Ok(out) => parse_dcgm_diag(
            &format!("{}\n{}", out.stdout, out.stderr),
            out.status.success(),
        ),
        Err(error) => Dcgm::Failed(error.to_string()),
    }
}

/// What `nvidia-smi`'s exit status means, from its manual page's RETURN VALUE section.
fn nvidia_smi_status(code: Option<i32>) -> &'static str {
    match code {
        Some(2) => "a supplied argument or flag is invalid",
        Some(3) => "the requested operation is not available on the target device",
        Some(4) => "the current user does not have permission",
        Some(6) => "a query to find an object was unsuccessful",
        Some(8) => "a device's external power cables are not properly attached",
        Some(9) => "NVIDIA driver is not loaded",
        Some(10) => "the NVIDIA kernel detected an interrupt issue with a GPU",
        Some(12) => "the NVML shared library could not be found or loaded",
        Some(14) => "the infoROM is corrupted",
        Some(15) => "the GPU has fallen off the bus or has otherwise become inaccessible",
        _ => "other error",
    }
}

/// `nvidia-smi args`' stdout when it exits 0; otherwise its message (it prints NVIDIA-SMI's
/// failures on stdout) and what its exit status means.
fn capture(smi: &Path, args: &[&str], timeout: Duration) -> Result<String, String> {
    let out = run_captured(smi, args, timeout).map_err(|e| e.to_string())?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let message = first_line(&format!("{}\n{}", out.stdout, out.stderr), "no output");
    let code = out.status.code();
    Err(format!(
        "{message} (nvidia-smi exit status {}: {})",
        code.map_or_else(|| "none".to_string(), |c| c.to_string()),
        nvidia_smi_status(code)
    ))
}

/// Runs `program args` within `timeout`, keeping its output whatever its status.
fn run_captured(
    program: &Path,
    args: &[&str],
    timeout: Duration,
) -> Result<Captured, CommandError> {
    let mut command = Command::new(program);
    command.args(args);
    crate::command::capture(command, &program.display().to_string(), timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVENTORY: &str = include_str!("../tests/fixtures/gpu/g5.12xlarge-inventory.csv");
    const HEALTHY: &str = include_str!("../tests/fixtures/gpu/g5.12xlarge-health.csv");
    const ECC: &str = include_str!("../tests/fixtures/gpu/health-ecc.csv");
    const T4_NA: &str = include_str!("../tests/fixtures/gpu/health-t4-na.csv");
    const NO_ECC: &str = include_str!("../tests/fixtures/gpu/health-no-ecc.csv");
    const V100_RETIRED: &str =
        include_str!("../tests/fixtures/gpu/health-v100-retired-pending.csv");
    const GPU_LOST: &str = include_str!("../tests/fixtures/gpu/health-gpu-lost.csv");
    const DCGM_PASS: &str = include_str!("../tests/fixtures/gpu/dcgm-diag-pass.txt");
    const DCGM_FAIL: &str = include_str!("../tests/fixtures/gpu/dcgm-diag-fail.txt");
    const NO_DRIVER: &str = include_str!("../tests/fixtures/gpu/nvidia-smi-no-driver.txt");
    const KMSG: &str = include_str!("../tests/fixtures/gpu/kmsg-xid79.txt");

    fn a10g(n: usize) -> Vec<Gpu> {
        gpu::parse_nvidia_smi(INVENTORY).unwrap()[..n].to_vec()
    }

    fn named(names: &[&str]) -> Vec<Gpu> {
        let mut gpus = a10g(names.len());
        for (gpu, name) in gpus.iter_mut().zip(names) {
            gpu.name = (*name).to_string();
        }
        gpus
    }

    fn health(text: &str, n: usize) -> Result<Vec<GpuHealth>, String> {
        Ok(parse_health(text).unwrap()[..n].to_vec())
    }

    fn g5() -> Option<Expected> {
        expected_for("g5.12xlarge")
    }

    fn machine(
        expected: Option<Expected>,
        gpus: Vec<Gpu>,
        health: Result<Vec<GpuHealth>, String>,
    ) -> GateInput {
        GateInput {
            expected,
            inventory: Ok(gpus),
            health,
            dcgm: Dcgm::NotInstalled,
            fatal_xids: Vec::new(),
            kernel_log_error: None,
        }
    }

    fn healthy_g5() -> GateInput {
        machine(g5(), a10g(4), health(HEALTHY, 4))
    }

    fn xid79() -> XidEvent {
        xid::parse_line(
            "NVRM: Xid (PCI:0000:00:1e): 79, pid=1, name=x, GPU has fallen off the bus.",
        )
        .unwrap()
    }

    struct Case {
        state: &'static str,
        input: GateInput,
        /// `GateReport::failures()`: empty for a machine that passes.
        failures: &'static str,
    }

    #[test]
    #[allow(clippy::too_many_lines)] // a table: one row per machine state
    fn the_gate_judges_each_machine_state() {
        let no_driver = format!(
            "{} (nvidia-smi exit status 9: NVIDIA driver is not loaded)",
            NO_DRIVER.trim()
        );
        let cases = [
            Case { state: "a healthy g5.12xlarge", input: healthy_g5(), failures: "" },
            Case {
                state: "one GPU missing",
                input: machine(g5(), a10g(3), health(HEALTHY, 3)),
                failures: "3 of 4 GPUs visible (expected 4 NVIDIA A10G for g5.12xlarge)",
            },
            Case {
                state: "one GPU missing, another with ECC errors",
                input: machine(g5(), a10g(3), {
                    let mut gpus = parse_health(HEALTHY).unwrap()[..3].to_vec();
                    gpus[1].ecc_uncorrected = Some(2);
                    Ok(gpus)
                }),
                failures: "3 of 4 GPUs visible (expected 4 NVIDIA A10G for g5.12xlarge); GPU 1: 2 uncorrectable ECC errors",
            },
            Case {
                state: "ECC errors and a row remapping pending",
                input: machine(g5(), a10g(4), health(ECC, 4)),
                failures: "GPU 1: 2 uncorrectable ECC errors; GPU 1: row remapping pending (reset the GPU)",
            },
            Case {
                state: "a row remapping failed",
                input: machine(g5(), a10g(4), {
                    let mut gpus = parse_health(HEALTHY).unwrap();
                    gpus[3].remapped_failure = Some(true);
                    Ok(gpus)
                }),
                failures: "GPU 3: row remapping failed",
            },
            Case {
                state: "a V100 with pages to retire",
                input: machine(None, named(&["Tesla V100-SXM2-16GB"; 2]), health(V100_RETIRED, 2)),
                failures: "GPU 1: 1 uncorrectable ECC error; GPU 1: retired pages pending (reboot to retire them)",
            },
            Case {
                state: "a T4 (page retirement, no row remapper), healthy",
                input: machine(expected_for("g4dn.xlarge"), named(&["Tesla T4"]), health(T4_NA, 1)),
                failures: "",
            },
            Case {
                state: "a GPU without ECC (nothing reported)",
                input: machine(None, named(&["NVIDIA GeForce RTX 4080 SUPER"]), health(NO_ECC, 1)),
                failures: "",
            },
            Case {
                state: "the health query fails",
                input: machine(g5(), a10g(4), parse_health(GPU_LOST).map_err(|e| e.to_string())),
                failures: "the health query failed: GPU 0 reports '[GPU is lost]' for uncorrectable ECC errors",
            },
            Case {
                state: "the driver is not loaded",
                input: GateInput { inventory: Err(no_driver.clone()), health: Err(no_driver.clone()), ..healthy_g5() },
                failures: "driver not loaded: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running. (nvidia-smi exit status 9: NVIDIA driver is not loaded)",
            },
            Case {
                state: "no nvidia-smi on a GPU instance type",
                input: GateInput { inventory: Err("not installed (not on PATH)".into()), health: Err(String::new()), ..healthy_g5() },
                failures: "nvidia-smi: not installed (not on PATH)",
            },
            Case {
                state: "nvidia-smi lists no GPU on a GPU instance type",
                input: machine(g5(), Vec::new(), Ok(Vec::new())),
                failures: "nvidia-smi lists no GPUs (expected 4 NVIDIA A10G for g5.12xlarge)",
            },
            Case {
                state: "more GPUs than the type has",
                input: machine(expected_for("g5.xlarge"), a10g(2), health(HEALTHY, 2)),
                failures: "2 GPUs visible (expected 1 NVIDIA A10G for g5.xlarge)",
            },
            Case {
                state: "the wrong model",
                input: machine(expected_for("g4dn.xlarge"), named(&["NVIDIA L4"]), health(HEALTHY, 1)),
                failures: "GPU 0 is NVIDIA L4, not T4",
            },
            Case {
                state: "an L40S where an L4 belongs",
                input: machine(expected_for("g6.xlarge"), named(&["NVIDIA L40S"]), health(HEALTHY, 1)),
                failures: "GPU 0 is NVIDIA L40S, not L4",
            },
            Case {
                state: "an L4 where an L4 belongs",
                input: machine(expected_for("g6.xlarge"), named(&["NVIDIA L4"]), health(HEALTHY, 1)),
                failures: "",
            },
            Case {
                state: "a CPU machine",
                input: machine(None, Vec::new(), Ok(Vec::new())),
                failures: "",
            },
            Case {
                state: "a CPU machine whose kernel log is unreadable",
                input: GateInput { kernel_log_error: Some("/dev/kmsg: Permission denied".into()), ..machine(None, Vec::new(), Ok(Vec::new())) },
                failures: "",
            },
            Case {
                state: "a GPU machine whose kernel log is unreadable (skipped, said so)",
                input: GateInput { kernel_log_error: Some("/dev/kmsg: Permission denied".into()), ..healthy_g5() },
                failures: "",
            },
            Case {
                state: "an instance type the table does not know",
                input: machine(expected_for("g7.xlarge"), a10g(2), health(HEALTHY, 2)),
                failures: "",
            },
            Case {
                state: "DCGM passed",
                input: GateInput { dcgm: Dcgm::Passed, ..healthy_g5() },
                failures: "",
            },
            Case {
                state: "DCGM failed",
                input: GateInput { dcgm: Dcgm::Failed("Inforom".into()), ..healthy_g5() },
                failures: "DCGM diagnostic failed: Inforom",
            },
            Case {
                state: "a fatal Xid since boot",
                input: GateInput { fatal_xids: vec![xid79()], ..healthy_g5() },
                failures: "Xid 79 on PCI 0000:00:1e (GPU has fallen off the bus) since boot",
            },
            Case {
                state: "an application's Xid passed in as fatal",
                input: GateInput { fatal_xids: vec![XidEvent { xid: 13, ..xid79() }], ..healthy_g5() },
                failures: "",
            },
        ];
        for case in cases {
            let report = judge(&case.input);
            assert_eq!(
                report.failures(),
                case.failures,
                "{}:\n{}",
                case.state,
                report.describe()
            );
            assert_eq!(report.passed(), case.failures.is_empty(), "{}", case.state);
        }
    }

    #[test]
    fn the_report_reads_like_the_self_test() {
        let report = judge(&machine(g5(), a10g(3), health(HEALTHY, 3)));
        let text = report.describe();
        assert!(
            text.starts_with(
                "ok   NVIDIA driver: 3 NVIDIA GPU(s): NVIDIA A10G (23028 MiB), driver 550.54.15\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("\nFAIL GPU count: 3 of 4 GPUs visible"),
            "{text}"
        );
        assert!(
            text.contains("\nok   GPU model: every GPU is a A10G\n"),
            "{text}"
        );
        assert!(
            text.contains("\nok   uncorrectable ECC errors: none since the driver loaded\n"),
            "{text}"
        );
        assert!(
            text.contains("\nok   retired pages: not reported by these GPUs\n"),
            "{text}"
        );
        assert!(
            text.ends_with("ok   fatal Xid since boot: none in the kernel log\n"),
            "{text}"
        );
        assert_eq!(text.lines().count(), report.checks.len());
    }

    #[test]
    fn instance_types_have_their_gpus() {
        let table = [
            ("g4dn.xlarge", 1, "T4"),
            ("g4dn.12xlarge", 4, "T4"),
            ("g4dn.metal", 8, "T4"),
            ("g5.2xlarge", 1, "A10G"),
            ("g5.12xlarge", 4, "A10G"),
            ("g5.24xlarge", 4, "A10G"),
            ("g5.48xlarge", 8, "A10G"),
            ("g6.16xlarge", 1, "L4"),
            ("g6.24xlarge", 4, "L4"),
            ("g6.48xlarge", 8, "L4"),
            ("g6e.xlarge", 1, "L40S"),
            ("g6e.12xlarge", 4, "L40S"),
            ("g6e.48xlarge", 8, "L40S"),
            ("gr6.8xlarge", 1, "L4"),
            ("g5g.xlarge", 1, "T4G"),
            ("g5g.16xlarge", 2, "T4G"),
            ("g5g.metal", 2, "T4G"),
            ("p3.2xlarge", 1, "V100"),
            ("p3.8xlarge", 4, "V100"),
            ("p3.16xlarge", 8, "V100"),
            ("p3dn.24xlarge", 8, "V100"),
            ("p4d.24xlarge", 8, "A100"),
            ("p4de.24xlarge", 8, "A100"),
            ("p5.48xlarge", 8, "H100"),
            ("p5e.48xlarge", 8, "H200"),
            ("p5en.48xlarge", 8, "H200"),
        ];
        for (instance_type, count, model) in table {
            let expected = expected_for(instance_type).unwrap_or_else(|| panic!("{instance_type}"));
            assert_eq!(
                (expected.count, expected.model.as_str()),
                (count, model),
                "{instance_type}"
            );
            assert_eq!(expected.source, instance_type);
        }
        for unknown in [
            "m7i.large",
            "p3.xlarge",
            "p5.4xlarge",
            "g5",
            "",
            "inf2.xlarge",
            "g6f.large",
        ] {
            assert_eq!(expected_for(unknown), None, "{unknown}");
        }
        assert_eq!(
            expected_for("g5.12xlarge").unwrap().describe(),
            "4 NVIDIA A10G for g5.12xlarge"
        );
    }

    #[test]
    fn an_expectation_needs_a_gpu_and_a_model() {
        assert_eq!(
            Expected::new(0, "A10G", "configuration"),
            Err(ExpectedError::ZeroCount)
        );
        assert_eq!(
            Expected::new(2, " ", "configuration"),
            Err(ExpectedError::EmptyModel)
        );
        let expected = Expected::new(2, " Tesla T4 ", "configuration").unwrap();
        assert_eq!(expected.describe(), "2 Tesla T4 for configuration");
    }

    #[test]
    fn models_match_whole_words() {
        let cases = [
            ("A10G", "NVIDIA A10G", true),
            ("a10g", "NVIDIA A10G", true),
            ("T4", "Tesla T4", true),
            ("V100", "Tesla V100-SXM2-16GB", true),
            ("A100", "NVIDIA A100-SXM4-40GB", true),
            ("H100", "NVIDIA H100 80GB HBM3", true),
            ("A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB", true),
            ("A100-SXM4-80GB", "NVIDIA A100-SXM4-40GB", false),
            ("L4", "NVIDIA L40S", false),
            ("T4", "NVIDIA T4G", false),
            ("H100", "NVIDIA H200", false),
        ];
        for (model, name, matches) in cases {
            let expected = Expected::new(1, model, "test").unwrap();
            assert_eq!(expected.matches_model(name), matches, "{model} / {name}");
        }
    }

    #[test]
    fn health_fixtures_parse() {
        let healthy = parse_health(HEALTHY).unwrap();
        assert_eq!(healthy.len(), 4);
        assert_eq!(
            healthy[2],
            GpuHealth {
                index: 2,
                uuid: "GPU-6a5a0c2b-1111-2222-3333-444455556662".into(),
                ecc_uncorrected: Some(0),
                retired_pending: None,
                remapped_pending: Some(false),
                remapped_failure: Some(false),
            }
        );
        let ecc = parse_health(ECC).unwrap();
        assert_eq!(
            (ecc[1].ecc_uncorrected, ecc[1].remapped_pending),
            (Some(2), Some(true))
        );
        let t4 = &parse_health(T4_NA).unwrap()[0];
        assert_eq!(
            (t4.retired_pending, t4.remapped_pending, t4.remapped_failure),
            (Some(false), None, None)
        );
        let none = &parse_health(NO_ECC).unwrap()[0];
        assert_eq!((none.ecc_uncorrected, none.retired_pending), (None, None));
        let v100 = parse_health(V100_RETIRED).unwrap();
        assert_eq!(
            (v100[1].retired_pending, v100[1].remapped_pending),
            (Some(true), None)
        );
        assert!(parse_health("").unwrap().is_empty());
        let errors = [
            (
                GPU_LOST,
                "GPU 0 reports '[GPU is lost]' for uncorrectable ECC errors",
            ),
            (
                "0, GPU-a, 0, Maybe, No, No",
                "GPU 0 reports 'Maybe' for retired pages pending",
            ),
            ("x, GPU-a, 0, No, No, No", "GPU x reports 'x' for index"),
            ("0, GPU-a, 0", "unexpected health query line '0, GPU-a, 0'"),
        ];
        for (text, error) in errors {
            assert_eq!(parse_health(text).unwrap_err().to_string(), error, "{text}");
        }
    }

    #[test]
    fn dcgm_diag_output_is_read_row_by_row() {
        assert_eq!(parse_dcgm_diag(DCGM_PASS, true), Dcgm::Passed);
        assert_eq!(
            parse_dcgm_diag(DCGM_FAIL, false),
            Dcgm::Failed("Page Retirement/Row Remap (GPU 1 had uncorrectable memory errors and row remapping failed. Drain the GPU, reset it or reboot the node, and run the diagnostic again.)".into())
        );
        // The rows say it failed even when the exit status does not.
        assert!(matches!(parse_dcgm_diag(DCGM_FAIL, true), Dcgm::Failed(_)));
        let per_gpu = "| Deployment | Pass |\n| Memory | Fail - GPU: 0 |\n| software | Pass |\n|  | GPU1: Fail |\n";
        assert_eq!(
            parse_dcgm_diag(per_gpu, false),
            Dcgm::Failed("Memory; software".into())
        );
        let refused = "Error: unable to establish a connection to the specified host: localhost\n";
        assert_eq!(
            parse_dcgm_diag(refused, false),
            Dcgm::Failed(
                "Error: unable to establish a connection to the specified host: localhost".into()
            )
        );
        assert_eq!(
            parse_dcgm_diag("", false),
            Dcgm::Failed("dcgmi diag failed and printed nothing".into())
        );
    }

    /// A directory with a fake `nvidia-smi` answering from the fixtures, exiting `status`, and
    /// optionally a fake `dcgmi`.
    fn fake_tools(
        inventory: &str,
        health: &str,
        status: u8,
        dcgmi: Option<(&str, u8)>,
    ) -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        file("inventory", inventory);
        file("health", health);
        let d = dir.path().display();
        let mut scripts = vec![(
            "nvidia-smi",
            format!("#!/bin/sh\ncase \"$1\" in\n--query-gpu=index,name,*) cat '{d}/inventory';;\n--query-gpu=index,uuid,*) cat '{d}/health';;\n*) exit 2;;\nesac\nexit {status}\n"),
        )];
        if let Some((output, status)) = dcgmi {
            file("dcgmi-output", output);
            scripts.push(("dcgmi", format!("#!/bin/sh\n[ \"$*\" = 'diag -r 1' ] || exit 2\ncat '{d}/dcgmi-output'\nexit {status}\n")));
        }
        for (name, script) in scripts {
            let path = dir.path().join(name);
            std::fs::write(&path, script).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    }

    #[test]
    fn run_gathers_the_machine_state() {
        let logs = tempfile::tempdir().unwrap();
        let clean = logs.path().join("clean");
        std::fs::write(&clean, "6,0,0,-;Linux version 6.8.0\n").unwrap();
        let xid = logs.path().join("xid");
        std::fs::write(&xid, KMSG).unwrap();
        let tools = fake_tools(INVENTORY, HEALTHY, 0, Some((DCGM_PASS, 0)));
        let path = tools.path().display().to_string();

        let report = run_in(&path, g5(), true, &clean);
        assert!(report.passed(), "{}", report.describe());
        assert!(
            report
                .describe()
                .contains("ok   DCGM diagnostic: dcgmi diag -r 1 passed"),
            "{}",
            report.describe()
        );
        let report = run_in(&path, g5(), true, &xid);
        assert_eq!(
            report.failures(),
            "Xid 79 on PCI 0000:00:1e (GPU has fallen off the bus) since boot"
        );
        let report = run_in(&path, expected_for("g5.48xlarge"), false, &clean);
        assert_eq!(
            report.failures(),
            "4 of 8 GPUs visible (expected 8 NVIDIA A10G for g5.48xlarge)"
        );
        let report = run_in(&path, g5(), false, &logs.path().join("missing"));
        assert!(report.passed(), "{}", report.failures());
        assert!(
            report
                .describe()
                .contains("not checked: cannot read the kernel log: "),
            "{}",
            report.describe()
        );

        let failing = fake_tools(INVENTORY, ECC, 0, Some((DCGM_FAIL, 1)));
        let report = run_in(&failing.path().display().to_string(), g5(), true, &clean);
        assert_eq!(
            report.failures(),
            "GPU 1: 2 uncorrectable ECC errors; GPU 1: row remapping pending (reset the GPU); DCGM diagnostic failed: Page Retirement/Row Remap (GPU 1 had uncorrectable memory errors and row remapping failed. Drain the GPU, reset it or reboot the node, and run the diagnostic again.)"
        );
    }

    #[test]
    fn run_names_a_missing_driver_and_missing_tools() {
        let logs = tempfile::tempdir().unwrap();
        let clean = logs.path().join("clean");
        std::fs::write(&clean, "").unwrap();
        let no_driver = fake_tools(NO_DRIVER, NO_DRIVER, 9, None);
        let report = run_in(&no_driver.path().display().to_string(), g5(), true, &clean);
        assert_eq!(
            report.failures(),
            "driver not loaded: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running. (nvidia-smi exit status 9: NVIDIA driver is not loaded)"
        );
        assert!(
            report
                .describe()
                .contains("ok   DCGM diagnostic: not installed, skipped"),
            "{}",
            report.describe()
        );

        // No tools at all: a CPU machine passes, a GPU instance type does not.
        let empty = tempfile::tempdir().unwrap();
        let nothing = empty.path().display().to_string();
        let report = run_in(&nothing, None, true, &clean);
        assert!(report.passed(), "{}", report.describe());
        let report = run_in(&nothing, g5(), false, &clean);
        assert_eq!(report.failures(), "nvidia-smi: not installed (not on PATH)");
    }
}
