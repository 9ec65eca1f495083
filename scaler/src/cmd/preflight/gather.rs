//! The preflight's reading, behind a small trait: [`Reader`] is what AWS is asked (one method per
//! question, answers in `checks.rs`'s named structs), [`preflight`] asks it and hands the answers
//! to the pure checks. A question AWS refuses (AccessDenied) or cannot answer becomes a warning
//! naming the IAM action or the failure, and the rest goes on. The real reader is
//! `aws/preflight.rs`; tests give recorded answers.

use super::checks::{
    check_image, check_network, check_offerings, check_prices, check_quotas, check_spot,
    check_types, quota_needs, unchecked_families, Finding, ImageFacts, Inputs, NetworkFacts,
    Offering, Price, QuotaAnswer, RouteTableFacts, Severity, SpotScore, SubnetFacts, TypeFacts,
};
use std::collections::BTreeSet;

/// Why a question went unanswered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ReadError {
    /// AccessDenied / UnauthorizedOperation: the caller may not make this call.
    #[error("not allowed to call {action}")]
    AccessDenied { action: &'static str },
    #[error("{action} failed: {message}")]
    Failed {
        action: &'static str,
        message: String,
    },
}

/// What the preflight asks AWS.
pub(crate) trait Reader {
    fn region(&self) -> String;
    /// `None`: the region has no such type.
    fn instance_type(&self, name: &str) -> Result<Option<TypeFacts>, ReadError>;
    fn offerings(&self, types: &[String], zones: &[String]) -> Result<Vec<Offering>, ReadError>;
    /// The quota's value (applied, else AWS's default); `None` when Service Quotas has none.
    fn quota(&self, code: &str) -> Result<Option<f64>, ReadError>;
    fn spot_scores(&self, types: &[String], capacity: u32) -> Result<Vec<SpotScore>, ReadError>;
    /// The AMI id an SSM parameter holds (`ImageIdParameter`).
    fn image_parameter(&self, name: &str) -> Result<Option<String>, ReadError>;
    fn image(&self, id: &str) -> Result<Option<ImageFacts>, ReadError>;
    /// The named subnets that exist; no names: the default VPC's default subnets.
    fn subnets(&self, ids: &[String]) -> Result<Vec<SubnetFacts>, ReadError>;
    fn route_tables(&self, vpc: &str) -> Result<Vec<RouteTableFacts>, ReadError>;
    /// The VPC's interface endpoints' services, short names (`ssm`, …).
    fn endpoints(&self, vpc: &str) -> Result<BTreeSet<String>, ReadError>;
    fn price(&self, instance_type: &str) -> Result<Option<f64>, ReadError>;
}

/// A check that could not run, as a warning.
pub(crate) fn skipped(check: &'static str, error: &ReadError) -> Finding {
    let fix = match error {
        ReadError::AccessDenied { action } => {
            format!("allow {action} for the identity that deploys")
        }
        ReadError::Failed { .. } => String::new(),
    };
    Finding::new(
        Severity::Warning,
        check,
        format!("not checked: {error}"),
        fix,
    )
}

/// Runs every check; errors first, then warnings, then notes (each group in check order).
pub(crate) fn preflight(reader: &dyn Reader, inputs: &Inputs) -> Vec<Finding> {
    let mut findings = Vec::new();
    let types = read_types(reader, inputs, &mut findings);
    quotas(reader, inputs, &types, &mut findings);
    let network = network(reader, inputs, &mut findings);
    if let Some(network) = &network {
        offerings(reader, &types, network, &mut findings);
    }
    if inputs.spot_instances() > 0 && !types.is_empty() {
        let names: Vec<String> = types.iter().map(|t| t.name.clone()).collect();
        match reader.spot_scores(&names, inputs.max_size) {
            Ok(scores) => findings.extend(check_spot(&scores, &names, inputs.max_size)),
            Err(error) => findings.push(skipped("spot", &error)),
        }
    }
    image(reader, inputs, &types, &mut findings);
    let prices: Result<Vec<Price>, ReadError> = types
        .iter()
        .map(|t| {
            Ok(Price {
                instance_type: t.name.clone(),
                usd_per_hour: reader.price(&t.name)?,
            })
        })
        .collect();
    match prices {
        Ok(prices) => findings.extend(check_prices(inputs, &prices)),
        Err(error) => findings.push(skipped("prices", &error)),
    }
    findings.sort_by_key(|f| f.severity);
    findings.dedup();
    findings
}

/// Only the quota check, for `scaler status`: each quota the fleet draws on with its headroom at
/// MaxSize, or its shortfall (and what could not be read).
pub(crate) fn quota_headroom(reader: &dyn Reader, inputs: &Inputs) -> Vec<Finding> {
    let mut findings = Vec::new();
    let types = read_types(reader, inputs, &mut findings);
    quotas(reader, inputs, &types, &mut findings);
    findings.retain(|f| f.check == "quotas" || f.severity != Severity::Info);
    findings
}

/// The known types (unknown ones reported); empty when the types cannot be read.
fn read_types(reader: &dyn Reader, inputs: &Inputs, findings: &mut Vec<Finding>) -> Vec<TypeFacts> {
    let mut known = Vec::new();
    for name in &inputs.instance_types {
        match reader.instance_type(name) {
            Ok(Some(facts)) => known.push(facts),
            Ok(None) => {}
            Err(error) => {
                findings.push(skipped("types", &error));
                return Vec::new();
            }
        }
    }
    findings.extend(check_types(&inputs.instance_types, &known));
    known
}

fn quotas(reader: &dyn Reader, inputs: &Inputs, types: &[TypeFacts], findings: &mut Vec<Finding>) {
    findings.extend(unchecked_families(types));
    let needs = quota_needs(inputs, types);
    let mut answers = Vec::new();
    for need in &needs {
        match reader.quota(need.quota.code) {
            Ok(Some(value)) => answers.push(QuotaAnswer {
                code: need.quota.code.to_string(),
                value,
            }),
            Ok(None) => findings.push(Finding::new(
                Severity::Warning,
                "quotas",
                format!(
                    "Service Quotas has no value for {} ({})",
                    need.quota.name, need.quota.code
                ),
                format!(
                    "aws service-quotas get-service-quota --service-code ec2 --quota-code {}",
                    need.quota.code
                ),
            )),
            Err(error) => findings.push(skipped("quotas", &error)),
        }
    }
    findings.extend(check_quotas(&needs, &answers, &reader.region()));
}

/// The subnets, their VPC's route tables and endpoints, checked; `None` when the subnets cannot
/// be read.
fn network(
    reader: &dyn Reader,
    inputs: &Inputs,
    findings: &mut Vec<Finding>,
) -> Option<NetworkFacts> {
    let subnets = match reader.subnets(&inputs.subnets) {
        Ok(subnets) => subnets,
        Err(error) => {
            findings.push(skipped("network", &error));
            return None;
        }
    };
    let vpc = subnets
        .first()
        .map(|s| s.vpc_id.clone())
        .unwrap_or_default();
    if vpc.is_empty() && inputs.subnets.is_empty() {
        findings.push(Finding::new(
            Severity::Error,
            "network",
            "no Subnets given and the region has no default VPC",
            "give VpcId and Subnets",
        ));
        return None;
    }
    let route_tables = reader.route_tables(&vpc);
    let endpoints = reader.endpoints(&vpc);
    let facts = match (route_tables, endpoints) {
        (Ok(route_tables), Ok(endpoints)) => NetworkFacts {
            subnets,
            route_tables,
            endpoints,
        },
        (Err(error), _) | (_, Err(error)) => {
            findings.push(skipped("network", &error));
            let facts = NetworkFacts {
                subnets,
                route_tables: Vec::new(),
                endpoints: BTreeSet::new(),
            };
            return Some(facts);
        }
    };
    findings.extend(check_network(inputs, &facts));
    Some(facts)
}

fn offerings(
    reader: &dyn Reader,
    types: &[TypeFacts],
    network: &NetworkFacts,
    findings: &mut Vec<Finding>,
) {
    let zones: BTreeSet<String> = network.subnets.iter().map(|s| s.zone.clone()).collect();
    if types.is_empty() || zones.is_empty() {
        return;
    }
    let names: Vec<String> = types.iter().map(|t| t.name.clone()).collect();
    let zone_list: Vec<String> = zones.iter().cloned().collect();
    match reader.offerings(&names, &zone_list) {
        Ok(offered) => findings.extend(check_offerings(types, &zones, &offered)),
        Err(error) => findings.push(skipped("offerings", &error)),
    }
}

fn image(reader: &dyn Reader, inputs: &Inputs, types: &[TypeFacts], findings: &mut Vec<Finding>) {
    let id = if inputs.image_id.is_empty() && !inputs.image_parameter.is_empty() {
        match reader.image_parameter(&inputs.image_parameter) {
            Ok(Some(id)) => id,
            Ok(None) => {
                let message = format!(
                    "the SSM parameter {} (ImageIdParameter) does not exist",
                    inputs.image_parameter
                );
                findings.push(Finding::new(Severity::Error, "image", message, "put the AMI id there: aws ssm put-parameter --type String --name NAME --value ami-…"));
                return;
            }
            Err(error) => return findings.push(skipped("image", &error)),
        }
    } else {
        inputs.image_id.clone()
    };
    if id.is_empty() {
        return findings.push(Finding::new(
            Severity::Error,
            "image",
            "no image: ImageId and ImageIdParameter are both empty",
            "give ImageId=ami-… (ami/README.md builds one)",
        ));
    }
    match reader.image(&id) {
        Ok(image) => findings.extend(check_image(&id, image.as_ref(), types)),
        Err(error) => findings.push(skipped("image", &error)),
    }
}
