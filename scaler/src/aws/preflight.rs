//! The preflight's AWS reader (`cmd/preflight`): each question of its `Reader` trait as one
//! read-only call — EC2 (DescribeInstanceTypes, DescribeInstanceTypeOfferings,
//! GetSpotPlacementScores, DescribeImages, DescribeSubnets, DescribeRouteTables,
//! DescribeVpcEndpoints), Service Quotas (GetServiceQuota, else GetAWSDefaultServiceQuota), the
//! Price List API (GetProducts, whose endpoint is in us-east-1) and SSM (GetParameter, for
//! `ImageIdParameter`) — turned into the checks' plain structs. "Not found" answers are values
//! (`None`, empty lists), refusals are [`ReadError::AccessDenied`] naming the IAM action, and
//! throttling is the SDK's adaptive retry ([`super::sdk_config`]).

use crate::cmd::preflight::checks::{
    on_demand_usd, DefaultRoute, ImageFacts, Offering, RouteTableFacts, SpotScore, SubnetFacts,
    TypeFacts,
};
use crate::cmd::preflight::gather::{ReadError, Reader};
use anyhow::Result;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{Filter, InstanceType, LocationType, TargetCapacityUnitType};
use std::collections::BTreeSet;

/// Error codes AWS answers a call the caller's policy does not allow with.
const DENIED: [&str; 4] = [
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnauthorizedAccess",
];

/// The Price List API's endpoint region.
const PRICING_REGION: &str = "us-east-1";

pub(crate) struct AwsReader {
    runtime: tokio::runtime::Runtime,
    region: String,
    ec2: aws_sdk_ec2::Client,
    quotas: aws_sdk_servicequotas::Client,
    pricing: aws_sdk_pricing::Client,
    ssm: aws_sdk_ssm::Client,
}

impl AwsReader {
    /// Credentials and region from the standard chain (`region` overrides it when not empty).
    pub(crate) fn connect(region: &str) -> Result<AwsReader> {
        let runtime = super::runtime()?;
        let config = super::sdk_config(&runtime, region, "")?;
        let pricing = aws_sdk_pricing::config::Builder::from(&config)
            .region(aws_config::Region::new(PRICING_REGION))
            .build();
        Ok(AwsReader {
            region: config.region().map(ToString::to_string).unwrap_or_default(),
            ec2: aws_sdk_ec2::Client::new(&config),
            quotas: aws_sdk_servicequotas::Client::new(&config),
            pricing: aws_sdk_pricing::Client::from_conf(pricing),
            ssm: aws_sdk_ssm::Client::new(&config),
            runtime,
        })
    }

    /// Runs one request; an error whose code is in `absent` is `Ok(None)`.
    fn call<T, E>(
        &self,
        action: &'static str,
        absent: &[&str],
        request: impl std::future::Future<Output = Result<T, SdkError<E>>>,
    ) -> Result<Option<T>, ReadError>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match self.runtime.block_on(request) {
            Ok(output) => Ok(Some(output)),
            Err(error) => match error.code() {
                Some(code) if absent.iter().any(|a| code.starts_with(a)) => Ok(None),
                Some(code) if DENIED.contains(&code) => Err(ReadError::AccessDenied { action }),
                _ => Err(ReadError::Failed {
                    action,
                    message: short(&error),
                }),
            },
        }
    }

    /// [`Self::call`] with no "absent" codes.
    fn must<T, E>(
        &self,
        action: &'static str,
        request: impl std::future::Future<Output = Result<T, SdkError<E>>>,
    ) -> Result<T, ReadError>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        self.call(action, &[], request)?.ok_or(ReadError::Failed {
            action,
            message: "no answer".into(),
        })
    }
}

/// An error in one line: its code and message, else the HTTP status, else the SDK's account.
fn short<E>(error: &SdkError<E>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match (error.code(), error.message(), error.raw_response()) {
        (Some(code), Some(message), _) => format!("{code}: {message}"),
        (Some(code), None, _) => code.to_string(),
        (None, _, Some(response)) => format!("HTTP {}", response.status().as_u16()),
        (None, _, None) => DisplayErrorContext(error).to_string(),
    }
}

fn filter(name: &str, values: &[String]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.to_vec()))
        .build()
}

impl Reader for AwsReader {
    fn region(&self) -> String {
        self.region.clone()
    }

    fn instance_type(&self, name: &str) -> Result<Option<TypeFacts>, ReadError> {
        let request = self
            .ec2
            .describe_instance_types()
            .instance_types(InstanceType::from(name))
            .send();
        let Some(output) = self.call(
            "ec2:DescribeInstanceTypes",
            &["InvalidInstanceType"],
            request,
        )?
        else {
            return Ok(None);
        };
        Ok(output.instance_types().first().map(|t| TypeFacts {
            name: name.to_string(),
            vcpus: t
                .v_cpu_info()
                .and_then(|v| v.default_v_cpus())
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0),
            architectures: t
                .processor_info()
                .map(|p| {
                    p.supported_architectures()
                        .iter()
                        .map(|a| a.as_str().to_string())
                        .collect()
                })
                .unwrap_or_default(),
            gpus: t
                .gpu_info()
                .map(|g| g.gpus().iter().filter_map(|d| d.count()).sum::<i32>())
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
        }))
    }

    fn offerings(&self, types: &[String], zones: &[String]) -> Result<Vec<Offering>, ReadError> {
        let request = self
            .ec2
            .describe_instance_type_offerings()
            .location_type(LocationType::AvailabilityZone)
            .filters(filter("instance-type", types))
            .filters(filter("location", zones))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>();
        let offered = self.must("ec2:DescribeInstanceTypeOfferings", request)?;
        Ok(offered
            .iter()
            .map(|o| Offering {
                instance_type: o
                    .instance_type()
                    .map(|t| t.as_str().to_string())
                    .unwrap_or_default(),
                zone: o.location().unwrap_or_default().to_string(),
            })
            .collect())
    }

    fn quota(&self, code: &str) -> Result<Option<f64>, ReadError> {
        const NONE: [&str; 1] = ["NoSuchResourceException"];
        let applied = self
            .quotas
            .get_service_quota()
            .service_code("ec2")
            .quota_code(code)
            .send();
        if let Some(output) = self.call("servicequotas:GetServiceQuota", &NONE, applied)? {
            return Ok(output.quota().and_then(|q| q.value()));
        }
        let default = self
            .quotas
            .get_aws_default_service_quota()
            .service_code("ec2")
            .quota_code(code)
            .send();
        let output = self.call("servicequotas:GetAWSDefaultServiceQuota", &NONE, default)?;
        Ok(output.and_then(|o| o.quota().and_then(|q| q.value())))
    }

    fn spot_scores(&self, types: &[String], capacity: u32) -> Result<Vec<SpotScore>, ReadError> {
        let request = self
            .ec2
            .get_spot_placement_scores()
            .set_instance_types(Some(types.to_vec()))
            .target_capacity(i32::try_from(capacity).unwrap_or(i32::MAX))
            .target_capacity_unit_type(TargetCapacityUnitType::Units)
            .region_names(&self.region)
            .single_availability_zone(false)
            .send();
        let output = self.must("ec2:GetSpotPlacementScores", request)?;
        Ok(output
            .spot_placement_scores()
            .iter()
            .map(|s| SpotScore {
                region: s.region().unwrap_or(&self.region).to_string(),
                score: s.score().unwrap_or(0),
            })
            .collect())
    }

    fn image_parameter(&self, name: &str) -> Result<Option<String>, ReadError> {
        let request = self.ssm.get_parameter().name(name).send();
        let output = self.call("ssm:GetParameter", &["ParameterNotFound"], request)?;
        Ok(output.and_then(|o| o.parameter().and_then(|p| p.value()).map(str::to_string)))
    }

    fn image(&self, id: &str) -> Result<Option<ImageFacts>, ReadError> {
        let request = self.ec2.describe_images().image_ids(id).send();
        let output = self.call("ec2:DescribeImages", &["InvalidAMIID"], request)?;
        Ok(output.and_then(|o| {
            o.images().first().map(|image| ImageFacts {
                id: id.to_string(),
                state: image
                    .state()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
                architecture: image
                    .architecture()
                    .map(|a| a.as_str().to_string())
                    .unwrap_or_default(),
                tags: image
                    .tags()
                    .iter()
                    .filter_map(|t| {
                        Some((
                            t.key()?.to_string(),
                            t.value().unwrap_or_default().to_string(),
                        ))
                    })
                    .collect(),
            })
        }))
    }

    fn subnets(&self, ids: &[String]) -> Result<Vec<SubnetFacts>, ReadError> {
        let request = if ids.is_empty() {
            self.ec2
                .describe_subnets()
                .filters(filter("default-for-az", &["true".to_string()]))
        } else {
            self.ec2
                .describe_subnets()
                .filters(filter("subnet-id", ids))
        };
        let output = self.must("ec2:DescribeSubnets", request.send())?;
        Ok(output
            .subnets()
            .iter()
            .map(|s| SubnetFacts {
                id: s.subnet_id().unwrap_or_default().to_string(),
                vpc_id: s.vpc_id().unwrap_or_default().to_string(),
                zone: s.availability_zone().unwrap_or_default().to_string(),
            })
            .collect())
    }

    fn route_tables(&self, vpc: &str) -> Result<Vec<RouteTableFacts>, ReadError> {
        let request = self
            .ec2
            .describe_route_tables()
            .filters(filter("vpc-id", &[vpc.to_string()]))
            .send();
        let output = self.must("ec2:DescribeRouteTables", request)?;
        Ok(output
            .route_tables()
            .iter()
            .map(|table| {
                let associations = table.associations();
                RouteTableFacts {
                    id: table.route_table_id().unwrap_or_default().to_string(),
                    main: associations.iter().any(|a| a.main() == Some(true)),
                    subnets: associations
                        .iter()
                        .filter_map(|a| a.subnet_id().map(str::to_string))
                        .collect(),
                    default_route: table
                        .routes()
                        .iter()
                        .filter(|r| r.destination_cidr_block() == Some("0.0.0.0/0"))
                        .find_map(default_route),
                }
            })
            .collect())
    }

    fn endpoints(&self, vpc: &str) -> Result<BTreeSet<String>, ReadError> {
        let request = self
            .ec2
            .describe_vpc_endpoints()
            .filters(filter("vpc-id", &[vpc.to_string()]))
            .send();
        let output = self.must("ec2:DescribeVpcEndpoints", request)?;
        Ok(output
            .vpc_endpoints()
            .iter()
            .filter_map(|e| e.service_name()?.rsplit('.').next().map(str::to_string))
            .collect())
    }

    fn price(&self, instance_type: &str) -> Result<Option<f64>, ReadError> {
        let mut request = self
            .pricing
            .get_products()
            .service_code("AmazonEC2")
            .format_version("aws_v1")
            .max_results(10);
        for (field, value) in [
            ("instanceType", instance_type),
            ("regionCode", self.region.as_str()),
            ("operatingSystem", "Linux"),
            ("tenancy", "Shared"),
            ("preInstalledSw", "NA"),
            ("capacitystatus", "Used"),
        ] {
            let term = aws_sdk_pricing::types::Filter::builder()
                .r#type(aws_sdk_pricing::types::FilterType::TermMatch)
                .field(field)
                .value(value)
                .build()
                .map_err(|e| ReadError::Failed {
                    action: "pricing:GetProducts",
                    message: e.to_string(),
                })?;
            request = request.filters(term);
        }
        let output = self.must("pricing:GetProducts", request.send())?;
        Ok(output
            .price_list()
            .iter()
            .find_map(|product| on_demand_usd(product)))
    }
}

/// A 0.0.0.0/0 route's target (a blackhole route is none).
fn default_route(route: &aws_sdk_ec2::types::Route) -> Option<DefaultRoute> {
    if route.state() == Some(&aws_sdk_ec2::types::RouteState::Blackhole) {
        return None;
    }
    if let Some(nat) = route.nat_gateway_id() {
        return Some(DefaultRoute::NatGateway(nat.to_string()));
    }
    match route.gateway_id() {
        Some(gateway) if gateway.starts_with("igw-") => {
            Some(DefaultRoute::InternetGateway(gateway.to_string()))
        }
        gateway => gateway
            .or(route.transit_gateway_id())
            .or(route.network_interface_id())
            .or(route.vpc_peering_connection_id())
            .or(route.instance_id())
            .map(|target| DefaultRoute::Other(target.to_string())),
    }
}
