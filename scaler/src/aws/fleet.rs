//! The `aws` fleet: one or more Auto Scaling groups as capacity pools in priority order.
//! `describe` reads every group in one `DescribeAutoScalingGroups` call; a group whose newest
//! scaling activities failed for lack of capacity (InsufficientInstanceCapacity,
//! UnfulfillableCapacity, spot limits) is `short` for a while, so the policy spills its share to the
//! next pool; `raise_desired` is `SetDesiredCapacity(HonorCooldown=false)`, clamped to MaxSize;
//! `AZRebalance` is suspended at start (it would terminate busy instances). For the reaper it lists
//! in-service instances with their launch times (`DescribeInstances`) and keeps its marks as an EC2
//! tag. A group with a warm pool reports it (`DescribeWarmPool`: stopped instances ready, others
//! still initialising) with the bounds the stack tagged the group with, and `set_warm_pool` sizes
//! it with `PutWarmPool` (MinSize = MaxGroupPreparedCapacity, so the pool holds exactly that many
//! whatever the desired capacity; stopped; never reused on scale-in: one job per instance). The
//! SDK retries in adaptive mode, so throttling slows the loop instead of breaking it. Each round
//! also reads the `flotilla:fault` tags agents leave on instances they removed for a GPU fault
//! (one `DescribeInstances` for every group, terminated instances included; see
//! [`super::faults`]), and a group with too many recent faults is unhealthy
//! ([`scaling::pool_health`]): passed over like a short one until its cool-off ends.

use super::faults::{FaultLog, TaggedInstance, GROUP_TAG};
use aws_sdk_autoscaling::error::DisplayErrorContext;
use aws_sdk_autoscaling::types::{
    AutoScalingGroup, InstanceReusePolicy, WarmPoolState as PoolMode,
};
use scaling::fleet::{Fleet, FleetError};
use scaling::policy::{PoolState, WarmPoolState};
use scaling::pool_health::{self, HealthConfig, FAULT_TAG};
use scaling::reaper::{InstanceFacts, Mark, MARK_TAG};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Tags on a group that bound the warm pool the scaler may keep (the stack's parameters). A group
/// with a warm pool and no max tag keeps the size it has.
pub(crate) const WARM_POOL_MIN_TAG: &str = "flotilla:warm-pool-min";
pub(crate) const WARM_POOL_MAX_TAG: &str = "flotilla:warm-pool-max";

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

pub(crate) struct AwsFleet {
    runtime: tokio::runtime::Runtime,
    client: aws_sdk_autoscaling::Client,
    ec2: aws_sdk_ec2::Client,
    groups: Vec<String>,
    short_since: HashMap<String, Instant>,
    health: HealthConfig,
    faults: FaultLog,
    /// Groups unhealthy at the last round (a change is logged).
    unhealthy: HashSet<String>,
}

/// A failed SDK call as a [`FleetError`], with the SDK's whole error chain.
fn api_error<E: std::error::Error>(operation: String) -> impl FnOnce(E) -> FleetError {
    move |error| FleetError::Api {
        operation,
        detail: DisplayErrorContext(error).to_string(),
    }
}

impl AwsFleet {
    /// Connects, checks that every group exists, and suspends AZRebalance on them.
    pub(crate) fn new(
        region: &str,
        endpoint_url: &str,
        groups: Vec<String>,
        health: HealthConfig,
    ) -> anyhow::Result<AwsFleet> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let config = super::sdk_config(&runtime, region, endpoint_url)?;
        let client = aws_sdk_autoscaling::Client::new(&config);
        let ec2 = aws_sdk_ec2::Client::new(&config);
        let fleet = AwsFleet {
            runtime,
            client,
            ec2,
            groups,
            short_since: HashMap::new(),
            health,
            faults: FaultLog::new(&health),
            unhealthy: HashSet::new(),
        };
        let found = fleet.describe_groups()?;
        for name in &fleet.groups {
            if !found
                .iter()
                .any(|g| g.auto_scaling_group_name() == Some(name.as_str()))
            {
                anyhow::bail!("Auto Scaling group '{name}' does not exist");
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
                anyhow::bail!(
                    "suspending AZRebalance on '{name}': {}",
                    DisplayErrorContext(&error)
                );
            }
        }
        Ok(fleet)
    }

    fn describe_groups(
        &self,
    ) -> Result<Vec<aws_sdk_autoscaling::types::AutoScalingGroup>, FleetError> {
        let output = self
            .runtime
            .block_on(
                self.client
                    .describe_auto_scaling_groups()
                    .set_auto_scaling_group_names(Some(self.groups.clone()))
                    .send(),
            )
            .map_err(api_error("describing Auto Scaling groups".into()))?;
        Ok(output.auto_scaling_groups().to_vec())
    }

    /// The group's warm pool, if it has one: its bounds (tags), size, and instances ready (stopped,
    /// or running or hibernated in the pool) or still initialising (`Warmed:Pending*`).
    fn warm_pool(&self, group: &AutoScalingGroup) -> Result<Option<WarmPoolState>, FleetError> {
        let Some(configuration) = group.warm_pool_configuration() else {
            return Ok(None);
        };
        let name = group.auto_scaling_group_name().unwrap_or_default();
        let size = configuration.min_size().unwrap_or(0).max(0) as u32;
        let tag = |key: &str| {
            group
                .tags()
                .iter()
                .find(|tag| tag.key() == Some(key))
                .and_then(|tag| tag.value()?.parse::<u32>().ok())
        };
        let (min, max) = match tag(WARM_POOL_MAX_TAG) {
            Some(max) => (tag(WARM_POOL_MIN_TAG).unwrap_or(0).min(max), max),
            None => (size, size),
        };
        let (mut ready, mut pending) = (0, 0);
        let mut next_token = None;
        loop {
            let output = self
                .runtime
                .block_on(
                    self.client
                        .describe_warm_pool()
                        .auto_scaling_group_name(name)
                        .set_next_token(next_token)
                        .send(),
                )
                .map_err(api_error(format!("describing the warm pool of '{name}'")))?;
            for instance in output.instances() {
                match instance.lifecycle_state().map(|s| s.as_str()) {
                    Some("Warmed:Stopped" | "Warmed:Running" | "Warmed:Hibernated") => ready += 1,
                    Some(state) if state.starts_with("Warmed:Pending") => pending += 1,
                    _ => {}
                }
            }
            next_token = output.next_token().map(str::to_string);
            if next_token.is_none() {
                break;
            }
        }
        Ok(Some(WarmPoolState {
            min,
            max,
            size,
            ready,
            pending,
        }))
    }

    /// Reads the fault tags into the fault log and sets each pool's health from it. A failed read
    /// is logged and the faults already read still count: never fatal to the round.
    fn assess_health(&mut self, groups: &[AutoScalingGroup], pools: &mut [PoolState]) {
        let now = scaling::unix_now();
        for group in groups {
            let name = group.auto_scaling_group_name().unwrap_or_default();
            for id in group.instances().iter().filter_map(|i| i.instance_id()) {
                self.faults.saw(id, name, now);
            }
        }
        if self.health.faults > 0 {
            if let Err(error) = self.read_fault_tags(now) {
                tracing::warn!(%error, "reading GPU fault tags failed; the faults already read count");
            }
        }
        self.faults.prune(now);
        pool_health::apply(pools, &self.faults.records(), now, &self.health);
        for pool in pools.iter() {
            match &pool.health.unhealthy {
                Some(why) if self.unhealthy.insert(pool.name.clone()) => {
                    tracing::warn!(pool = %pool.name, reason = %why.reason, "pool unhealthy: passed over until its cool-off ends");
                }
                None if self.unhealthy.remove(&pool.name) => {
                    tracing::info!(pool = %pool.name, "pool healthy again");
                }
                _ => {}
            }
        }
    }

    /// Every instance with a fault tag, whatever its state (terminated ones stay listed for about
    /// an hour): one call, paged, for all groups, placed by [`FaultLog::note`].
    fn read_fault_tags(&mut self, now: i64) -> Result<(), FleetError> {
        let filter = aws_sdk_ec2::types::Filter::builder()
            .name("tag-key")
            .values(FAULT_TAG)
            .build();
        let mut next_token = None;
        loop {
            let output = self
                .runtime
                .block_on(
                    self.ec2
                        .describe_instances()
                        .filters(filter.clone())
                        .set_next_token(next_token)
                        .send(),
                )
                .map_err(api_error("reading fault tags".into()))?;
            for instance in output.reservations().iter().flat_map(|r| r.instances()) {
                let tag = |key: &str| {
                    instance
                        .tags()
                        .iter()
                        .find(|tag| tag.key() == Some(key))
                        .and_then(|tag| tag.value())
                };
                let (Some(id), Some(fault_tag)) = (instance.instance_id(), tag(FAULT_TAG)) else {
                    continue;
                };
                let tagged = TaggedInstance {
                    id,
                    group_tag: tag(GROUP_TAG),
                    fault_tag,
                };
                self.faults.note(&tagged, &self.groups, now);
            }
            next_token = output.next_token().map(str::to_string);
            if next_token.is_none() {
                return Ok(());
            }
        }
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
    fn describe(&mut self) -> Result<Vec<PoolState>, FleetError> {
        let groups = self.describe_groups()?;
        let mut pools = Vec::new();
        for name in self.groups.clone() {
            let group = groups
                .iter()
                .find(|g| g.auto_scaling_group_name() == Some(name.as_str()))
                .ok_or_else(|| FleetError::UnknownPool(name.clone()))?;
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
            let warm_pool = self.warm_pool(group)?;
            pools.push(PoolState {
                name: name.clone(),
                desired: group.desired_capacity().unwrap_or(0).max(0) as u32,
                min: group.min_size().unwrap_or(0).max(0) as u32,
                max: group.max_size().unwrap_or(0).max(0) as u32,
                in_service,
                pending,
                short,
                health: Default::default(),
                warm_pool,
            });
        }
        self.assess_health(&groups, &mut pools);
        Ok(pools)
    }

    fn raise_desired(&mut self, pool: &str, desired: u32) -> Result<(), FleetError> {
        let groups = self.describe_groups()?;
        let group = groups
            .iter()
            .find(|g| g.auto_scaling_group_name() == Some(pool))
            .ok_or_else(|| FleetError::UnknownPool(pool.to_string()))?;
        let size = |value: Option<i32>| value.unwrap_or(0).max(0) as u32;
        // Raise only, and never past MaxSize (moto accepts more; AWS refuses it).
        let target = desired.min(size(group.max_size()));
        if target <= size(group.desired_capacity()) {
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
            .map_err(api_error(format!("raising '{pool}' to {target}")))
    }

    fn set_warm_pool(&mut self, pool: &str, size: u32) -> Result<(), FleetError> {
        if !self.groups.iter().any(|g| g == pool) {
            return Err(FleetError::UnknownPool(pool.to_string()));
        }
        let size = i32::try_from(size).unwrap_or(i32::MAX);
        self.runtime
            .block_on(
                self.client
                    .put_warm_pool()
                    .auto_scaling_group_name(pool)
                    .min_size(size)
                    .max_group_prepared_capacity(size)
                    .pool_state(PoolMode::Stopped)
                    .instance_reuse_policy(
                        InstanceReusePolicy::builder()
                            .reuse_on_scale_in(false)
                            .build(),
                    )
                    .send(),
            )
            .map(|_| ())
            .map_err(api_error(format!(
                "sizing the warm pool of '{pool}' to {size}"
            )))
    }

    fn terminate(&mut self, instance: &str, decrement: bool) -> Result<(), FleetError> {
        self.runtime
            .block_on(
                self.client
                    .terminate_instance_in_auto_scaling_group()
                    .instance_id(instance)
                    .should_decrement_desired_capacity(decrement)
                    .send(),
            )
            .map(|_| ())
            .map_err(api_error(format!("terminating {instance}")))
    }

    fn instances(&mut self) -> Result<Vec<InstanceFacts>, FleetError> {
        let now = scaling::unix_now();
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
                .map_err(api_error("describing instances".into()))?;
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

    fn set_mark(&mut self, instance: &str, mark: Option<&Mark>) -> Result<(), FleetError> {
        let operation = format!("tagging {instance}");
        match mark {
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
                .map_err(api_error(operation)),
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
                .map_err(api_error(operation)),
        }
    }
}
