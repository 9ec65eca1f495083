//! The scaler's one logging set-up: `tracing` to stderr, text (coloured on a terminal) or JSON
//! lines, filtered by `FLOTILLA_LOG` (default `info`). Every subcommand that logs calls [`init`].

/// Installs the subscriber; a second call (tests) keeps the first.
pub(crate) fn init(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
        .unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
