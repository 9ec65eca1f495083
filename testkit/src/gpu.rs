//! A fake NVIDIA GPU for tests that run the agent on machines without one: an executable
//! `nvidia-smi` (POSIX sh) written into a temporary directory to put first on `PATH`, answering
//! the agent's inventory query, its health query (`agent::gpu_health::HEALTH_QUERY`) and `-L`
//! for the machine state a test asks for — healthy GPUs of a model, fewer visible, ECC errors,
//! retired pages or a row remapping pending on one GPU, or no driver at all — and optionally a
//! `dcgmi` whose quick diagnostic passes or fails. [`FakeKernelLog`] is the kernel log to go with
//! it: a file the GPU health gate and the Xid watcher read in place of `/dev/kmsg`, to which a
//! test appends Xid records. One fake, so the listener, AMI and health-gate suites agree on what
//! a GPU machine looks like.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// What `nvidia-smi` prints, on stdout, when the driver is not loaded; it then exits 9.
pub const NO_DRIVER: &str = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.";

/// `dcgmi diag -r 1` on a healthy machine, and on one whose memory check fails (the agent's
/// fixtures, in DCGM's table format).
pub const DCGM_PASS: &str = include_str!("../../agent/tests/fixtures/gpu/dcgm-diag-pass.txt");
pub const DCGM_FAIL: &str = include_str!("../../agent/tests/fixtures/gpu/dcgm-diag-fail.txt");

/// One GPU's memory fault.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fault {
    gpu: u32,
    kind: FaultKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum FaultKind {
    Ecc(u64),
    RetiredPending,
    RemapPending,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FakeDcgm {
    Passing,
    Failing,
}

/// The machine state the fake tools report; build it, then [`FakeGpu::install`].
#[derive(Debug, Clone)]
pub struct FakeGpu {
    count: u32,
    model: String,
    visible: u32,
    memory_mib: u64,
    driver: String,
    faults: Vec<Fault>,
    driver_missing: bool,
    dcgm: Option<FakeDcgm>,
}

impl FakeGpu {
    /// `count` healthy GPUs named `model` as `nvidia-smi` names them (`NVIDIA A10G`), 23028 MiB
    /// each, driver 550.54.15.
    pub fn healthy(count: u32, model: &str) -> Self {
        Self {
            count,
            model: model.to_string(),
            visible: count,
            memory_mib: 23028,
            driver: "550.54.15".to_string(),
            faults: Vec::new(),
            driver_missing: false,
            dcgm: None,
        }
    }

    pub fn memory_mib(mut self, memory_mib: u64) -> Self {
        self.memory_mib = memory_mib;
        self
    }

    pub fn driver_version(mut self, version: &str) -> Self {
        self.driver = version.to_string();
        self
    }

    /// Only the first `visible` GPUs answer (one fell off the bus before boot).
    pub fn fewer(mut self, visible: u32) -> Self {
        self.visible = visible.min(self.count);
        self
    }

    /// `errors` uncorrectable (volatile) ECC errors on GPU `gpu`.
    pub fn ecc_errors(mut self, gpu: u32, errors: u64) -> Self {
        self.faults.push(Fault {
            gpu,
            kind: FaultKind::Ecc(errors),
        });
        self
    }

    /// Retired pages pending on GPU `gpu` (a reboot retires them).
    pub fn retired_pages_pending(mut self, gpu: u32) -> Self {
        self.faults.push(Fault {
            gpu,
            kind: FaultKind::RetiredPending,
        });
        self
    }

    /// A row remapping pending on GPU `gpu` (a GPU reset completes it).
    pub fn row_remapping_pending(mut self, gpu: u32) -> Self {
        self.faults.push(Fault {
            gpu,
            kind: FaultKind::RemapPending,
        });
        self
    }

    /// No driver: every `nvidia-smi` call prints [`NO_DRIVER`] and exits 9.
    pub fn driver_missing(mut self) -> Self {
        self.driver_missing = true;
        self
    }

    /// Also a `dcgmi` whose `diag -r 1` prints [`DCGM_PASS`] and exits 0.
    pub fn dcgm_passing(mut self) -> Self {
        self.dcgm = Some(FakeDcgm::Passing);
        self
    }

    /// Also a `dcgmi` whose `diag -r 1` prints [`DCGM_FAIL`] and exits 1 (the gate goes by the
    /// table's `Fail` rows, not by the exit status).
    pub fn dcgm_failing(mut self) -> Self {
        self.dcgm = Some(FakeDcgm::Failing);
        self
    }

    /// GPU `index`'s UUID: `GPU-aaaa`, `GPU-bbbb`, …
    pub fn uuid(index: u32) -> String {
        let letter = char::from(b'a' + (index % 26) as u8);
        let suffix = if index >= 26 {
            index.to_string()
        } else {
            String::new()
        };
        format!("GPU-{}{suffix}", letter.to_string().repeat(4))
    }

    /// The inventory query's answer (`index, name, uuid, memory.total, driver_version`).
    pub fn inventory(&self) -> String {
        (0..self.visible)
            .map(|i| {
                let uuid = Self::uuid(i);
                let (model, memory, driver) = (&self.model, self.memory_mib, &self.driver);
                format!("{i}, {model}, {uuid}, {memory}, {driver}\n")
            })
            .collect()
    }

    /// The health query's answer (`index, uuid, ECC errors, retired pages pending, row remapping
    /// pending, row remapping failure`).
    pub fn health(&self) -> String {
        (0..self.visible)
            .map(|i| {
                let has =
                    |kind: &FaultKind| self.faults.iter().any(|f| f.gpu == i && f.kind == *kind);
                let ecc = self
                    .faults
                    .iter()
                    .find_map(|f| match f.kind {
                        FaultKind::Ecc(errors) if f.gpu == i => Some(errors),
                        _ => None,
                    })
                    .unwrap_or(0);
                let yes_no = |yes: bool| if yes { "Yes" } else { "No" };
                let retired = yes_no(has(&FaultKind::RetiredPending));
                let remap = yes_no(has(&FaultKind::RemapPending));
                format!("{i}, {}, {ecc}, {retired}, {remap}, No\n", Self::uuid(i))
            })
            .collect()
    }

    /// `nvidia-smi -L`'s answer.
    pub fn list(&self) -> String {
        (0..self.visible)
            .map(|i| format!("GPU {i}: {} (UUID: {})\n", self.model, Self::uuid(i)))
            .collect()
    }

    fn nvidia_smi_script(&self) -> String {
        if self.driver_missing {
            return format!("#!/bin/sh\necho \"{NO_DRIVER}\"\nexit 9\n");
        }
        let answer =
            |pattern: &str, text: String| format!("{pattern})\ncat <<'EOF'\n{text}EOF\n;;\n");
        format!(
            "#!/bin/sh\n# A fake nvidia-smi (testkit::gpu::FakeGpu).\ncase \"$1\" in\n{}{}{}*) exit 2;;\nesac\n",
            answer("--query-gpu=index,name,*", self.inventory()),
            answer("--query-gpu=index,uuid,*", self.health()),
            answer("-L|--list-gpus", self.list()),
        )
    }

    fn dcgmi_script(dcgm: FakeDcgm) -> String {
        let (output, status) = match dcgm {
            FakeDcgm::Passing => (DCGM_PASS, 0),
            FakeDcgm::Failing => (DCGM_FAIL, 1),
        };
        format!("#!/bin/sh\n# A fake dcgmi (testkit::gpu::FakeGpu).\n[ \"$1\" = diag ] || exit 2\ncat <<'EOF'\n{output}EOF\nexit {status}\n")
    }

    /// Writes `nvidia-smi` (and `dcgmi`, when asked for) into a new temporary directory.
    pub fn install(&self) -> FakeGpuTools {
        let dir = tempfile::tempdir().unwrap();
        self.install_into(dir.path());
        FakeGpuTools { dir }
    }

    /// Writes the fake tools into `dir`, beside other fakes a suite keeps there.
    pub fn install_into(&self, dir: &Path) {
        write_executable(&dir.join("nvidia-smi"), &self.nvidia_smi_script());
        if let Some(dcgm) = self.dcgm {
            write_executable(&dir.join("dcgmi"), &Self::dcgmi_script(dcgm));
        }
    }
}

fn write_executable(path: &Path, script: &str) {
    std::fs::write(path, script).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The directory holding the fake tools; removed when dropped.
pub struct FakeGpuTools {
    dir: tempfile::TempDir,
}

impl FakeGpuTools {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A `PATH` value that finds the fakes first, then the test's own `PATH`.
    pub fn path_env(&self) -> String {
        let inherited = std::env::var("PATH").unwrap_or_default();
        format!("{}:{inherited}", self.path().display())
    }
}

/// A kernel log file standing in for `/dev/kmsg`, holding records in kmsg's format
/// (`<priority>,<sequence>,<microseconds>,-;<message>`).
pub struct FakeKernelLog {
    _dir: tempfile::TempDir,
    path: PathBuf,
    sequence: AtomicU64,
}

impl Default for FakeKernelLog {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeKernelLog {
    /// An empty log.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kmsg");
        std::fs::write(&path, "").unwrap();
        Self {
            _dir: dir,
            path,
            sequence: AtomicU64::new(1),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record at `priority` (4: warning).
    pub fn record(&self, priority: u8, message: &str) {
        use std::io::Write;
        let sequence = self.sequence.fetch_add(1, Ordering::SeqCst);
        let line = format!(
            "{priority},{sequence},{},-;{message}\n",
            sequence * 1_000_000
        );
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .unwrap();
        file.write_all(line.as_bytes()).unwrap();
    }

    /// Appends an Xid `code` for the GPU at PCI 0000:00:1e, as the NVIDIA driver logs it.
    pub fn xid(&self, code: u32) {
        self.xid_on(code, "0000:00:1e");
    }

    /// Appends an Xid `code` for the GPU at PCI `pci`.
    pub fn xid_on(&self, code: u32, pci: &str) {
        let text = match code {
            79 => "GPU has fallen off the bus.",
            48 => "An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer.",
            13 => "Graphics Exception: ESR 0x504648=0x102000e",
            _ => "fake Xid from testkit",
        };
        self.record(
            4,
            &format!("NVRM: Xid (PCI:{pci}): {code}, pid=4242, name=python3, {text}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn run(tools: &FakeGpuTools, program: &str, args: &[&str]) -> (i32, String) {
        let output = Command::new(tools.path().join(program))
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        (output.status.code().unwrap_or(-1), stdout)
    }

    const INVENTORY: &str = "--query-gpu=index,name,uuid,memory.total,driver_version";
    const HEALTH: &str = "--query-gpu=index,uuid,ecc.errors.uncorrected.volatile.total,retired_pages.pending,remapped_rows.pending,remapped_rows.failure";
    const FORMAT: &str = "--format=csv,noheader,nounits";

    #[test]
    fn a_healthy_machine_answers_every_query() {
        let tools = FakeGpu::healthy(2, "NVIDIA A10G").install();
        assert_eq!(
            run(&tools, "nvidia-smi", &[INVENTORY, FORMAT]),
            (0, "0, NVIDIA A10G, GPU-aaaa, 23028, 550.54.15\n1, NVIDIA A10G, GPU-bbbb, 23028, 550.54.15\n".to_string())
        );
        assert_eq!(
            run(&tools, "nvidia-smi", &[HEALTH, FORMAT]),
            (
                0,
                "0, GPU-aaaa, 0, No, No, No\n1, GPU-bbbb, 0, No, No, No\n".to_string()
            )
        );
        assert_eq!(
            run(&tools, "nvidia-smi", &["-L"]),
            (
                0,
                "GPU 0: NVIDIA A10G (UUID: GPU-aaaa)\nGPU 1: NVIDIA A10G (UUID: GPU-bbbb)\n"
                    .to_string()
            )
        );
        assert_eq!(run(&tools, "nvidia-smi", &["--bogus"]).0, 2);
        assert!(!tools.path().join("dcgmi").exists());
        assert!(tools
            .path_env()
            .starts_with(&format!("{}:", tools.path().display())));
    }

    #[test]
    fn faults_show_on_their_gpu_only() {
        let gpu = FakeGpu::healthy(4, "NVIDIA A10G")
            .memory_mib(81559)
            .driver_version("560.35.03")
            .fewer(3)
            .ecc_errors(1, 2)
            .retired_pages_pending(2)
            .row_remapping_pending(0);
        let tools = gpu.install();
        let (_, inventory) = run(&tools, "nvidia-smi", &[INVENTORY, FORMAT]);
        assert_eq!(inventory.lines().count(), 3);
        assert!(
            inventory.ends_with("2, NVIDIA A10G, GPU-cccc, 81559, 560.35.03\n"),
            "{inventory}"
        );
        assert_eq!(
            run(&tools, "nvidia-smi", &[HEALTH, FORMAT]).1,
            "0, GPU-aaaa, 0, No, Yes, No\n1, GPU-bbbb, 2, No, No, No\n2, GPU-cccc, 0, Yes, No, No\n"
        );
        assert_eq!(FakeGpu::uuid(27), "GPU-bbbb27");
    }

    #[test]
    fn no_driver_and_dcgm() {
        let tools = FakeGpu::healthy(1, "NVIDIA L4")
            .driver_missing()
            .dcgm_failing()
            .install();
        for args in [&[INVENTORY, FORMAT][..], &[HEALTH, FORMAT], &["-L"]] {
            assert_eq!(
                run(&tools, "nvidia-smi", args),
                (9, format!("{NO_DRIVER}\n"))
            );
        }
        let (status, output) = run(&tools, "dcgmi", &["diag", "-r", "1"]);
        assert_eq!((status, output.as_str()), (1, DCGM_FAIL));
        let passing = FakeGpu::healthy(1, "NVIDIA L4").dcgm_passing().install();
        assert_eq!(
            run(&passing, "dcgmi", &["diag", "-r", "1"]),
            (0, DCGM_PASS.to_string())
        );
        assert_eq!(run(&passing, "dcgmi", &["discovery", "-l"]).0, 2);
    }

    #[test]
    fn the_kernel_log_takes_kmsg_records() {
        let log = FakeKernelLog::new();
        assert_eq!(std::fs::read_to_string(log.path()).unwrap(), "");
        log.record(6, "Linux version 6.8.0");
        log.xid(79);
        log.xid_on(13, "0000:00:1b");
        assert_eq!(
            std::fs::read_to_string(log.path()).unwrap(),
            "6,1,1000000,-;Linux version 6.8.0\n\
             4,2,2000000,-;NVRM: Xid (PCI:0000:00:1e): 79, pid=4242, name=python3, GPU has fallen off the bus.\n\
             4,3,3000000,-;NVRM: Xid (PCI:0000:00:1b): 13, pid=4242, name=python3, Graphics Exception: ESR 0x504648=0x102000e\n"
        );
    }
}
