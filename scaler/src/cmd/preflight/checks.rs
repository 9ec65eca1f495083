//! The preflight's decisions, with no I/O: each check takes what AWS answered (recorded in the
//! named structs below: [`TypeFacts`], [`QuotaAnswer`], [`Offering`], [`SpotScore`],
//! [`ImageFacts`], [`SubnetFacts`], [`RouteTableFacts`], [`Price`]) and the fleet's parameters
//! ([`Inputs`]) and returns [`Finding`]s, one line each with what to do. Kept apart from the
//! reading (`gather.rs`, `aws/preflight.rs`) so every rule is table-tested over answers AWS gives
//! but moto cannot (quotas, spot scores, prices).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// How much a finding matters: errors stop `deploy` (unless `--ignore-preflight`), warnings and
/// notes do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Severity {
    Error,
    Warning,
    Info,
}

/// One line of the preflight's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    pub severity: Severity,
    /// Which check: `types`, `quotas`, `offerings`, `spot`, `image`, `network`, `prices`.
    pub check: &'static str,
    pub message: String,
    /// What to do about it (empty for a note that needs nothing).
    pub fix: String,
}

impl Finding {
    pub(crate) fn new(
        severity: Severity,
        check: &'static str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            severity,
            check,
            message: message.into(),
            fix: fix.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "ok",
        };
        write!(f, "{label:<7} {:<9} {}", self.check, self.message)?;
        if !self.fix.is_empty() {
            write!(f, " → {}", self.fix)?;
        }
        Ok(())
    }
}

/// Why the parameters cannot be checked at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InputError {
    #[error("parameter {name}: '{value}' is not a whole number")]
    NotANumber { name: &'static str, value: String },
    #[error("parameter InstanceTypes is empty")]
    NoTypes,
}

/// The fleet's parameters as the preflight reads them (template defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inputs {
    pub instance_types: Vec<String>,
    pub max_size: u32,
    /// Instances of the primary group that may be on-demand (base + percentage of the rest).
    pub primary_on_demand: u32,
    /// Whether the on-demand fallback group (MaxSize more on-demand instances) exists.
    pub fallback: bool,
    pub image_id: String,
    pub image_parameter: String,
    pub vpc_id: String,
    pub subnets: Vec<String>,
    pub require_vpc_endpoints: bool,
    /// The queue endpoint's host (for the private-subnet note).
    pub queue_host: String,
}

impl Inputs {
    /// From a fleet's parameter values (`values` holds every parameter, defaults included).
    pub(crate) fn from_parameters(values: &BTreeMap<String, String>) -> Result<Inputs, InputError> {
        let text = |name: &str| values.get(name).map_or("", |v| v.trim()).to_string();
        let list = |name: &str| -> Vec<String> {
            text(name)
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        };
        let number = |name: &'static str, default: u32| -> Result<u32, InputError> {
            match text(name) {
                v if v.is_empty() => Ok(default),
                v => v
                    .parse()
                    .map_err(|_| InputError::NotANumber { name, value: v }),
            }
        };
        let instance_types = list("InstanceTypes");
        if instance_types.is_empty() {
            return Err(InputError::NoTypes);
        }
        let max_size = number("MaxSize", 10)?;
        let base = number("OnDemandBaseCapacity", 0)?.min(max_size);
        let percentage = number("OnDemandPercentage", 0)?.min(100);
        let above = u64::from(max_size - base) * u64::from(percentage);
        let primary_on_demand = base + u32::try_from(above.div_ceil(100)).unwrap_or(u32::MAX);
        let endpoint = [text("QueueEndpoint"), text("PlainHttpQueueEndpoint")]
            .into_iter()
            .find(|e| !e.is_empty())
            .unwrap_or_default();
        Ok(Inputs {
            instance_types,
            max_size,
            primary_on_demand: primary_on_demand.min(max_size),
            fallback: text("FallbackPools") != "none",
            image_id: text("ImageId"),
            image_parameter: text("ImageIdParameter"),
            vpc_id: text("VpcId"),
            subnets: list("Subnets"),
            require_vpc_endpoints: text("RequireVpcEndpoints") == "true",
            queue_host: host_of(&endpoint),
        })
    }

    /// Instances that may run on-demand at once: the primary group's share and the fallback group.
    pub(crate) fn on_demand_instances(&self) -> u32 {
        self.primary_on_demand + if self.fallback { self.max_size } else { 0 }
    }

    /// Instances of the primary group that may run on spot at once.
    pub(crate) fn spot_instances(&self) -> u32 {
        self.max_size - self.primary_on_demand
    }
}

/// `https://host:443/path` → `host`.
pub(crate) fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
        .to_string()
}

/// An instance type as DescribeInstanceTypes tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TypeFacts {
    pub name: String,
    pub vcpus: u32,
    /// ProcessorInfo.SupportedArchitectures: `x86_64`, `arm64`, …
    pub architectures: Vec<String>,
    pub gpus: u32,
}

/// Unknown types: an error naming them (the other checks go on with the known ones).
pub(crate) fn check_types(requested: &[String], known: &[TypeFacts]) -> Vec<Finding> {
    let unknown: Vec<&str> = requested
        .iter()
        .filter(|t| !known.iter().any(|k| &k.name == *t))
        .map(String::as_str)
        .collect();
    if unknown.is_empty() {
        return Vec::new();
    }
    vec![Finding::new(
        Severity::Error,
        "types",
        format!("unknown instance types in this region: {}", unknown.join(", ")),
        "check the spelling, or list what the region has: aws ec2 describe-instance-types --query 'InstanceTypes[].InstanceType'",
    )]
}

/// Whether instances are bought on-demand or on spot (each has its own vCPU quotas).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Market {
    OnDemand,
    Spot,
}

/// An EC2 running-instances vCPU quota (Service Quotas, service code `ec2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QuotaSpec {
    pub code: &'static str,
    pub name: &'static str,
    pub market: Market,
}

/// The quotas the preflight knows: standard, G and VT, P families, each on-demand and spot.
pub(crate) const QUOTAS: [QuotaSpec; 6] = [
    QuotaSpec {
        code: "L-1216C47A",
        name: "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances",
        market: Market::OnDemand,
    },
    QuotaSpec {
        code: "L-DB2E81BA",
        name: "Running On-Demand G and VT instances",
        market: Market::OnDemand,
    },
    QuotaSpec {
        code: "L-417A185B",
        name: "Running On-Demand P instances",
        market: Market::OnDemand,
    },
    QuotaSpec {
        code: "L-34B43A08",
        name: "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests",
        market: Market::Spot,
    },
    QuotaSpec {
        code: "L-3819A6DF",
        name: "All G and VT Spot Instance Requests",
        market: Market::Spot,
    },
    QuotaSpec {
        code: "L-7212CCBC",
        name: "All P Spot Instance Requests",
        market: Market::Spot,
    },
];

/// The quota an instance type counts against, by its family's letters (`g6e` → G and VT);
/// `None` for families with quotas of their own (inf, trn, dl, f, x, u, hpc, …).
pub(crate) fn quota_for(instance_type: &str, market: Market) -> Option<QuotaSpec> {
    let family: String = instance_type
        .chars()
        .take_while(char::is_ascii_lowercase)
        .collect();
    let index = match family.as_str() {
        "a" | "c" | "d" | "h" | "i" | "m" | "r" | "t" | "z" => 0,
        "g" | "vt" => 1,
        "p" => 2,
        _ => return None,
    };
    let offset = if market == Market::Spot { 3 } else { 0 };
    Some(QUOTAS[index + offset])
}

/// What one quota must allow: `instances` of the largest type that counts against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QuotaNeed {
    pub quota: QuotaSpec,
    pub instances: u32,
    pub largest: String,
    pub vcpus_each: u32,
}

impl QuotaNeed {
    pub(crate) fn needed(&self) -> u64 {
        u64::from(self.instances) * u64::from(self.vcpus_each)
    }
}

/// The quotas the fleet draws on, and how much of each it may use at MaxSize (any group may launch
/// only its largest type, so that is what each must allow). Types outside the known quotas get a
/// note from [`unchecked_families`].
pub(crate) fn quota_needs(inputs: &Inputs, types: &[TypeFacts]) -> Vec<QuotaNeed> {
    let mut needs: Vec<QuotaNeed> = Vec::new();
    for (market, instances) in [
        (Market::OnDemand, inputs.on_demand_instances()),
        (Market::Spot, inputs.spot_instances()),
    ] {
        if instances == 0 {
            continue;
        }
        for facts in types {
            let Some(quota) = quota_for(&facts.name, market) else {
                continue;
            };
            match needs.iter_mut().find(|n| n.quota == quota) {
                Some(need) if need.vcpus_each >= facts.vcpus => {}
                Some(need) => {
                    need.largest.clone_from(&facts.name);
                    need.vcpus_each = facts.vcpus;
                }
                None => needs.push(QuotaNeed {
                    quota,
                    instances,
                    largest: facts.name.clone(),
                    vcpus_each: facts.vcpus,
                }),
            }
        }
    }
    needs
}

/// Types whose quota the preflight does not know (a note, not a finding of fault).
pub(crate) fn unchecked_families(types: &[TypeFacts]) -> Vec<Finding> {
    types
        .iter()
        .filter(|t| quota_for(&t.name, Market::OnDemand).is_none())
        .map(|t| {
            Finding::new(
                Severity::Warning,
                "quotas",
                format!(
                    "{}: its family has a vCPU quota of its own, not checked here",
                    t.name
                ),
                "look it up: aws service-quotas list-service-quotas --service-code ec2",
            )
        })
        .collect()
}

/// A quota's current value, as Service Quotas answered (the applied value, else AWS's default).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QuotaAnswer {
    pub code: String,
    pub value: f64,
}

/// Each need against its quota's value: a shortfall is an error with the increase request;
/// enough is a note with the headroom. A quota without an answer was reported when it was read.
pub(crate) fn check_quotas(
    needs: &[QuotaNeed],
    answers: &[QuotaAnswer],
    region: &str,
) -> Vec<Finding> {
    needs
        .iter()
        .filter_map(|need| {
            let answer = answers.iter().find(|a| a.code == need.quota.code)?;
            let needed = need.needed();
            // Quotas are whole vCPUs; a fraction (never seen) rounds down.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let have = answer.value.max(0.0) as u64;
            let what = format!(
                "{} ({}): {have} vCPUs; {} × {} ({} vCPUs) need {needed}",
                need.quota.name, need.quota.code, need.instances, need.largest, need.vcpus_each
            );
            Some(if have >= needed {
                Finding::new(Severity::Info, "quotas", format!("{what} (headroom {})", have - needed), "")
            } else {
                Finding::new(
                    Severity::Error,
                    "quotas",
                    what,
                    format!(
                        "aws service-quotas request-service-quota-increase --service-code ec2 --quota-code {} --desired-value {needed} --region {region}",
                        need.quota.code
                    ),
                )
            })
        })
        .collect()
}

/// One (type, zone) pair DescribeInstanceTypeOfferings answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Offering {
    pub instance_type: String,
    pub zone: String,
}

/// Each known type against the subnets' zones: offered in none is an error, in some a warning
/// naming the zones that lack it.
pub(crate) fn check_offerings(
    types: &[TypeFacts],
    zones: &BTreeSet<String>,
    offerings: &[Offering],
) -> Vec<Finding> {
    if zones.is_empty() {
        return Vec::new();
    }
    let all = zones.iter().cloned().collect::<Vec<_>>().join(", ");
    types
        .iter()
        .filter_map(|facts| {
            let offered: BTreeSet<&str> = offerings
                .iter()
                .filter(|o| o.instance_type == facts.name && zones.contains(&o.zone))
                .map(|o| o.zone.as_str())
                .collect();
            let missing: Vec<&str> = zones
                .iter()
                .map(String::as_str)
                .filter(|z| !offered.contains(z))
                .collect();
            let name = &facts.name;
            match (offered.len(), missing.len()) {
                (_, 0) => None,
                (0, _) => Some(Finding::new(
                    Severity::Error,
                    "offerings",
                    format!("{name} is not offered in any of the subnets' zones ({all})"),
                    format!("drop {name} or add subnets in zones that offer it: aws ec2 describe-instance-type-offerings --location-type availability-zone --filters Name=instance-type,Values={name}"),
                )),
                _ => Some(Finding::new(
                    Severity::Warning,
                    "offerings",
                    format!("{name} is not offered in {} (offered in {})", missing.join(", "), offered.into_iter().collect::<Vec<_>>().join(", ")),
                    format!("it launches only where offered: add types offered in {} for capacity there", missing.join(", ")),
                )),
            }
        })
        .collect()
}

/// A spot placement score (1 to 10) for the types at the fleet's MaxSize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpotScore {
    pub region: String,
    pub score: i32,
}

/// The best score among the answers; ≤ 3 is a warning with what helps.
pub(crate) fn check_spot(scores: &[SpotScore], types: &[String], capacity: u32) -> Vec<Finding> {
    let Some(best) = scores.iter().max_by_key(|s| s.score) else {
        return Vec::new();
    };
    let message = format!(
        "spot placement score for {capacity} × {} in {}: {} of 10",
        types.join(","),
        best.region,
        best.score
    );
    if best.score <= 3 {
        vec![Finding::new(
            Severity::Warning,
            "spot",
            message,
            "spot capacity is unlikely: add instance types (InstanceTypes) or deploy in another region; the on-demand fallback group takes over meanwhile",
        )]
    } else {
        vec![Finding::new(Severity::Info, "spot", message, "")]
    }
}

/// An image as DescribeImages tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageFacts {
    pub id: String,
    pub state: String,
    pub architecture: String,
    pub tags: BTreeMap<String, String>,
}

/// The tags the Packer template (`ami/flotilla.pkr.hcl`) puts on Flotilla's images.
pub(crate) const VERSION_TAG: &str = "flotilla:agent-version";
pub(crate) const GPU_TAG: &str = "flotilla:gpu";

/// The image against the types: it exists and is available, its architecture is one every type
/// runs, it is Flotilla's (tags), and GPU types get the GPU variant.
pub(crate) fn check_image(
    id: &str,
    image: Option<&ImageFacts>,
    types: &[TypeFacts],
) -> Vec<Finding> {
    let Some(image) = image else {
        return vec![Finding::new(
            Severity::Error,
            "image",
            format!("image {id} does not exist in this region (or is not shared with this account)"),
            "build it here (ami/README.md) or copy it: aws ec2 copy-image --source-region REGION --source-image-id AMI --name NAME",
        )];
    };
    let mut findings = Vec::new();
    if image.state != "available" {
        findings.push(Finding::new(
            Severity::Error,
            "image",
            format!("image {id} is {}, not available", image.state),
            "wait for it to become available, or use another image",
        ));
    }
    let wrong: Vec<&str> = types
        .iter()
        .filter(|t| !t.architectures.contains(&image.architecture))
        .map(|t| t.name.as_str())
        .collect();
    if !wrong.is_empty() {
        findings.push(Finding::new(
            Severity::Error,
            "image",
            format!(
                "image {id} is {}, which {} cannot run",
                image.architecture,
                wrong.join(", ")
            ),
            format!(
                "use an image built for the types (packer build -var arch={} ami/flotilla.pkr.hcl), or types that run {}",
                other_arch(&image.architecture),
                image.architecture
            ),
        ));
    }
    let sound = findings.is_empty();
    let tags = check_image_tags(image, types);
    findings.extend(
        tags.into_iter()
            .filter(|f| sound || f.severity != Severity::Info),
    );
    findings
}

fn other_arch(architecture: &str) -> &'static str {
    if architecture == "arm64" {
        "x86_64"
    } else {
        "arm64"
    }
}

fn check_image_tags(image: &ImageFacts, types: &[TypeFacts]) -> Vec<Finding> {
    let id = &image.id;
    let Some(version) = image.tags.get(VERSION_TAG) else {
        return vec![Finding::new(
            Severity::Warning,
            "image",
            format!("image {id} has no {VERSION_TAG} tag: not built by ami/flotilla.pkr.hcl, so the agent and its GPU driver are not known to be there"),
            "build Flotilla's image (ami/README.md), or make sure yours installs the agent",
        )];
    };
    let gpu_types: Vec<&str> = types
        .iter()
        .filter(|t| t.gpus > 0)
        .map(|t| t.name.as_str())
        .collect();
    if !gpu_types.is_empty() && image.tags.get(GPU_TAG).map(String::as_str) != Some("true") {
        return vec![Finding::new(
            Severity::Error,
            "image",
            format!("image {id} is Flotilla {version}'s CPU variant ({GPU_TAG} is not true), but {} have GPUs: no driver, no GPU jobs", gpu_types.join(", ")),
            "build the GPU variant (packer build -var gpu=true ami/flotilla.pkr.hcl) and give its ImageId",
        )];
    }
    vec![Finding::new(
        Severity::Info,
        "image",
        format!("image {id}: Flotilla {version}, {}", image.architecture),
        "",
    )]
}

/// A subnet as DescribeSubnets tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubnetFacts {
    pub id: String,
    pub vpc_id: String,
    pub zone: String,
}

/// Where a route table sends 0.0.0.0/0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DefaultRoute {
    InternetGateway(String),
    NatGateway(String),
    /// A transit gateway, a network interface, a peering…: may or may not reach the internet.
    Other(String),
}

/// A route table of the VPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteTableFacts {
    pub id: String,
    pub main: bool,
    pub subnets: Vec<String>,
    pub default_route: Option<DefaultRoute>,
}

/// The VPC's network as the network check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NetworkFacts {
    pub subnets: Vec<SubnetFacts>,
    pub route_tables: Vec<RouteTableFacts>,
    /// Interface endpoints' services, short names (`ssm`, `sts`, …).
    pub endpoints: BTreeSet<String>,
}

/// The services an agent calls that a private subnet needs interface endpoints for.
pub(crate) const AGENT_ENDPOINTS: [&str; 4] = ["ssm", "sts", "autoscaling", "logs"];

/// The subnets exist, are in one VPC (VpcId's when given), and each reaches the internet through
/// its route table (or the VPC's main one): an internet or NAT gateway, else interface endpoints
/// for every service the agent calls. A private subnet with neither is an error.
pub(crate) fn check_network(inputs: &Inputs, facts: &NetworkFacts) -> Vec<Finding> {
    let mut findings = Vec::new();
    let missing: Vec<&str> = inputs
        .subnets
        .iter()
        .filter(|id| !facts.subnets.iter().any(|s| &s.id == *id))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        findings.push(Finding::new(
            Severity::Error,
            "network",
            format!("subnets not found: {}", missing.join(", ")),
            "give subnets of this account and region (aws ec2 describe-subnets)",
        ));
    }
    let vpcs: BTreeSet<&str> = facts.subnets.iter().map(|s| s.vpc_id.as_str()).collect();
    if vpcs.len() > 1 {
        let list = vpcs.iter().copied().collect::<Vec<_>>().join(", ");
        findings.push(Finding::new(
            Severity::Error,
            "network",
            format!("the subnets belong to several VPCs ({list})"),
            "give subnets of one VPC",
        ));
    } else if let Some(vpc) = vpcs
        .first()
        .filter(|v| !inputs.vpc_id.is_empty() && **v != inputs.vpc_id)
    {
        findings.push(Finding::new(
            Severity::Error,
            "network",
            format!("the subnets are in {vpc}, not in VpcId {}", inputs.vpc_id),
            format!("set VpcId={vpc} or give subnets of {}", inputs.vpc_id),
        ));
    }
    let missing_endpoints: Vec<&str> = AGENT_ENDPOINTS
        .into_iter()
        .filter(|e| !facts.endpoints.contains(*e))
        .collect();
    let table_of = |id: &String| {
        let tables = &facts.route_tables;
        (tables.iter().position(|t| t.subnets.contains(id)))
            .or_else(|| tables.iter().position(|t| t.main))
    };
    let mut by_table: BTreeMap<Option<usize>, Vec<&SubnetFacts>> = BTreeMap::new();
    for subnet in &facts.subnets {
        by_table
            .entry(table_of(&subnet.id))
            .or_default()
            .push(subnet);
    }
    for (table, subnets) in by_table {
        let table = table.and_then(|index| facts.route_tables.get(index));
        findings.push(check_route(
            &subnets,
            table,
            &missing_endpoints,
            &inputs.queue_host,
        ));
    }
    if inputs.require_vpc_endpoints && !missing_endpoints.is_empty() {
        findings.push(Finding::new(
            Severity::Warning,
            "network",
            format!("RequireVpcEndpoints=true, but the VPC has no interface endpoints for {}: the agents cannot read their configuration", missing_endpoints.join(", ")),
            endpoint_fix(&missing_endpoints),
        ));
    }
    findings
}

fn endpoint_fix(missing: &[&str]) -> String {
    format!(
        "create interface endpoints with private DNS: aws ec2 create-vpc-endpoint --vpc-endpoint-type Interface --private-dns-enabled --service-name com.amazonaws.REGION.SERVICE (for {})",
        missing.join(", ")
    )
}

/// The way out of the subnets that share a route table (or use the VPC's main one).
fn check_route(
    subnets: &[&SubnetFacts],
    table: Option<&RouteTableFacts>,
    missing_endpoints: &[&str],
    queue_host: &str,
) -> Finding {
    let ids = subnets
        .iter()
        .map(|s| s.id.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let table_id = table.map_or("no route table", |t| t.id.as_str());
    match table.and_then(|t| t.default_route.as_ref()) {
        Some(DefaultRoute::InternetGateway(gw) | DefaultRoute::NatGateway(gw)) => {
            Finding::new(Severity::Info, "network", format!("{ids}: 0.0.0.0/0 → {gw} in {table_id}"), "")
        }
        Some(DefaultRoute::Other(target)) => Finding::new(
            Severity::Warning,
            "network",
            format!("{ids}: 0.0.0.0/0 goes to {target} in {table_id}, not to an internet or NAT gateway"),
            format!("make sure it reaches the internet (AWS APIs and {queue_host})"),
        ),
        None if missing_endpoints.is_empty() => Finding::new(
            Severity::Warning,
            "network",
            format!("{ids}: no route to the internet ({table_id}); the VPC's endpoints serve AWS"),
            format!("the queue {queue_host} must be reachable inside the VPC (a private hub)"),
        ),
        None => Finding::new(
            Severity::Error,
            "network",
            format!(
                "{ids} {} private: {table_id} has no 0.0.0.0/0 route to an internet or NAT gateway, and the VPC has no endpoints for {}",
                if subnets.len() == 1 { "is" } else { "are" },
                missing_endpoints.join(", ")
            ),
            format!("add a NAT gateway route: aws ec2 create-route --route-table-id {table_id} --destination-cidr-block 0.0.0.0/0 --nat-gateway-id NAT, or use public subnets; or {}", endpoint_fix(missing_endpoints)),
        ),
    }
}

/// An instance type's on-demand price (Linux, shared tenancy), `None` when the Price List API
/// has none.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Price {
    pub instance_type: String,
    pub usd_per_hour: Option<f64>,
}

/// What MaxSize of the dearest type costs an hour at most; a type without a price is a warning.
pub(crate) fn check_prices(inputs: &Inputs, prices: &[Price]) -> Vec<Finding> {
    let mut findings: Vec<Finding> = prices
        .iter()
        .filter(|p| p.usd_per_hour.is_none())
        .map(|p| {
            Finding::new(
                Severity::Warning,
                "prices",
                format!(
                    "no on-demand price for {} from the Price List API",
                    p.instance_type
                ),
                "see https://aws.amazon.com/ec2/pricing/on-demand/",
            )
        })
        .collect();
    let dearest = prices
        .iter()
        .filter_map(|p| Some((p.instance_type.as_str(), p.usd_per_hour?)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((name, price)) = dearest {
        let most = f64::from(inputs.max_size) * price;
        let fallback = if inputs.fallback {
            " per group (the on-demand fallback group may add as much again)"
        } else {
            ""
        };
        findings.push(Finding::new(
            Severity::Info,
            "prices",
            format!("MaxSize {} × {name} (${price:.3}/hour on-demand): at most ${most:.2}/hour{fallback}", inputs.max_size),
            "",
        ));
    }
    findings
}

/// The on-demand USD price per hour in one Price List API product (a JSON document of
/// GetProducts' PriceList): `terms.OnDemand.*.priceDimensions.*.pricePerUnit.USD`, the first
/// non-zero one.
pub(crate) fn on_demand_usd(product: &str) -> Option<f64> {
    let document: serde_json::Value = serde_json::from_str(product).ok()?;
    let terms = document.get("terms")?.get("OnDemand")?.as_object()?;
    terms
        .values()
        .filter_map(|term| term.get("priceDimensions")?.as_object())
        .flat_map(|dimensions| dimensions.values())
        .filter_map(|d| {
            d.get("pricePerUnit")?
                .get("USD")?
                .as_str()?
                .parse::<f64>()
                .ok()
        })
        .find(|price| *price > 0.0)
}

/// Whether any finding stops `deploy`.
pub(crate) fn has_errors(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Error)
}
