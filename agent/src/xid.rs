//! GPU faults in the kernel log. The NVIDIA driver reports each GPU error as an "Xid" line in the
//! kernel log (`NVRM: Xid (PCI:0000:00:1e): 79, pid=…, name=…, GPU has fallen off the bus.`); some
//! codes mean the GPU must be reset or the machine rebooted before it can be trusted again, most
//! mean only that one application misbehaved. This module parses those lines (from `/dev/kmsg`
//! records or `dmesg`/journal lines), classifies each code with NVIDIA's Xid catalogue, reads what
//! the log already holds (the GPU health gate's "no fatal Xid since boot") and follows the log for
//! new records while the agent runs, so a machine whose GPU died mid-job stops taking jobs.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

/// One Xid report from the kernel log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XidEvent {
    pub xid: u32,
    /// The GPU's PCI address as the driver prints it (`0000:00:1e`), without the `PCI:` prefix.
    pub pci: String,
    /// The driver's message after the code, without its `pid=` and `name=` fields.
    pub text: String,
}

/// What an Xid means for this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XidAction {
    /// The GPU needs a reset or the machine a reboot: it must take no more jobs.
    Fatal,
    /// Worth a log line; usually the application's fault, or a state the health query reports.
    Note,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XidClass {
    pub action: XidAction,
    pub meaning: &'static str,
}

const fn fatal(meaning: &'static str) -> XidClass {
    XidClass {
        action: XidAction::Fatal,
        meaning,
    }
}

const fn note(meaning: &'static str) -> XidClass {
    XidClass {
        action: XidAction::Note,
        meaning,
    }
}

/// The fault table, from NVIDIA's Xid catalogue
/// (<https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html>, its "Resolution
/// Bucket (Immediate Action)" column) and the mnemonics of the driver's `nverror.h`. Fatal: the
/// catalogue's immediate action is RESET_GPU or RESTART_BM (reboot), or its Xid 48 / NVLink
/// workflows, which end in a reset; and Xid 94, whose catalogue entry says to reset the GPU "when
/// convenient" — for a one-job machine that is before the next job. Note: application faults
/// (13, 31, 43, 45), and the memory-repair *events* 63 (a page retired or a row marked for
/// remapping; catalogue action IGNORE) and 92 (a high single-bit ECC rate, IGNORE): what they
/// leave pending is what the health gate's `retired_pages.pending` and `remapped_rows.pending`
/// read at the next boot.
pub fn classify(xid: u32) -> XidClass {
    match xid {
        13 => note("graphics engine exception, usually the application's fault"),
        31 => note("GPU memory page fault, usually the application's fault"),
        32 => note("invalid or corrupted push buffer stream"),
        43 => note("GPU stopped processing: the application's software fault"),
        45 => note("preemptive cleanup after an earlier error"),
        46 => fatal("GPU stopped processing"),
        48 => fatal("double-bit ECC error"),
        62 => fatal("internal micro-controller halt"),
        63 => note("ECC page retirement or row remapping event"),
        64 => fatal("ECC page retirement or row remapping failure"),
        74 => fatal("NVLink error"),
        79 => fatal("GPU has fallen off the bus"),
        92 => note("high single-bit ECC error rate"),
        94 => fatal("contained ECC error"),
        95 => fatal("uncontained ECC error"),
        109 => fatal("context switch timeout"),
        110 => fatal("security fault"),
        119 => fatal("GSP RPC timeout"),
        120 => fatal("GSP error"),
        136 => fatal("NVLink link training failed"),
        140 => fatal("unrecovered ECC error"),
        143 => fatal("GPU initialization error"),
        154 => note("GPU recovery action changed (accompanies another Xid)"),
        156 => fatal("resource retirement event"),
        158 => fatal("GPU fatal timeout"),
        _ => note("see NVIDIA's Xid catalogue"),
    }
}

/// Parses one kernel log line: a `/dev/kmsg` record (`4,1234,56789012,-;NVRM: Xid (PCI:…): 79,
/// …`), a `dmesg` line (`[  123.456] NVRM: Xid …`), a journal line, or the older form without
/// `PCI:` or `pid=`. `None` for every other line.
pub fn parse_line(line: &str) -> Option<XidEvent> {
    const MARK: &str = "NVRM: Xid (";
    let rest = &line[line.find(MARK)? + MARK.len()..];
    let (pci, after) = rest.split_once("):")?;
    let pci = pci.trim();
    let pci = pci.strip_prefix("PCI:").unwrap_or(pci).to_string();
    let after = after.trim_start();
    let digits = after
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(after.len());
    let xid = after[..digits].parse().ok()?;
    let mut text = after[digits..].trim_start_matches(',').trim();
    for field in ["pid=", "name="] {
        if let Some(value) = text.strip_prefix(field) {
            text = value.split_once(", ").map_or("", |(_, more)| more).trim();
        }
    }
    Some(XidEvent {
        xid,
        pci,
        text: text.to_string(),
    })
}

/// One line for logs and the gate's report: `Xid 79 on PCI 0000:00:1e (GPU has fallen off the bus)`.
pub fn describe(event: &XidEvent) -> String {
    format!(
        "Xid {} on PCI {} ({})",
        event.xid,
        event.pci,
        classify(event.xid).meaning
    )
}

/// The Xids the kernel log holds now: for `/dev/kmsg` (a character device) every record still in
/// the ring buffer, read without blocking; for a regular file its whole content.
pub fn since_boot(path: &Path) -> io::Result<Vec<XidEvent>> {
    let text = if std::fs::metadata(path)?.file_type().is_char_device() {
        read_kmsg_records(path)?
    } else {
        String::from_utf8_lossy(&std::fs::read(path)?).into_owned()
    };
    Ok(text.lines().filter_map(parse_line).collect())
}

/// Reads `/dev/kmsg` from its oldest record until no record is left (EAGAIN). Each read returns
/// one record; EPIPE means records were overwritten while reading, and the next read goes on.
fn read_kmsg_records(path: &Path) -> io::Result<String> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let mut text = String::new();
    let mut record = vec![0u8; 16 * 1024];
    loop {
        match file.read(&mut record) {
            Ok(0) => return Ok(text),
            Ok(n) => {
                text.push_str(&String::from_utf8_lossy(&record[..n]));
                if !text.ends_with('\n') {
                    text.push('\n');
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(text),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Follows the kernel log from its end (only records written after this call count) on a thread
/// of its own, calling `on_fatal` for every fatal Xid and logging the others. `/dev/kmsg` is read
/// record by record, blocking (seeking to its end is how kmsg skips the records it holds); a
/// regular file (what tests use) is followed like `tail -f`, from its length now. The thread ends
/// only when the log can no longer be read.
pub fn watch(
    path: PathBuf,
    on_fatal: impl Fn(XidEvent) + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    let mut file = File::open(&path)?;
    let metadata = file.metadata()?;
    let builder = std::thread::Builder::new().name("xid-watch".into());
    if metadata.file_type().is_char_device() {
        file.seek(SeekFrom::End(0))?;
        builder.spawn(move || follow_kmsg(file, &path, &on_fatal))
    } else {
        let start = metadata.len();
        builder.spawn(move || follow_file(file, start, &path, &on_fatal))
    }
}

fn dispatch(line: &str, on_fatal: &dyn Fn(XidEvent)) {
    let Some(event) = parse_line(line) else {
        return;
    };
    match classify(event.xid).action {
        XidAction::Fatal => on_fatal(event),
        XidAction::Note => tracing::warn!("{}: {}", describe(&event), event.text),
    }
}

fn follow_kmsg(mut file: File, path: &Path, on_fatal: &dyn Fn(XidEvent)) {
    let mut record = vec![0u8; 16 * 1024];
    loop {
        match file.read(&mut record) {
            Ok(0) => return,
            Ok(n) => {
                for line in String::from_utf8_lossy(&record[..n]).lines() {
                    dispatch(line, on_fatal);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                tracing::warn!("{}: {e}; no longer watching for Xids", path.display());
                return;
            }
        }
    }
}

const POLL: Duration = Duration::from_millis(100);

fn follow_file(mut file: File, mut offset: u64, path: &Path, on_fatal: &dyn Fn(XidEvent)) {
    let mut pending: Vec<u8> = Vec::new();
    loop {
        std::thread::sleep(POLL);
        let grown = file.metadata().and_then(|meta| {
            if meta.len() < offset {
                // Truncated: start again from its beginning.
                offset = 0;
                pending.clear();
            }
            file.seek(SeekFrom::Start(offset))?;
            (&mut file)
                .take(meta.len() - offset)
                .read_to_end(&mut pending)
        });
        match grown {
            Ok(read) => offset += read as u64,
            Err(e) => {
                tracing::warn!("{}: {e}; no longer watching for Xids", path.display());
                return;
            }
        }
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            dispatch(&String::from_utf8_lossy(&line), on_fatal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::mpsc;

    #[test]
    fn kmsg_dmesg_and_journal_lines_parse() {
        let kmsg = "4,1234,56789012,-;NVRM: Xid (PCI:0000:00:1e): 79, pid=1234, name=python, GPU has fallen off the bus.";
        assert_eq!(
            parse_line(kmsg),
            Some(XidEvent {
                xid: 79,
                pci: "0000:00:1e".into(),
                text: "GPU has fallen off the bus.".into()
            })
        );
        let dmesg = "[  123.456] NVRM: Xid (PCI:0000:00:1b): 48, pid='<unknown>', name=<unknown>, An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 6, subpartition 0.";
        let event = parse_line(dmesg).unwrap();
        assert_eq!((event.xid, event.pci.as_str()), (48, "0000:00:1b"));
        assert!(
            event.text.starts_with("An uncorrectable double bit"),
            "{event:?}"
        );
        // The older form: no PCI: prefix, no pid, in a journal line.
        let old = "Nov 18 17:26:39 host kernel: NVRM: Xid (0000:01:00): 13, 0005 00000000 0000502d";
        assert_eq!(
            parse_line(old),
            Some(XidEvent {
                xid: 13,
                pci: "0000:01:00".into(),
                text: "0005 00000000 0000502d".into()
            })
        );
        let pid_only = "NVRM: Xid (PCI:0000:00:1e): 31, pid=99, Ch 0000000b, intr 10000000";
        assert_eq!(
            parse_line(pid_only).unwrap().text,
            "Ch 0000000b, intr 10000000"
        );
        for other in [
            "",
            "6,1,2,-;NVRM: loading NVIDIA UNIX x86_64 Kernel Module  550.54.15",
            "NVRM: Xid (PCI:0000:00:1e): notanumber, x",
            "NVRM: Xid (PCI:0000:00:1e",
        ] {
            assert_eq!(parse_line(other), None, "{other}");
        }
    }

    #[test]
    fn the_fault_table() {
        for code in [
            46, 48, 62, 64, 74, 79, 94, 95, 109, 110, 119, 120, 136, 140, 143, 156, 158,
        ] {
            assert_eq!(classify(code).action, XidAction::Fatal, "Xid {code}");
        }
        for code in [13, 31, 32, 43, 45, 63, 92, 154, 0, 999] {
            assert_eq!(classify(code).action, XidAction::Note, "Xid {code}");
        }
        let event = parse_line("NVRM: Xid (PCI:0000:00:1e): 79, pid=1, name=x, gone").unwrap();
        assert_eq!(
            describe(&event),
            "Xid 79 on PCI 0000:00:1e (GPU has fallen off the bus)"
        );
    }

    #[test]
    fn the_log_since_boot_holds_every_xid_of_a_file() {
        let log = include_str!("../tests/fixtures/gpu/kmsg-xid79.txt");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kmsg");
        std::fs::write(&path, log).unwrap();
        let xids: Vec<u32> = since_boot(&path).unwrap().iter().map(|e| e.xid).collect();
        assert_eq!(xids, [13, 13, 79]);
        std::fs::write(&path, "6,1,2,-;Linux version 6.8.0\n").unwrap();
        assert!(since_boot(&path).unwrap().is_empty());
        assert!(since_boot(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn the_kernel_ring_buffer_is_read_without_blocking() {
        // Where this test may read /dev/kmsg (root, not in a locked-down container), reading it
        // whole must end at its last record rather than wait for the next one.
        let kmsg = Path::new("/dev/kmsg");
        if File::open(kmsg).is_err() {
            return;
        }
        let (sender, read) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = sender.send(since_boot(kmsg).map(|events| events.len()));
        });
        let result = read.recv_timeout(Duration::from_secs(10));
        assert!(matches!(result, Ok(Ok(_))), "{result:?}");
    }

    fn append(path: &Path, text: &str) {
        let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn the_watcher_reports_only_new_fatal_xids_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kmsg");
        // Present before the watch: not reported, fatal as it is.
        std::fs::write(
            &path,
            "4,1,1,-;NVRM: Xid (PCI:0000:00:1a): 79, pid=1, name=a, old\n",
        )
        .unwrap();
        let (sender, events) = mpsc::channel();
        watch(path.clone(), move |event| {
            let _ = sender.send(event);
        })
        .unwrap();
        append(
            &path,
            "4,2,2,-;NVRM: Xid (PCI:0000:00:1e): 13, pid=2, name=b, app fault\n",
        );
        append(
            &path,
            "4,3,3,-;NVRM: Xid (PCI:0000:00:1e): 48, pid=3, name=c, DBE\n",
        );
        // A line written in two pieces counts once it is whole.
        append(&path, "4,4,4,-;NVRM: Xid (PCI:0000:00:1f): 7");
        std::thread::sleep(POLL * 3);
        append(&path, "9, pid=4, name=d, GPU has fallen off the bus.\n");
        let wait = Duration::from_secs(5);
        let first = events.recv_timeout(wait).unwrap();
        assert_eq!((first.xid, first.pci.as_str()), (48, "0000:00:1e"));
        let second = events.recv_timeout(wait).unwrap();
        assert_eq!((second.xid, second.pci.as_str()), (79, "0000:00:1f"));
        assert_eq!(second.text, "GPU has fallen off the bus.");
        // Neither the old 79 nor the Note (13) arrives.
        assert!(events.recv_timeout(POLL * 5).is_err());
    }
}
