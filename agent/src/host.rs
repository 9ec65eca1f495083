//! Facts about this machine that registration reports (docs/protocol.md §2.3): OS name,
//! architecture, hostname. The OS name is read from `/etc/os-release` alone (upstream also requires
//! `/etc/lsb-release` and so reports `""` on Debian, Fedora and most images).

/// `PRETTY_NAME`, else `NAME`, from os-release text; quotes removed.
pub(crate) fn os_name_from(os_release: &str) -> String {
    let value_of = |key: &str| {
        os_release.lines().find_map(|line| {
            line.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::trim)
        })
    };
    let raw = value_of("PRETTY_NAME")
        .or_else(|| value_of("NAME"))
        .unwrap_or("");
    let unquoted = raw
        .strip_prefix('"')
        .and_then(|rest| rest.split('"').next())
        .or_else(|| {
            raw.strip_prefix('\'')
                .and_then(|rest| rest.split('\'').next())
        })
        .unwrap_or(raw);
    unquoted.to_string()
}

pub(crate) fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .map(|text| os_name_from(&text))
        .unwrap_or_default()
}

/// Go's GOARCH names, with upstream's renames (`amd64` → `x86_64`, `386` → `x86`).
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86_64",
        "x86" => "x86",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

pub fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_parsing() {
        assert_eq!(
            os_name_from(
                "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"
            ),
            "Debian GNU/Linux 12 (bookworm)"
        );
        assert_eq!(os_name_from("NAME=Fedora\n"), "Fedora");
        assert_eq!(os_name_from("ID=x\n"), "");
        assert_eq!(os_name_from("PRETTY_NAME=\n"), "");
    }
}
