//! `scaler preflight` and the preflight of `scaler deploy` against moto server, as far as moto
//! goes: instance types and their offerings by zone, images (architecture, tags), subnets, VPCs,
//! route tables and endpoints are real moto answers. Service Quotas (moto knows only the `vpc`
//! service's), spot placement scores and the Price List API are not in moto: those checks say
//! "not checked" here and are table-tested over recorded answers in `cmd/preflight/tests.rs`.

use aws_sdk_ec2::types::{Filter, Tag};
use testkit::moto;
use testkit::runtime;

fn scaler(env: &[(&'static str, String)], args: &[&str]) -> (i32, String) {
    testkit::hub_process::scaler_with_env(env, args)
}

/// The first image moto has of this architecture.
fn image_of(runtime: &tokio::runtime::Runtime, ec2: &aws_sdk_ec2::Client, arch: &str) -> String {
    let filter = Filter::builder().name("architecture").values(arch).build();
    let images = runtime
        .block_on(ec2.describe_images().filters(filter).send())
        .expect("describe images");
    images
        .images()
        .iter()
        .find_map(|i| i.image_id().map(str::to_string))
        .unwrap_or_else(|| panic!("moto has an {arch} image"))
}

/// An internet gateway attached to the VPC, and the table's 0.0.0.0/0 route to it (also used by
/// `deploy_e2e.rs` to give moto's default VPC what AWS gives every default VPC).
pub(crate) fn route_to_internet(
    runtime: &tokio::runtime::Runtime,
    ec2: &aws_sdk_ec2::Client,
    vpc: &str,
    table: &str,
) {
    let gateway = runtime
        .block_on(ec2.create_internet_gateway().send())
        .unwrap();
    let gateway = gateway
        .internet_gateway()
        .and_then(|g| g.internet_gateway_id())
        .unwrap()
        .to_string();
    let attach = ec2
        .attach_internet_gateway()
        .internet_gateway_id(&gateway)
        .vpc_id(vpc);
    runtime.block_on(attach.send()).unwrap();
    let route = ec2
        .create_route()
        .route_table_id(table)
        .destination_cidr_block("0.0.0.0/0")
        .gateway_id(gateway);
    runtime.block_on(route.send()).unwrap();
}

/// A VPC with a subnet in each zone, all on one route table; an internet gateway on it when
/// `public`.
fn vpc_with_subnets(
    runtime: &tokio::runtime::Runtime,
    ec2: &aws_sdk_ec2::Client,
    zones: &[&str],
    public: bool,
) -> (String, Vec<String>) {
    let vpc = runtime
        .block_on(ec2.create_vpc().cidr_block("10.8.0.0/16").send())
        .unwrap();
    let vpc = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
    let subnets: Vec<String> = zones
        .iter()
        .enumerate()
        .map(|(i, zone)| {
            let created = runtime
                .block_on(
                    ec2.create_subnet()
                        .vpc_id(&vpc)
                        .cidr_block(format!("10.8.{i}.0/24"))
                        .availability_zone(*zone)
                        .send(),
                )
                .unwrap();
            created.subnet().unwrap().subnet_id().unwrap().to_string()
        })
        .collect();
    let table = runtime
        .block_on(ec2.create_route_table().vpc_id(&vpc).send())
        .unwrap();
    let table = table
        .route_table()
        .unwrap()
        .route_table_id()
        .unwrap()
        .to_string();
    for subnet in &subnets {
        runtime
            .block_on(
                ec2.associate_route_table()
                    .route_table_id(&table)
                    .subnet_id(subnet)
                    .send(),
            )
            .unwrap();
    }
    if public {
        route_to_internet(runtime, ec2, &vpc, &table);
    }
    (vpc, subnets)
}

#[test]
fn preflight_finds_offering_image_and_network_problems_on_moto() {
    let runtime = runtime();
    let moto = moto::MotoServer::start();
    let env = moto.env();
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk(&runtime));
    let arm = image_of(&runtime, &ec2, "arm64");
    // Three zones: moto offers g6.xlarge in all but us-east-1e, p3dn.24xlarge in none of them.
    let zones = ["us-east-1a", "us-east-1b", "us-east-1e"];
    let (vpc, subnets) = vpc_with_subnets(&runtime, &ec2, &zones, false);
    let image = format!("ImageId={arm}");
    let subnet_list = format!("Subnets={}", subnets.join(","));
    let vpc_id = format!("VpcId={vpc}");
    let (code, output) = scaler(
        &env,
        &[
            "preflight",
            "--stack",
            "gpu-fleet",
            "--parameters",
            "InstanceTypes=g6.xlarge,p3dn.24xlarge,g9.huge",
            "MaxSize=8",
            &image,
            &subnet_list,
            &vpc_id,
            "QueueEndpoint=https://org.example.com",
        ],
    );
    assert_eq!(code, 1, "{output}");
    let expected = [
        "error   types     unknown instance types in this region: g9.huge",
        &format!("error   image     image {arm} is arm64, which g6.xlarge, p3dn.24xlarge cannot run"),
        &format!("{} are private: ", subnets.join(", ")),
        "warning offerings g6.xlarge is not offered in us-east-1e (offered in us-east-1a, us-east-1b)",
        "error   offerings p3dn.24xlarge is not offered in any of the subnets' zones",
        "warning quotas    not checked: ",
        "Preflight: 4 error(s)",
    ];
    for line in expected {
        assert!(output.contains(line), "{line}\n{output}");
    }
    assert!(
        !output.contains("p3dn.24xlarge is not offered in us-east-1e"),
        "{output}"
    );
}

#[test]
fn preflight_passes_a_public_subnet_and_a_flotilla_gpu_image_and_deploy_stops_on_errors() {
    let runtime = runtime();
    let moto = moto::MotoServer::start();
    let env = moto.env();
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk(&runtime));
    let x86 = image_of(&runtime, &ec2, "x86_64");
    let tag = |key: &str, value: &str| Tag::builder().key(key).value(value).build();
    runtime
        .block_on(
            ec2.create_tags()
                .resources(&x86)
                .tags(tag("flotilla:agent-version", "0.9.0"))
                .tags(tag("flotilla:gpu", "true"))
                .send(),
        )
        .unwrap();
    let (vpc, subnets) = vpc_with_subnets(&runtime, &ec2, &["us-east-1a", "us-east-1b"], true);
    let image = format!("ImageId={x86}");
    let subnet_list = format!("Subnets={}", subnets.join(","));
    let vpc_id = format!("VpcId={vpc}");
    let parameters = [
        "InstanceTypes=g6.xlarge,g5.xlarge",
        "MaxSize=4",
        &image,
        &subnet_list,
        &vpc_id,
        "QueueEndpoint=https://org.example.com",
    ];
    let args: Vec<&str> = ["preflight", "--stack", "gpu-fleet", "--parameters"]
        .into_iter()
        .chain(parameters)
        .collect();
    let (code, output) = scaler(&env, &args);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains(&format!(
            "ok      image     image {x86}: Flotilla 0.9.0, x86_64"
        )),
        "{output}"
    );
    assert!(output.contains("0.0.0.0/0 → igw-"), "{output}");
    assert!(output.contains("Preflight: 0 error(s)"), "{output}");

    // deploy runs the same checks first: an error stops it before any stack exists, even for a
    // dry run; --ignore-preflight goes on.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t\n").unwrap();
    let token = token.display().to_string();
    let failing = [
        "InstanceTypes=p3dn.24xlarge",
        "MaxSize=4",
        &image,
        &subnet_list,
        &vpc_id,
        "QueueEndpoint=https://org.example.com",
    ];
    let deploy = |extra: Option<&'static str>| {
        let mut args = vec![
            "deploy",
            "--stack",
            "gpu-fleet",
            "--token-file",
            &token,
            "--dry-run",
        ];
        args.extend(extra);
        args.push("--parameters");
        args.extend(failing);
        scaler(&env, &args)
    };
    let (code, output) = deploy(None);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("p3dn.24xlarge is not offered in any of the subnets' zones"),
        "{output}"
    );
    assert!(
        output.contains("the preflight found 1 error(s) (above)"),
        "{output}"
    );
    assert!(!output.contains("Planning stack"), "{output}");
    let (code, output) = deploy(Some("--ignore-preflight"));
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("--ignore-preflight: going on despite 1 preflight error(s)"),
        "{output}"
    );
    assert!(output.contains("Dry run: nothing was changed."), "{output}");
}
