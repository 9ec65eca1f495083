//! The `aws` fleet: one or more Auto Scaling groups as capacity pools in priority order.
//! `describe` reads every group in one `DescribeAutoScalingGroups` call; a group whose newest
//! scaling activities failed for lack of capacity (InsufficientInstanceCapacity,
//! UnfulfillableCapacity, spot limits) is `short` for a while, so the policy spills its share to the
//! next pool; `raise_desired` is `SetDesiredCapacity(HonorCooldown=false)`, clamped to MaxSize;
//! `AZRebalance` is suspended at start (it would terminate busy instances). For the reaper it lists
//! in-service instances with their launch times (`DescribeInstances`) and keeps its marks as an EC2
//! tag. The SDK retries in adaptive mode, so throttling slows the loop instead of breaking it.

use crate::fleet::Fleet;
use crate::policy::PoolState;
use crate::reaper::{InstanceFacts, Mark, MARK_TAG};
use aws_config::BehaviorVersion;
use aws_sdk_autoscaling::error::DisplayErrorContext;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a group that failed to launch counts as short.
const SHORT_FOR: Duration = Duration::from_secs(300);
/// Failure messages that mean "no capacity here right now".
const CAPACITY_ERRORS: &[&str] = &[
    "InsufficientInstanceCapacity",
    "UnfulfillableCapacity",
    "MaxSpotInstanceCountExceeded",
    "SpotMaxPriceTooLow",
    "InsufficientCapacity",
];

pub struct AwsFleet {
    runtime: tokio::runtime::Runtime,
    client: aws_sdk_autoscaling::Client,
    ec2: aws_sdk_ec2::Client,
    groups: Vec<String>,
    short_since: HashMap<String, Instant>,
}

/// Loads SDK configuration: credentials and region from the standard chain, `endpoint_url`
/// when given (moto in tests), adaptive retries with short back-offs.
pub fn sdk_config(
    runtime: &tokio::runtime::Runtime,
    region: &str,
    endpoint_url: &str,
) -> Result<aws_config::SdkConfig, String> {
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
        return Err("no AWS region: set `region` in the fleet config or AWS_REGION".into());
    }
    Ok(config)
}

/// Reads an SSM parameter (decrypted).
pub fn ssm_parameter(
    runtime: &tokio::runtime::Runtime,
    config: &aws_config::SdkConfig,
    name: &str,
) -> Result<String, String> {
    let client = aws_sdk_ssm::Client::new(config);
    match runtime.block_on(
        client
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send(),
    ) {
        Ok(output) => output
            .parameter()
            .and_then(|p| p.value())
            .map(str::to_string)
            .ok_or_else(|| format!("SSM parameter '{name}' has no value")),
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|e| e.is_parameter_not_found()) =>
        {
            Err(format!("SSM parameter '{name}' does not exist"))
        }
        Err(error) => Err(format!(
            "reading SSM parameter '{name}': {}",
            DisplayErrorContext(&error)
        )),
    }
}

impl AwsFleet {
    /// Connects, checks that every group exists, and suspends AZRebalance on them.
    pub fn new(region: &str, endpoint_url: &str, groups: Vec<String>) -> Result<AwsFleet, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let config = sdk_config(&runtime, region, endpoint_url)?;
        let client = aws_sdk_autoscaling::Client::new(&config);
        let ec2 = aws_sdk_ec2::Client::new(&config);
        let fleet = AwsFleet {
            runtime,
            client,
            ec2,
            groups,
            short_since: HashMap::new(),
        };
        let found = fleet.describe_groups()?;
        for name in &fleet.groups {
            if !found
                .iter()
                .any(|g| g.auto_scaling_group_name() == Some(name.as_str()))
            {
                return Err(format!("Auto Scaling group '{name}' does not exist"));
            }
        }
        for name in &fleet.groups {
            let suspended = fleet.runtime.block_on(
                fleet
                    .client
                    .suspend_processes()
                    .auto_scaling_group_name(name)
                    .scaling_processes("AZRebalance")
                    .send(),
            );
            if let Err(error) = suspended {
                return Err(format!(
                    "suspending AZRebalance on '{name}': {}",
                    DisplayErrorContext(&error)
                ));
            }
        }
        Ok(fleet)
    }

    fn describe_groups(&self) -> Result<Vec<aws_sdk_autoscaling::types::AutoScalingGroup>, String> {
        let output = self
            .runtime
            .block_on(
                self.client
                    .describe_auto_scaling_groups()
                    .set_auto_scaling_group_names(Some(self.groups.clone()))
                    .send(),
            )
            .map_err(|e| {
                format!(
                    "describing Auto Scaling groups: {}",
                    DisplayErrorContext(&e)
                )
            })?;
        Ok(output.auto_scaling_groups().to_vec())
    }

    /// Whether the group's newest scaling activities failed for lack of capacity (newest page only).
    fn launch_failed_recently(&self, group: &str) -> bool {
        let Ok(output) = self.runtime.block_on(
            self.client
                .describe_scaling_activities()
                .auto_scaling_group_name(group)
                .max_records(10)
                .send(),
        ) else {
            return false;
        };
        let newest = output.activities().first();
        newest.is_some_and(|activity| {
            let failed = activity
                .status_code()
                .is_some_and(|s| s.as_str() == "Failed");
            let message = activity.status_message().unwrap_or_default();
            failed && CAPACITY_ERRORS.iter().any(|e| message.contains(e))
        })
    }
}

impl Fleet for AwsFleet {
    fn describe(&mut self) -> Result<Vec<PoolState>, String> {
        let groups = self.describe_groups()?;
        let mut pools = Vec::new();
        for name in self.groups.clone() {
            let group = groups
                .iter()
                .find(|g| g.auto_scaling_group_name() == Some(name.as_str()))
                .ok_or_else(|| format!("Auto Scaling group '{name}' disappeared"))?;
            let (mut in_service, mut pending) = (0, 0);
            for instance in group.instances() {
                match instance
                    .lifecycle_state()
                    .map(|s| s.as_str())
                    .unwrap_or_default()
                {
                    "InService" => in_service += 1,
                    state if state.starts_with("Pending") => pending += 1,
                    _ => {}
                }
            }
            if self.launch_failed_recently(&name) {
                self.short_since.insert(name.clone(), Instant::now());
            }
            let short = self
                .short_since
                .get(&name)
                .is_some_and(|at| at.elapsed() < SHORT_FOR);
            pools.push(PoolState {
                name: name.clone(),
                desired: group.desired_capacity().unwrap_or(0).max(0) as u32,
                min: group.min_size().unwrap_or(0).max(0) as u32,
                max: group.max_size().unwrap_or(0).max(0) as u32,
                in_service,
                pending,
                short,
            });
        }
        Ok(pools)
    }

    fn raise_desired(&mut self, pool: &str, desired: u32) -> Result<(), String> {
        let pools = self.describe()?;
        let state = pools
            .iter()
            .find(|p| p.name == pool)
            .ok_or_else(|| format!("no pool '{pool}'"))?;
        // Raise only, and never past MaxSize (moto accepts more; AWS refuses it).
        let target = desired.min(state.max);
        if target <= state.desired {
            return Ok(());
        }
        self.runtime
            .block_on(
                self.client
                    .set_desired_capacity()
                    .auto_scaling_group_name(pool)
                    .desired_capacity(target as i32)
                    .honor_cooldown(false)
                    .send(),
            )
            .map(|_| ())
            .map_err(|e| format!("raising '{pool}' to {target}: {}", DisplayErrorContext(&e)))
    }

    fn terminate(&mut self, instance: &str, decrement: bool) -> Result<(), String> {
        self.runtime
            .block_on(
                self.client
                    .terminate_instance_in_auto_scaling_group()
                    .instance_id(instance)
                    .should_decrement_desired_capacity(decrement)
                    .send(),
            )
            .map(|_| ())
            .map_err(|e| format!("terminating {instance}: {}", DisplayErrorContext(&e)))
    }

    fn instances(&mut self) -> Result<Vec<InstanceFacts>, String> {
        let now = hub::api::unix_now();
        let mut by_id: Vec<(String, String, bool)> = Vec::new();
        for group in self.describe_groups()? {
            let pool = group
                .auto_scaling_group_name()
                .unwrap_or_default()
                .to_string();
            for instance in group.instances() {
                let in_service =
                    instance.lifecycle_state().map(|s| s.as_str()) == Some("InService");
                if let Some(id) = instance.instance_id() {
                    by_id.push((id.to_string(), pool.clone(), in_service));
                }
            }
        }
        let mut facts = Vec::new();
        for chunk in by_id.chunks(200) {
            let ids: Vec<String> = chunk.iter().map(|(id, _, _)| id.clone()).collect();
            let output = self
                .runtime
                .block_on(
                    self.ec2
                        .describe_instances()
                        .set_instance_ids(Some(ids))
                        .send(),
                )
                .map_err(|e| {
                    format!(
                        "describing instances: {}",
                        aws_sdk_ec2::error::DisplayErrorContext(&e)
                    )
                })?;
            for instance in output.reservations().iter().flat_map(|r| r.instances()) {
                let Some(id) = instance.instance_id() else {
                    continue;
                };
                let Some((_, pool, in_service)) = chunk.iter().find(|(i, _, _)| i == id) else {
                    continue;
                };
                let mark = instance
                    .tags()
                    .iter()
                    .find(|tag| tag.key() == Some(MARK_TAG))
                    .map(|tag| Mark::parse(tag.value().unwrap_or_default(), now));
                facts.push(InstanceFacts {
                    id: id.to_string(),
                    pool: pool.clone(),
                    in_service: *in_service,
                    // An instance without a launch time is treated as launched now (never reaped early).
                    launched_unix: instance.launch_time().map(|t| t.secs()).unwrap_or(now),
                    mark,
                });
            }
        }
        Ok(facts)
    }

    fn set_mark(&mut self, instance: &str, mark: Option<&Mark>) -> Result<(), String> {
        let result = match mark {
            Some(mark) => self
                .runtime
                .block_on(
                    self.ec2
                        .create_tags()
                        .resources(instance)
                        .tags(
                            aws_sdk_ec2::types::Tag::builder()
                                .key(MARK_TAG)
                                .value(mark.tag_value())
                                .build(),
                        )
                        .send(),
                )
                .map(|_| ())
                .map_err(|e| aws_sdk_ec2::error::DisplayErrorContext(e).to_string()),
            None => self
                .runtime
                .block_on(
                    self.ec2
                        .delete_tags()
                        .resources(instance)
                        .tags(aws_sdk_ec2::types::Tag::builder().key(MARK_TAG).build())
                        .send(),
                )
                .map(|_| ())
                .map_err(|e| aws_sdk_ec2::error::DisplayErrorContext(e).to_string()),
        };
        result.map_err(|e| format!("tagging {instance}: {e}"))
    }
}
