//! The agent's YAML config file (`--config-file`, or SSM on an instance) is text from outside:
//! `agent::config::load` must answer every file with a config or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let yaml = text.to_string();
    let reader = move |_: &str| Ok(yaml.clone());
    let args: Vec<String> = ["--config-file", "agent.yml"]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
    let env = BTreeMap::from([("HOME".to_string(), "/home/fuzz".to_string())]);
    let _ = agent::config::load(&args, &env, &reader);
});
