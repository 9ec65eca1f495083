//! Table tests of the preflight's checks over recorded AWS answers (quotas, spot scores and prices
//! are answers moto cannot give), and of [`preflight`] over a recorded reader: a refused call is a
//! warning naming its IAM action and the other checks still run.

use super::checks::*;
use super::gather::{preflight, ReadError, Reader};
use std::collections::{BTreeMap, BTreeSet};

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

/// Parameter values given as KEY, VALUE pairs.
type Pairs<'a> = &'a [(&'a str, &'a str)];

fn inputs(pairs: Pairs) -> Inputs {
    let mut all = values(&[
        ("InstanceTypes", "g6.xlarge,g5.xlarge"),
        ("MaxSize", "8"),
        ("ImageId", "ami-0123456789abcdef0"),
        ("QueueEndpoint", "https://hub.example.com:8443/q"),
        ("FallbackPools", "on-demand"),
    ]);
    all.extend(values(pairs));
    Inputs::from_parameters(&all).unwrap()
}

fn gpu(name: &str, vcpus: u32) -> TypeFacts {
    TypeFacts {
        name: name.into(),
        vcpus,
        architectures: strings(&["x86_64"]),
        gpus: 1,
    }
}

fn only(findings: &[Finding]) -> &Finding {
    assert_eq!(findings.len(), 1, "{findings:#?}");
    &findings[0]
}

#[test]
fn inputs_count_on_demand_and_spot_instances() {
    // (extra parameters, primary on-demand, on-demand at most, spot at most)
    let rows: [(Pairs, u32, u32, u32); 4] = [
        (&[], 0, 8, 8),
        (&[("FallbackPools", "none")], 0, 0, 8),
        (
            &[("OnDemandBaseCapacity", "2"), ("OnDemandPercentage", "50")],
            5,
            13,
            3,
        ),
        (
            &[("OnDemandPercentage", "100"), ("FallbackPools", "none")],
            8,
            8,
            0,
        ),
    ];
    for (extra, primary, on_demand, spot) in rows {
        let inputs = inputs(extra);
        assert_eq!(inputs.primary_on_demand, primary, "{extra:?}");
        assert_eq!(inputs.on_demand_instances(), on_demand, "{extra:?}");
        assert_eq!(inputs.spot_instances(), spot, "{extra:?}");
    }
    assert_eq!(inputs(&[]).queue_host, "hub.example.com");
    let bad = values(&[("InstanceTypes", "g6.xlarge"), ("MaxSize", "many")]);
    assert!(matches!(
        Inputs::from_parameters(&bad),
        Err(InputError::NotANumber {
            name: "MaxSize",
            ..
        })
    ));
}

#[test]
fn instance_types_map_to_their_quota() {
    let rows = [
        ("g6.xlarge", Some("L-DB2E81BA"), Some("L-3819A6DF")),
        ("g6e.12xlarge", Some("L-DB2E81BA"), Some("L-3819A6DF")),
        ("vt1.3xlarge", Some("L-DB2E81BA"), Some("L-3819A6DF")),
        ("p4d.24xlarge", Some("L-417A185B"), Some("L-7212CCBC")),
        ("m7i.large", Some("L-1216C47A"), Some("L-34B43A08")),
        ("c7gn.xlarge", Some("L-1216C47A"), Some("L-34B43A08")),
        ("inf2.xlarge", None, None),
        ("u-6tb1.metal", None, None),
    ];
    for (name, on_demand, spot) in rows {
        let code = |market| quota_for(name, market).map(|q| q.code);
        assert_eq!(code(Market::OnDemand), on_demand, "{name}");
        assert_eq!(code(Market::Spot), spot, "{name}");
    }
}

#[test]
fn a_quota_shortfall_is_an_error_with_the_increase_request() {
    let types = [gpu("g6.xlarge", 4), gpu("g5.12xlarge", 48)];
    let needs = quota_needs(&inputs(&[]), &types);
    let answer = |code: &str, value| QuotaAnswer {
        code: code.into(),
        value,
    };
    // On-demand G: the fallback group's 8 × g5.12xlarge; spot G: the primary group's 8.
    let answers = [answer("L-DB2E81BA", 64.0), answer("L-3819A6DF", 384.0)];
    let findings = check_quotas(&needs, &answers, "us-east-1");
    assert_eq!(findings.len(), 2, "{findings:#?}");
    let short = &findings[0];
    assert_eq!(short.severity, Severity::Error);
    assert!(short.message.contains("Running On-Demand G and VT instances (L-DB2E81BA): 64 vCPUs; 8 × g5.12xlarge (48 vCPUs) need 384"), "{short}");
    assert_eq!(short.fix, "aws service-quotas request-service-quota-increase --service-code ec2 --quota-code L-DB2E81BA --desired-value 384 --region us-east-1");
    assert_eq!(findings[1].severity, Severity::Info);
    assert!(
        findings[1].message.contains("(headroom 0)"),
        "{}",
        findings[1]
    );
    // No fallback group and no spot: only the on-demand quota, for MaxSize.
    let on_demand = inputs(&[("OnDemandPercentage", "100"), ("FallbackPools", "none")]);
    let needs = quota_needs(&on_demand, &types);
    assert_eq!(needs.len(), 1);
    assert_eq!(needs[0].needed(), 384);
    let other = [TypeFacts {
        name: "inf2.xlarge".into(),
        ..gpu("", 4)
    }];
    assert_eq!(
        only(&unchecked_families(&other)).severity,
        Severity::Warning
    );
}

#[test]
fn a_type_offered_in_one_of_three_zones_is_a_warning_and_in_none_an_error() {
    let zones: BTreeSet<String> = strings(&["us-east-1a", "us-east-1b", "us-east-1c"])
        .into_iter()
        .collect();
    let offered = |t: &str, z: &str| Offering {
        instance_type: t.into(),
        zone: z.into(),
    };
    let offerings = [
        offered("g6.xlarge", "us-east-1a"),
        offered("g6.xlarge", "us-east-1b"),
        offered("g6.xlarge", "us-east-1c"),
        offered("g5.xlarge", "us-east-1b"),
        offered("p5.48xlarge", "us-east-1e"),
    ];
    let rows = [
        ("g6.xlarge", None, ""),
        ("g5.xlarge", Some(Severity::Warning), "g5.xlarge is not offered in us-east-1a, us-east-1c (offered in us-east-1b)"),
        ("p5.48xlarge", Some(Severity::Error), "p5.48xlarge is not offered in any of the subnets' zones (us-east-1a, us-east-1b, us-east-1c)"),
    ];
    for (name, severity, message) in rows {
        let findings = check_offerings(&[gpu(name, 4)], &zones, &offerings);
        assert_eq!(findings.first().map(|f| f.severity), severity, "{name}");
        if let Some(finding) = findings.first() {
            assert_eq!(finding.message, message);
        }
    }
    let unknown = check_types(&strings(&["g6.xlarge", "g9.huge"]), &[gpu("g6.xlarge", 4)]);
    assert!(only(&unknown).message.ends_with("g9.huge"), "{unknown:?}");
}

#[test]
fn spot_scores_of_three_or_less_are_a_warning() {
    let types = strings(&["g6.xlarge"]);
    for (score, severity) in [
        (1, Severity::Warning),
        (3, Severity::Warning),
        (4, Severity::Info),
        (9, Severity::Info),
    ] {
        let scores = [SpotScore {
            region: "us-east-1".into(),
            score,
        }];
        let finding = check_spot(&scores, &types, 8).remove(0);
        assert_eq!(finding.severity, severity, "{score}");
        assert!(
            finding.message.ends_with(&format!("{score} of 10")),
            "{finding}"
        );
    }
    assert!(check_spot(&[], &types, 8).is_empty());
}

fn image(architecture: &str, tags: &[(&str, &str)]) -> ImageFacts {
    ImageFacts {
        id: "ami-1".into(),
        state: "available".into(),
        architecture: architecture.into(),
        tags: values(tags),
    }
}

#[test]
#[allow(clippy::too_many_lines)] // a table: one row per image
fn the_image_must_exist_match_the_architecture_and_carry_the_gpu_variant() {
    let flotilla_gpu = [(VERSION_TAG, "0.9.0"), (GPU_TAG, "true")];
    let flotilla_cpu = [(VERSION_TAG, "0.9.0"), (GPU_TAG, "false")];
    let x86 = [gpu("g6.xlarge", 4)];
    let arm = [TypeFacts {
        name: "g5g.xlarge".into(),
        architectures: strings(&["arm64"]),
        ..gpu("", 4)
    }];
    let rows: [(Option<ImageFacts>, &[TypeFacts], Severity, &str); 6] = [
        (None, &x86, Severity::Error, "does not exist"),
        (
            Some(image("arm64", &flotilla_gpu)),
            &x86,
            Severity::Error,
            "image ami-1 is arm64, which g6.xlarge cannot run",
        ),
        (
            Some(image("x86_64", &flotilla_gpu)),
            &arm,
            Severity::Error,
            "is x86_64, which g5g.xlarge cannot run",
        ),
        (
            Some(image("x86_64", &flotilla_cpu)),
            &x86,
            Severity::Error,
            "CPU variant",
        ),
        (
            Some(image("x86_64", &[])),
            &x86,
            Severity::Warning,
            "has no flotilla:agent-version tag",
        ),
        (
            Some(image("x86_64", &flotilla_gpu)),
            &x86,
            Severity::Info,
            "Flotilla 0.9.0, x86_64",
        ),
    ];
    for (image, types, severity, message) in rows {
        let findings = check_image("ami-1", image.as_ref(), types);
        assert_eq!(findings[0].severity, severity, "{findings:#?}");
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert!(findings[0].message.contains(message), "{}", findings[0]);
    }
    let pending = ImageFacts {
        state: "pending".into(),
        ..image("x86_64", &flotilla_gpu)
    };
    assert_eq!(
        check_image("ami-1", Some(&pending), &x86)[0].severity,
        Severity::Error
    );
}

fn subnet(id: &str, vpc: &str) -> SubnetFacts {
    SubnetFacts {
        id: id.into(),
        vpc_id: vpc.into(),
        zone: "us-east-1a".into(),
    }
}

fn table(id: &str, main: bool, subnets: &[&str], route: Option<DefaultRoute>) -> RouteTableFacts {
    RouteTableFacts {
        id: id.into(),
        main,
        subnets: strings(subnets),
        default_route: route,
    }
}

#[test]
#[allow(clippy::too_many_lines)] // a table: one row per network
fn a_private_subnet_without_nat_or_endpoints_is_an_error() {
    let nat = Some(DefaultRoute::NatGateway("nat-1".into()));
    let igw = Some(DefaultRoute::InternetGateway("igw-1".into()));
    let all_endpoints: BTreeSet<String> = AGENT_ENDPOINTS.iter().map(ToString::to_string).collect();
    let network = |tables: Vec<RouteTableFacts>, endpoints: &BTreeSet<String>| NetworkFacts {
        subnets: vec![subnet("subnet-a", "vpc-1")],
        route_tables: tables,
        endpoints: endpoints.clone(),
    };
    let none = BTreeSet::new();
    let rows: [(NetworkFacts, Severity, &str); 5] = [
        (network(vec![table("rtb-1", false, &["subnet-a"], None)], &none), Severity::Error, "subnet-a is private: rtb-1 has no 0.0.0.0/0 route to an internet or NAT gateway, and the VPC has no endpoints for ssm, sts, autoscaling, logs"),
        (network(vec![table("rtb-1", false, &["subnet-a"], nat)], &none), Severity::Info, "0.0.0.0/0 → nat-1 in rtb-1"),
        (network(vec![table("rtb-main", true, &[], igw)], &none), Severity::Info, "0.0.0.0/0 → igw-1 in rtb-main"),
        (network(vec![table("rtb-1", false, &["subnet-a"], None)], &all_endpoints), Severity::Warning, "the VPC's endpoints serve AWS"),
        (network(vec![table("rtb-1", false, &["subnet-a"], Some(DefaultRoute::Other("tgw-1".into())))], &none), Severity::Warning, "goes to tgw-1"),
    ];
    let given = inputs(&[("Subnets", "subnet-a")]);
    for (facts, severity, message) in rows {
        let finding = only(&check_network(&given, &facts)).clone();
        assert_eq!(finding.severity, severity, "{finding}");
        assert!(finding.message.contains(message), "{finding}");
    }
    let error = check_network(
        &given,
        &network(vec![table("rtb-1", false, &["subnet-a"], None)], &none),
    )
    .remove(0);
    assert!(
        error
            .fix
            .contains("aws ec2 create-route --route-table-id rtb-1"),
        "{error}"
    );
    // Missing subnets, several VPCs, another VPC than VpcId.
    let two = inputs(&[
        ("Subnets", "subnet-a,subnet-b,subnet-c"),
        ("VpcId", "vpc-1"),
    ]);
    let facts = NetworkFacts {
        subnets: vec![subnet("subnet-a", "vpc-1"), subnet("subnet-b", "vpc-2")],
        route_tables: vec![table(
            "rtb-main",
            true,
            &[],
            Some(DefaultRoute::InternetGateway("igw-1".into())),
        )],
        endpoints: BTreeSet::new(),
    };
    let errors: Vec<String> = check_network(&two, &facts)
        .into_iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| f.message)
        .collect();
    assert_eq!(
        errors,
        [
            "subnets not found: subnet-c",
            "the subnets belong to several VPCs (vpc-1, vpc-2)"
        ]
    );
    let elsewhere = inputs(&[
        ("Subnets", "subnet-a"),
        ("VpcId", "vpc-9"),
        ("RequireVpcEndpoints", "true"),
    ]);
    let findings = check_network(
        &elsewhere,
        &network(
            vec![table(
                "rtb-main",
                true,
                &[],
                Some(DefaultRoute::NatGateway("nat-1".into())),
            )],
            &none,
        ),
    );
    assert_eq!(
        findings[0].message,
        "the subnets are in vpc-1, not in VpcId vpc-9"
    );
    assert!(
        findings[2].message.starts_with("RequireVpcEndpoints=true"),
        "{findings:#?}"
    );
}

/// A product of GetProducts' PriceList, cut to what the price is read from.
const PRODUCT: &str = r#"{"product":{"attributes":{"instanceType":"g6.xlarge"}},
  "terms":{"OnDemand":{"ABC.JRTCKXETXF":{"priceDimensions":{"ABC.JRTCKXETXF.6YS6EN2CT7":
  {"unit":"Hrs","pricePerUnit":{"USD":"0.8048000000"}}}}}}}"#;

#[test]
fn prices_give_the_hourly_ceiling_and_a_missing_one_is_a_warning() {
    assert_eq!(on_demand_usd(PRODUCT), Some(0.8048));
    assert_eq!(on_demand_usd("{}"), None);
    assert_eq!(on_demand_usd("not json"), None);
    let price = |name: &str, usd| Price {
        instance_type: name.into(),
        usd_per_hour: usd,
    };
    let findings = check_prices(
        &inputs(&[]),
        &[
            price("g6.xlarge", Some(0.8048)),
            price("g5.xlarge", Some(1.006)),
            price("g9.xlarge", None),
        ],
    );
    assert_eq!(findings[0].severity, Severity::Warning);
    assert!(findings[0].message.contains("g9.xlarge"), "{}", findings[0]);
    assert_eq!(findings[1].message, "MaxSize 8 × g5.xlarge ($1.006/hour on-demand): at most $8.05/hour per group (the on-demand fallback group may add as much again)");
}

/// Recorded answers; `denied` names the actions that answer AccessDenied.
#[derive(Default)]
struct Recorded {
    types: Vec<TypeFacts>,
    quotas: BTreeMap<String, f64>,
    offerings: Vec<Offering>,
    image: Option<ImageFacts>,
    subnets: Vec<SubnetFacts>,
    tables: Vec<RouteTableFacts>,
    /// The spot placement score; `None`: the call fails (as on moto).
    spot: Option<i32>,
    denied: Vec<&'static str>,
}

impl Recorded {
    fn answer<T>(&self, action: &'static str, value: T) -> Result<T, ReadError> {
        if self.denied.contains(&action) {
            return Err(ReadError::AccessDenied { action });
        }
        Ok(value)
    }
}

impl Reader for Recorded {
    fn region(&self) -> String {
        "us-east-1".into()
    }
    fn instance_type(&self, name: &str) -> Result<Option<TypeFacts>, ReadError> {
        self.answer(
            "ec2:DescribeInstanceTypes",
            self.types.iter().find(|t| t.name == name).cloned(),
        )
    }
    fn offerings(&self, _: &[String], _: &[String]) -> Result<Vec<Offering>, ReadError> {
        self.answer("ec2:DescribeInstanceTypeOfferings", self.offerings.clone())
    }
    fn quota(&self, code: &str) -> Result<Option<f64>, ReadError> {
        self.answer(
            "servicequotas:GetServiceQuota",
            self.quotas.get(code).copied(),
        )
    }
    fn spot_scores(&self, _: &[String], _: u32) -> Result<Vec<SpotScore>, ReadError> {
        let score = self.spot.ok_or_else(|| ReadError::Failed {
            action: "ec2:GetSpotPlacementScores",
            message: "not implemented".into(),
        })?;
        let region = self.region();
        self.answer(
            "ec2:GetSpotPlacementScores",
            vec![SpotScore { region, score }],
        )
    }
    fn image_parameter(&self, _: &str) -> Result<Option<String>, ReadError> {
        self.answer("ssm:GetParameter", None)
    }
    fn image(&self, _: &str) -> Result<Option<ImageFacts>, ReadError> {
        self.answer("ec2:DescribeImages", self.image.clone())
    }
    fn subnets(&self, _: &[String]) -> Result<Vec<SubnetFacts>, ReadError> {
        self.answer("ec2:DescribeSubnets", self.subnets.clone())
    }
    fn route_tables(&self, _: &str) -> Result<Vec<RouteTableFacts>, ReadError> {
        self.answer("ec2:DescribeRouteTables", self.tables.clone())
    }
    fn endpoints(&self, _: &str) -> Result<BTreeSet<String>, ReadError> {
        self.answer("ec2:DescribeVpcEndpoints", BTreeSet::new())
    }
    fn price(&self, _: &str) -> Result<Option<f64>, ReadError> {
        self.answer("pricing:GetProducts", Some(0.8048))
    }
}

#[test]
fn a_refused_call_is_a_warning_naming_the_action_and_the_rest_goes_on() {
    let recorded = Recorded {
        types: vec![gpu("g6.xlarge", 4)],
        quotas: BTreeMap::from([("L-DB2E81BA".to_string(), 0.0)]),
        offerings: vec![Offering {
            instance_type: "g6.xlarge".into(),
            zone: "us-east-1a".into(),
        }],
        image: Some(image("arm64", &[(VERSION_TAG, "0.9.0"), (GPU_TAG, "true")])),
        subnets: vec![subnet("subnet-a", "vpc-1")],
        tables: vec![table("rtb-1", true, &[], None)],
        spot: None,
        denied: vec!["ec2:DescribeVpcEndpoints"],
    };
    let given = inputs(&[
        ("InstanceTypes", "g6.xlarge,g9.huge"),
        ("Subnets", "subnet-a"),
    ]);
    let findings = preflight(&recorded, &given);
    let lines: Vec<String> = findings.iter().map(ToString::to_string).collect();
    let has = |severity: Severity, check: &str, text: &str| {
        findings
            .iter()
            .any(|f| f.severity == severity && f.check == check && f.to_string().contains(text))
    };
    assert!(has(Severity::Error, "types", "g9.huge"), "{lines:#?}");
    assert!(
        has(
            Severity::Error,
            "quotas",
            "--quota-code L-DB2E81BA --desired-value 32"
        ),
        "{lines:#?}"
    );
    assert!(
        has(
            Severity::Warning,
            "quotas",
            "Service Quotas has no value for All G and VT Spot Instance Requests"
        ),
        "{lines:#?}"
    );
    assert!(has(Severity::Error, "image", "arm64"), "{lines:#?}");
    assert!(
        has(
            Severity::Warning,
            "network",
            "allow ec2:DescribeVpcEndpoints"
        ),
        "{lines:#?}"
    );
    assert!(
        has(Severity::Warning, "spot", "not implemented"),
        "{lines:#?}"
    );
    assert!(
        has(Severity::Info, "prices", "at most $6.44/hour"),
        "{lines:#?}"
    );
    // Errors first.
    let severities: Vec<Severity> = findings.iter().map(|f| f.severity).collect();
    let mut sorted = severities.clone();
    sorted.sort();
    assert_eq!(severities, sorted);
    let denied = Recorded {
        denied: vec!["ec2:DescribeInstanceTypes"],
        ..Recorded::default()
    };
    let findings = preflight(&denied, &given);
    assert!(
        findings
            .iter()
            .any(|f| f.fix == "allow ec2:DescribeInstanceTypes for the identity that deploys"),
        "{findings:#?}"
    );
}

/// The failing fleet docs/fleet-stack.md shows: each line there is what the preflight says.
#[test]
fn the_failing_example_in_the_docs_is_what_the_preflight_says() {
    let offered = |zone: &str, name: &str| Offering {
        instance_type: name.into(),
        zone: zone.into(),
    };
    let zones = ["us-east-1a", "us-east-1b", "us-east-1c"];
    let mut offerings: Vec<Offering> = zones.iter().map(|z| offered(z, "g6.xlarge")).collect();
    offerings.push(offered("us-east-1b", "g6.12xlarge"));
    let subnets = ["subnet-0aa11", "subnet-0bb22", "subnet-0cc33"];
    let recorded = Recorded {
        types: vec![gpu("g6.xlarge", 4), gpu("g6.12xlarge", 48)],
        quotas: BTreeMap::from([("L-DB2E81BA".into(), 64.0), ("L-3819A6DF".into(), 0.0)]),
        offerings,
        image: Some(ImageFacts {
            id: "ami-0a1b2c3d4e5f60718".into(),
            ..image("arm64", &[(VERSION_TAG, "0.9.0"), (GPU_TAG, "true")])
        }),
        subnets: subnets
            .iter()
            .zip(zones)
            .map(|(id, zone)| SubnetFacts {
                zone: zone.into(),
                ..subnet(id, "vpc-0f00d")
            })
            .collect(),
        tables: vec![table("rtb-0private", true, &[], None)],
        spot: Some(2),
        denied: vec!["pricing:GetProducts"],
    };
    let given = inputs(&[
        ("InstanceTypes", "g6.xlarge,g6.12xlarge"),
        ("ImageId", "ami-0a1b2c3d4e5f60718"),
        ("VpcId", "vpc-0f00d"),
        ("Subnets", "subnet-0aa11,subnet-0bb22,subnet-0cc33"),
    ]);
    let findings = preflight(&recorded, &given);
    let docs = include_str!("../../../../docs/fleet-stack.md");
    for finding in &findings {
        assert!(
            docs.contains(&format!("      {finding}\n")),
            "docs/fleet-stack.md lacks: {finding}"
        );
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    assert_eq!((errors, findings.len()), (4, 7));
}
