//! The AWS calls an agent makes: its registration token from an SSM SecureString, and removing its
//! own instance after its last job — `TerminateInstanceInAutoScalingGroup` with decrement, then
//! without (at MinSize the first is refused), then `SetInstanceHealth(Unhealthy)` and a power-off,
//! so a one-job machine never lingers; for a debug job, first `EnterStandby` (out of service, out of
//! scale-in and the reaper, desired capacity decremented) while the instance is kept; before a
//! faulty machine leaves, the `flotilla:fault` tag that tells the scaler why. Credentials and region come from the standard chain (on EC2:
//! the instance profile and IMDS); `AWS_ENDPOINT_URL` points the SDK elsewhere (tests use moto).

use aws_config::BehaviorVersion;
use aws_sdk_autoscaling::error::DisplayErrorContext;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum AwsError {
    #[error("tokio: {0}")]
    Runtime(#[from] std::io::Error),
    #[error(
        "no AWS region: set --aws-region or AWS_REGION (on EC2 it comes from instance metadata)"
    )]
    NoRegion,
    #[error("SSM parameter '{name}' has no value")]
    EmptyParameter { name: String },
    #[error("SSM parameter '{name}' does not exist")]
    NoSuchParameter { name: String },
    #[error("reading SSM parameter '{name}': {message}")]
    Ssm { name: String, message: String },
    #[error("instance {instance} is in no Auto Scaling group")]
    NoGroup { instance: String },
    #[error("putting instance {instance} into Standby: {message}")]
    Standby { instance: String, message: String },
    #[error("tagging instance {instance}: {message}")]
    Tag { instance: String, message: String },
}

pub struct Aws {
    runtime: tokio::runtime::Runtime,
    config: aws_config::SdkConfig,
}

impl Aws {
    /// Loads the SDK configuration (credentials, region, endpoint) from the environment.
    pub fn load(region: &str) -> Result<Aws, AwsError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Self-removal must get through throttling and brief outages: 5 attempts, adaptive.
        let retry = aws_config::retry::RetryConfig::adaptive()
            .with_max_attempts(5)
            .with_initial_backoff(std::time::Duration::from_millis(200))
            .with_max_backoff(std::time::Duration::from_secs(5));
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).retry_config(retry);
        if !region.is_empty() {
            loader = loader.region(aws_config::Region::new(region.to_string()));
        }
        let config = runtime.block_on(loader.load());
        if config.region().is_none() {
            return Err(AwsError::NoRegion);
        }
        Ok(Aws { runtime, config })
    }

    /// The SDK configuration (credentials, region, endpoint) for other clients of the agent's.
    pub fn sdk_config(&self) -> &aws_config::SdkConfig {
        &self.config
    }

    /// The decrypted value of an SSM parameter.
    pub fn ssm_parameter(&self, name: &str) -> Result<String, AwsError> {
        let client = aws_sdk_ssm::Client::new(&self.config);
        let result = self.runtime.block_on(
            client
                .get_parameter()
                .name(name)
                .with_decryption(true)
                .send(),
        );
        match result {
            Ok(output) => output
                .parameter()
                .and_then(|p| p.value())
                .map(str::to_string)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| AwsError::EmptyParameter {
                    name: name.to_string(),
                }),
            Err(error) => {
                let not_found = error
                    .as_service_error()
                    .is_some_and(|e| e.is_parameter_not_found());
                let name = name.to_string();
                if not_found {
                    Err(AwsError::NoSuchParameter { name })
                } else {
                    Err(AwsError::Ssm {
                        name,
                        message: DisplayErrorContext(&error).to_string(),
                    })
                }
            }
        }
    }

    /// Whether `instance_id` is in Standby in its group (a kept debug instance); `false` when that
    /// cannot be told.
    pub fn in_standby(&self, instance_id: &str) -> bool {
        let client = aws_sdk_autoscaling::Client::new(&self.config);
        let described = self.runtime.block_on(
            client
                .describe_auto_scaling_instances()
                .instance_ids(instance_id)
                .send(),
        );
        described.ok().is_some_and(|described| {
            described
                .auto_scaling_instances()
                .iter()
                .any(|instance| instance.lifecycle_state() == Some("Standby"))
        })
    }

    /// Puts `instance_id` into Standby in its group, decrementing desired capacity: the group
    /// neither replaces it nor scales it in, and the reaper judges in-service instances only.
    /// Returns the group's name.
    pub fn enter_standby(&self, instance_id: &str) -> Result<String, AwsError> {
        let client = aws_sdk_autoscaling::Client::new(&self.config);
        let failed = |error: String| AwsError::Standby {
            instance: instance_id.to_string(),
            message: error,
        };
        let described = self
            .runtime
            .block_on(
                client
                    .describe_auto_scaling_instances()
                    .instance_ids(instance_id)
                    .send(),
            )
            .map_err(|error| failed(DisplayErrorContext(&error).to_string()))?;
        let group = described
            .auto_scaling_instances()
            .first()
            .and_then(|instance| instance.auto_scaling_group_name())
            .ok_or_else(|| AwsError::NoGroup {
                instance: instance_id.to_string(),
            })?
            .to_string();
        self.runtime
            .block_on(
                client
                    .enter_standby()
                    .auto_scaling_group_name(&group)
                    .instance_ids(instance_id)
                    .should_decrement_desired_capacity(true)
                    .send(),
            )
            .map_err(|error| failed(DisplayErrorContext(&error).to_string()))?;
        Ok(group)
    }

    /// Puts one tag on this instance (the fault record the scaler reads, `crate::health`):
    /// EC2's `CreateTags` through its Query API, signed here with SigV4 ([`aws_sigv4`], in the
    /// agent's tree through `aws-config`) rather than through `aws-sdk-ec2`, which would be most
    /// of the agent's build for this one call. The endpoint is the SDK's (`AWS_ENDPOINT_URL`,
    /// moto in tests), else EC2's regional one.
    pub fn tag_instance(&self, instance_id: &str, key: &str, value: &str) -> Result<(), AwsError> {
        let fail = |message: String| AwsError::Tag {
            instance: instance_id.to_string(),
            message,
        };
        let region = self.config.region().ok_or(AwsError::NoRegion)?.to_string();
        let endpoint = match self.config.endpoint_url() {
            Some(url) => format!("{}/", url.trim_end_matches('/')),
            None => format!("https://ec2.{region}.amazonaws.com/"),
        };
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("Action", "CreateTags")
            .append_pair("Version", "2016-11-15")
            .append_pair("ResourceId.1", instance_id)
            .append_pair("Tag.1.Key", key)
            .append_pair("Tag.1.Value", value)
            .finish();
        let headers = self.sign_ec2(&endpoint, &region, &body).map_err(fail)?;
        let client = reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_secs(20))
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let mut request = client.post(&endpoint).body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().map_err(|e| fail(e.to_string()))?;
        let status = response.status();
        match status.is_success() {
            true => Ok(()),
            false => Err(fail(format!(
                "{status}: {}",
                response.text().unwrap_or_default()
            ))),
        }
    }

    /// The headers that sign a form-encoded EC2 Query API `POST` of `body` to `endpoint`, with
    /// the SDK's credentials (on EC2: the instance profile's).
    fn sign_ec2(
        &self,
        endpoint: &str,
        region: &str,
        body: &str,
    ) -> Result<Vec<(String, String)>, String> {
        use aws_credential_types::provider::ProvideCredentials;
        use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
        let provider = self
            .config
            .credentials_provider()
            .ok_or("no AWS credentials")?;
        let credentials = self
            .runtime
            .block_on(provider.provide_credentials())
            .map_err(|e| DisplayErrorContext(e).to_string())?;
        let identity = credentials.into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name("ec2")
            .time(std::time::SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| e.to_string())?
            .into();
        let content_type = (
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        );
        let request = SignableRequest::new(
            "POST",
            endpoint,
            std::iter::once(content_type),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| e.to_string())?;
        let (instructions, _) = sign(request, &params)
            .map_err(|e| e.to_string())?
            .into_parts();
        let mut headers = vec![(content_type.0.to_string(), content_type.1.to_string())];
        headers.extend(
            instructions
                .headers()
                .map(|(n, v)| (n.to_string(), v.to_string())),
        );
        Ok(headers)
    }

    /// Removes `instance_id` from its group and ends it; returns what was done, step by step, and
    /// whether the instance is on its way out (terminated, marked unhealthy or powered off). An
    /// instance put into Standby was decremented already: it is terminated without a second.
    pub fn remove_instance(
        &self,
        instance_id: &str,
        poweroff_command: &str,
        in_standby: bool,
    ) -> (Vec<String>, bool) {
        let client = aws_sdk_autoscaling::Client::new(&self.config);
        let mut steps = Vec::new();
        let decrements: &[bool] = if in_standby { &[false] } else { &[true, false] };
        for &decrement in decrements {
            let result = self.runtime.block_on(
                client
                    .terminate_instance_in_auto_scaling_group()
                    .instance_id(instance_id)
                    .should_decrement_desired_capacity(decrement)
                    .send(),
            );
            match result {
                Ok(_) => {
                    steps.push(format!("terminated {instance_id} in its Auto Scaling group (decrement: {decrement})"));
                    return (steps, true);
                }
                Err(error) => steps.push(format!(
                    "terminate (decrement: {decrement}) failed: {}",
                    DisplayErrorContext(&error)
                )),
            }
        }
        let health = self.runtime.block_on(
            client
                .set_instance_health()
                .instance_id(instance_id)
                .health_status("Unhealthy")
                .should_respect_grace_period(false)
                .send(),
        );
        let mut leaving = health.is_ok();
        match health {
            Ok(_) => steps.push(format!("marked {instance_id} unhealthy")),
            Err(error) => steps.push(format!(
                "marking unhealthy failed: {}",
                DisplayErrorContext(&error)
            )),
        }
        if !poweroff_command.is_empty() {
            match std::process::Command::new("bash")
                .args(["-c", poweroff_command])
                .status()
            {
                Ok(status) => {
                    leaving |= status.success();
                    steps.push(format!("ran '{poweroff_command}': {status}"))
                }
                Err(error) => steps.push(format!("running '{poweroff_command}' failed: {error}")),
            }
        }
        (steps, leaving)
    }
}
