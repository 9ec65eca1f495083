//! The scaler's AWS edge: SDK set-up shared by every command that talks to AWS (credentials and
//! region from the standard chain, an optional endpoint for an emulator, adaptive retries with short
//! back-offs), SSM parameter reads, the Auto Scaling fleet ([`fleet`], with its memory of GPU
//! faults in [`faults`]) and the CloudFormation
//! stacks client used by `deploy`/`status`/`destroy` ([`stacks`]), and the deploy preflight's
//! read-only questions ([`preflight`]). Only this module links the AWS
//! SDK; the decisions it serves live in the `scaling` crate.

pub(crate) mod faults;
pub(crate) mod fleet;
pub(crate) mod preflight;
pub(crate) mod stacks;

use anyhow::{bail, Context, Result};
use aws_config::BehaviorVersion;
use aws_sdk_ssm::error::DisplayErrorContext;
use std::time::Duration;

/// A single-threaded runtime for the SDK's futures (the scaler's loops are threads).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the AWS SDK's runtime")
}

/// Loads SDK configuration: credentials and region from the standard chain, `endpoint_url`
/// when given (moto in tests), adaptive retries with short back-offs.
pub(crate) fn sdk_config(
    runtime: &tokio::runtime::Runtime,
    region: &str,
    endpoint_url: &str,
) -> Result<aws_config::SdkConfig> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).retry_config(
        // The control loop is the outer retry: short SDK back-offs keep a throttled round
        // from holding up the next one for long.
        aws_config::retry::RetryConfig::adaptive()
            .with_max_attempts(3)
            .with_initial_backoff(Duration::from_millis(200))
            .with_max_backoff(Duration::from_secs(5)),
    );
    if !region.is_empty() {
        loader = loader.region(aws_config::Region::new(region.to_string()));
    }
    if !endpoint_url.is_empty() {
        loader = loader.endpoint_url(endpoint_url);
    }
    let config = runtime.block_on(loader.load());
    if config.region().is_none() {
        bail!("no AWS region: set `region` in the fleet config or AWS_REGION");
    }
    Ok(config)
}

/// Reads an SSM parameter (decrypted).
pub(crate) fn ssm_parameter(
    runtime: &tokio::runtime::Runtime,
    config: &aws_config::SdkConfig,
    name: &str,
) -> Result<String> {
    let client = aws_sdk_ssm::Client::new(config);
    let read = client
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send();
    match runtime.block_on(read) {
        Ok(output) => output
            .parameter()
            .and_then(|p| p.value())
            .map(str::to_string)
            .with_context(|| format!("SSM parameter '{name}' has no value")),
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|e| e.is_parameter_not_found()) =>
        {
            bail!("SSM parameter '{name}' does not exist")
        }
        Err(error) => bail!(
            "reading SSM parameter '{name}': {}",
            DisplayErrorContext(&error)
        ),
    }
}
