//! moto server for tests of AWS code (shared by the agent's and the scaler's tests): started on a
//! free port, reached through the real AWS SDK with `endpoint_url` and dummy credentials.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REGION: &str = "us-east-1";

pub struct MotoServer {
    child: Child,
    pub url: String,
}

impl MotoServer {
    pub fn start() -> MotoServer {
        MotoServer::start_on("127.0.0.1")
    }

    /// Listens on `ip` (a container network's gateway, for clients in containers).
    pub fn start_on(ip: &str) -> MotoServer {
        let port = std::net::TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("moto_server")
            .args(["-H", ip, "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server is required by the AWS tests: pip install 'moto[server]' (.ci/run does)");
        let url = format!("http://{ip}:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect((ip, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        MotoServer { child, url }
    }

    /// Environment for a process that talks to this moto.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ENDPOINT_URL", self.url.clone()),
            ("AWS_MAX_ATTEMPTS", "1".to_string()),
        ]
    }

    /// SDK configuration for clients in the test itself (no retries: moto errors are final).
    pub fn sdk(&self, runtime: &tokio::runtime::Runtime) -> aws_config::SdkConfig {
        runtime.block_on(
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .endpoint_url(&self.url)
                .region(aws_config::Region::new(REGION))
                .credentials_provider(aws_sdk_ssm::config::Credentials::new(
                    "testing", "testing", None, None, "test",
                ))
                .retry_config(aws_config::retry::RetryConfig::disabled())
                .load(),
        )
    }

    /// Creates an Auto Scaling group (from a launch configuration) with `desired` instances.
    pub fn create_group(
        &self,
        runtime: &tokio::runtime::Runtime,
        name: &str,
        min: i32,
        max: i32,
        desired: i32,
    ) {
        let client = aws_sdk_autoscaling::Client::new(&self.sdk(runtime));
        runtime
            .block_on(
                client
                    .create_launch_configuration()
                    .launch_configuration_name(format!("{name}-lc"))
                    .image_id("ami-12c6146b")
                    .instance_type("t3.micro")
                    .send(),
            )
            .expect("create launch configuration");
        runtime
            .block_on(
                client
                    .create_auto_scaling_group()
                    .auto_scaling_group_name(name)
                    .launch_configuration_name(format!("{name}-lc"))
                    .min_size(min)
                    .max_size(max)
                    .desired_capacity(desired)
                    .availability_zones("us-east-1a")
                    .send(),
            )
            .expect("create Auto Scaling group");
    }

    /// (desired, instance ids, suspended processes) of a group.
    /// The value of tag `key` on `instance` ("" when it has none), terminated instances included.
    pub fn instance_tag(
        &self,
        runtime: &tokio::runtime::Runtime,
        instance: &str,
        key: &str,
    ) -> String {
        let ec2 = aws_sdk_ec2::Client::new(&self.sdk(runtime));
        let described = runtime
            .block_on(ec2.describe_instances().instance_ids(instance).send())
            .expect("describe the instance");
        described
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .flat_map(|i| i.tags())
            .find(|t| t.key() == Some(key))
            .and_then(|t| t.value())
            .unwrap_or_default()
            .to_string()
    }

    pub fn group(
        &self,
        runtime: &tokio::runtime::Runtime,
        name: &str,
    ) -> (i32, Vec<String>, Vec<String>) {
        let client = aws_sdk_autoscaling::Client::new(&self.sdk(runtime));
        let output = runtime
            .block_on(
                client
                    .describe_auto_scaling_groups()
                    .auto_scaling_group_names(name)
                    .send(),
            )
            .expect("describe");
        let group = output
            .auto_scaling_groups()
            .first()
            .expect("the group")
            .clone();
        (
            group.desired_capacity().unwrap_or(0),
            group
                .instances()
                .iter()
                .filter_map(|i| i.instance_id().map(str::to_string))
                .collect(),
            group
                .suspended_processes()
                .iter()
                .filter_map(|p| p.process_name().map(str::to_string))
                .collect(),
        )
    }

    pub fn put_secret(&self, runtime: &tokio::runtime::Runtime, name: &str, value: &str) {
        let client = aws_sdk_ssm::Client::new(&self.sdk(runtime));
        runtime
            .block_on(
                client
                    .put_parameter()
                    .name(name)
                    .value(value)
                    .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
                    .send(),
            )
            .expect("put parameter");
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
