//! `scaler deploy | status | destroy --stack` against moto server: the embedded template creates
//! the fleet (GPU instance types, launch template with IMDSv2 and hop limit 1, groups, roles,
//! parameters, the stack's KMS key), the token lands under the stack's key (and a token stored
//! under another key moves there on the next deploy), a changed parameter updates it, an unchanged
//! deploy is a quiet success, destroy removes it and the token parameter. Bad input fails before
//! any AWS call: the scaler is pointed at a closed port then. (moto stores a key policy but never
//! enforces it, and answers every KMS call on a key CloudFormation made with a 500, so the key is
//! checked through the stack's resources and outputs.)

use testkit::moto;

use testkit::runtime;

/// Runs the scaler with `env`; (exit code, stdout + stderr).
fn scaler(env: &[(&'static str, String)], args: &[&str]) -> (i32, String) {
    testkit::hub_process::scaler_with_env(env, args)
}

/// The instance types of a group's MixedInstancesPolicy, in order.
fn instance_type_overrides(group: &aws_sdk_autoscaling::types::AutoScalingGroup) -> Vec<String> {
    group
        .mixed_instances_policy()
        .and_then(|p| p.launch_template())
        .map(|t| {
            t.overrides()
                .iter()
                .filter_map(|o| o.instance_type().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A list parameter's value as `a,b`, however the endpoint writes it (AWS: `a,b`; moto: a
/// Python list, `['a', 'b']`).
fn list_items(value: &str) -> String {
    let items = value.trim().trim_start_matches('[').trim_end_matches(']');
    let items: Vec<&str> = items
        .split(',')
        .map(|i| i.trim().trim_matches('\''))
        .collect();
    items.join(",")
}

/// The KMS key SSM says a parameter is encrypted under.
fn parameter_key(
    runtime: &tokio::runtime::Runtime,
    ssm: &aws_sdk_ssm::Client,
    name: &str,
) -> String {
    let filter = aws_sdk_ssm::types::ParameterStringFilter::builder()
        .key("Name")
        .option("Equals")
        .values(name)
        .build()
        .unwrap();
    let described = runtime
        .block_on(ssm.describe_parameters().parameter_filters(filter).send())
        .unwrap();
    described.parameters()[0]
        .key_id()
        .unwrap_or_default()
        .to_string()
}

fn an_image(runtime: &tokio::runtime::Runtime, moto: &moto::MotoServer) -> String {
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk(runtime));
    let images = runtime
        .block_on(ec2.describe_images().send())
        .expect("describe images");
    images
        .images()
        .iter()
        .find_map(|i| i.image_id().map(str::to_string))
        .expect("moto has images")
}

/// Gives moto's default VPC what AWS gives every default VPC, an internet gateway and the main
/// route table's 0.0.0.0/0 route to it, so deploy's preflight finds the subnets public.
fn default_vpc_as_aws_makes_it(runtime: &tokio::runtime::Runtime, moto: &moto::MotoServer) {
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk(runtime));
    let default = aws_sdk_ec2::types::Filter::builder()
        .name("is-default")
        .values("true")
        .build();
    let vpcs = runtime
        .block_on(ec2.describe_vpcs().filters(default).send())
        .unwrap();
    let vpc = vpcs.vpcs()[0].vpc_id().unwrap().to_string();
    let in_vpc = aws_sdk_ec2::types::Filter::builder()
        .name("vpc-id")
        .values(&vpc)
        .build();
    let tables = runtime
        .block_on(ec2.describe_route_tables().filters(in_vpc).send())
        .unwrap();
    let main = tables
        .route_tables()
        .iter()
        .find(|t| t.associations().iter().any(|a| a.main() == Some(true)))
        .and_then(|t| t.route_table_id())
        .unwrap()
        .to_string();
    super::preflight_e2e::route_to_internet(runtime, &ec2, &vpc, &main);
}

#[test]
fn deploy_creates_updates_reports_and_destroys_the_gpu_fleet() {
    let runtime = runtime();
    let moto = moto::MotoServer::start();
    let sdk = moto.sdk(&runtime);
    let env = moto.env();
    let image = an_image(&runtime, &moto);
    default_vpc_as_aws_makes_it(&runtime, &moto);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "registration-token-123\n").unwrap();
    let image_parameter = format!("ImageId={image}");
    let token_path = token_file.display().to_string();
    let create = [
        "deploy",
        "--stack",
        "gpu-fleet",
        "--token-file",
        &token_path,
        "--parameters",
        "InstanceTypes=g6.xlarge,g5.xlarge",
        &image_parameter,
        "QueueEndpoint=https://example.semaphoreci.com",
        "MaxSize=6",
        "JobEcrRepositories=team/app,base",
        "KeepFailedInstanceMinutes=30",
    ];
    // A dry run runs the preflight, shows the plan and leaves nothing behind.
    let dry_run: Vec<&str> = create.iter().copied().chain(["--dry-run"]).collect();
    let (code, output) = scaler(&env, &dry_run);
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("Preflight: 0 error(s)"), "{output}");
    assert!(output.contains("Planning stack gpu-fleet"), "{output}");
    assert!(
        output.contains("AgentLaunchTemplate (AWS::EC2::LaunchTemplate)"),
        "{output}"
    );
    assert!(output.contains("Dry run: nothing was changed."), "{output}");
    let (code, output) = scaler(&env, &["status", "--stack", "gpu-fleet"]);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("stack gpu-fleet does not exist"),
        "{output}"
    );

    let (code, output) = scaler(&env, &create);
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("Creating stack gpu-fleet"), "{output}");
    assert!(output.contains("CREATE_COMPLETE"), "{output}");
    assert!(output.contains("AgentGroupNames"), "{output}");
    // The preflight alone, for the stack as deployed: its parameters fill in those not given.
    let (code, alone) = scaler(
        &env,
        &[
            "preflight",
            "--stack",
            "gpu-fleet",
            "--parameters",
            "MaxSize=7",
        ],
    );
    assert_eq!(code, 0, "{alone}");
    assert!(
        alone.contains("Preflight: 7 × g6.xlarge,g5.xlarge in us-east-1"),
        "{alone}"
    );
    assert!(
        alone.contains(&format!("image {image} has no flotilla:agent-version tag")),
        "{alone}"
    );

    // The token went to SSM as a SecureString; the agents' config names it.
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    let token = runtime
        .block_on(
            ssm.get_parameter()
                .name("/flotilla/gpu-fleet/agent-token")
                .with_decryption(true)
                .send(),
        )
        .unwrap();
    let token = token.parameter().unwrap();
    assert_eq!(token.value(), Some("registration-token-123"));
    assert_eq!(token.r#type().map(|t| t.as_str()), Some("SecureString"));
    let agent_config = runtime
        .block_on(
            ssm.get_parameter()
                .name("/flotilla/gpu-fleet/agent-config")
                .send(),
        )
        .unwrap();
    let agent_config = agent_config
        .parameter()
        .unwrap()
        .value()
        .unwrap()
        .to_string();
    assert!(
        agent_config.contains("endpoint: example.semaphoreci.com"),
        "{agent_config}"
    );
    assert!(
        agent_config.contains("token-ssm-parameter: /flotilla/gpu-fleet/agent-token"),
        "{agent_config}"
    );
    for line in [
        "job-ecr-repositories: 'team/app base'",
        "keep-failed-instance-minutes: 30",
    ] {
        assert!(
            agent_config.contains(line),
            "{line} not in:\n{agent_config}"
        );
    }

    // The groups: the GPU types as overrides, max as given, scale-in protection.
    let autoscaling = aws_sdk_autoscaling::Client::new(&sdk);
    let cloudformation = aws_sdk_cloudformation::Client::new(&sdk);
    let outputs = runtime
        .block_on(
            cloudformation
                .describe_stacks()
                .stack_name("gpu-fleet")
                .send(),
        )
        .unwrap();
    let outputs: Vec<(String, String)> = outputs.stacks()[0]
        .outputs()
        .iter()
        .map(|o| {
            (
                o.output_key().unwrap_or_default().to_string(),
                o.output_value().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let output_value = |key: &str| {
        outputs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no output {key}: {outputs:?}"))
    };
    let groups: Vec<String> = output_value("AgentGroupNames")
        .split(',')
        .map(str::to_string)
        .collect();
    assert_eq!(
        groups.len(),
        2,
        "primary and on-demand fallback: {groups:?}"
    );
    let described = runtime
        .block_on(
            autoscaling
                .describe_auto_scaling_groups()
                .auto_scaling_group_names(&groups[0])
                .send(),
        )
        .unwrap();
    let primary = &described.auto_scaling_groups()[0];
    assert_eq!(primary.max_size(), Some(6));
    assert_eq!(primary.new_instances_protected_from_scale_in(), Some(true));
    let overrides = instance_type_overrides(primary);
    assert_eq!(overrides, vec!["g6.xlarge", "g5.xlarge"]);
    // The launch template requires IMDSv2.
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let template_id = primary
        .mixed_instances_policy()
        .and_then(|p| p.launch_template())
        .and_then(|t| t.launch_template_specification())
        .and_then(|s| s.launch_template_id().map(str::to_string))
        .expect("a launch template id");
    let versions = runtime
        .block_on(
            ec2.describe_launch_template_versions()
                .launch_template_id(&template_id)
                .send(),
        )
        .unwrap();
    let data = versions.launch_template_versions()[0]
        .launch_template_data()
        .unwrap();
    assert_eq!(
        data.metadata_options()
            .and_then(|m| m.http_tokens())
            .map(|t| t.as_str()),
        Some("required")
    );
    // IMDS answers never reach a container by default.
    assert_eq!(
        data.metadata_options()
            .and_then(|m| m.http_put_response_hop_limit()),
        Some(1)
    );
    // The roles exist.
    let iam_role = output_value("InstanceRoleArn");
    assert!(iam_role.starts_with("arn:aws:iam::"), "{iam_role}");
    // The stack made its key, and the token is under it; the job settings are off.
    let key = output_value("KmsKeyArn");
    assert!(key.starts_with("arn:aws:kms:us-east-1:"), "{key}");
    let resources = runtime
        .block_on(
            cloudformation
                .describe_stack_resource()
                .stack_name("gpu-fleet")
                .logical_resource_id("KmsKey")
                .send(),
        )
        .unwrap();
    let key_id = resources
        .stack_resource_detail()
        .and_then(|r| r.physical_resource_id())
        .unwrap()
        .to_string();
    assert!(key.ends_with(&format!(":key/{key_id}")), "{key} / {key_id}");
    assert!(
        output.contains(&format!(
            "Stored the registration token as SecureString /flotilla/gpu-fleet/agent-token under {key}"
        )),
        "{output}"
    );
    assert_eq!(
        parameter_key(&runtime, &ssm, "/flotilla/gpu-fleet/agent-token"),
        key
    );
    for name in ["job-sudo", "job-docker"] {
        let setting = runtime
            .block_on(
                ssm.get_parameter()
                    .name(format!("/flotilla/gpu-fleet/{name}"))
                    .send(),
            )
            .unwrap();
        assert_eq!(
            setting.parameter().unwrap().value(),
            Some("false"),
            "{name}"
        );
    }

    // A token a deploy from before the stack had a key stored (under the account's default
    // key) moves under the stack's key on the next deploy, value unchanged.
    runtime
        .block_on(
            ssm.put_parameter()
                .name("/flotilla/gpu-fleet/agent-token")
                .value("registration-token-123")
                .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
                .key_id("alias/aws/ssm")
                .overwrite(true)
                .send(),
        )
        .unwrap();

    // An update with a changed parameter, the queue moved to a plain-HTTP one (which clears
    // QueueEndpoint), and the agent role's credentials kept to the VPC's endpoints (issue 27).
    let update = [
        "deploy",
        "--stack",
        "gpu-fleet",
        "--existing-token",
        "--parameters",
        "MaxSize=8",
        "PlainHttpQueueEndpoint=http://hub.internal:8080",
        "RequireVpcEndpoints=true",
    ];
    let (code, output) = scaler(&env, &update);
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("Updating stack gpu-fleet"), "{output}");
    assert!(output.contains("UPDATE_COMPLETE"), "{output}");
    assert_eq!(
        parameter_key(&runtime, &ssm, "/flotilla/gpu-fleet/agent-token"),
        key
    );
    let token = runtime
        .block_on(
            ssm.get_parameter()
                .name("/flotilla/gpu-fleet/agent-token")
                .with_decryption(true)
                .send(),
        )
        .unwrap();
    assert_eq!(
        token.parameter().unwrap().value(),
        Some("registration-token-123")
    );
    let parameters = runtime
        .block_on(
            cloudformation
                .describe_stacks()
                .stack_name("gpu-fleet")
                .send(),
        )
        .unwrap();
    let stack = &parameters.stacks()[0];
    let max_size = stack
        .parameters()
        .iter()
        .find(|p| p.parameter_key() == Some("MaxSize"))
        .and_then(|p| p.parameter_value().map(str::to_string));
    assert_eq!(max_size.as_deref(), Some("8"));
    // What was not given kept its value (moto reports lists as Python lists; AWS as a,b; moto
    // re-creates groups under new names on update and keeps stale outputs, so the parameters are
    // what can be asserted here).
    let types = stack
        .parameters()
        .iter()
        .find(|p| p.parameter_key() == Some("InstanceTypes"))
        .and_then(|p| p.parameter_value().map(list_items));
    assert_eq!(types.as_deref(), Some("g6.xlarge,g5.xlarge"));
    let image = stack
        .parameters()
        .iter()
        .find(|p| p.parameter_key() == Some("ImageId"))
        .and_then(|p| p.parameter_value().map(str::to_string));
    assert_eq!(
        image.as_deref(),
        Some(image_parameter.trim_start_matches("ImageId="))
    );
    let value = |key: &str| {
        stack
            .parameters()
            .iter()
            .find(|p| p.parameter_key() == Some(key))
            .and_then(|p| p.parameter_value().map(str::to_string))
    };
    assert_eq!(value("QueueEndpoint").as_deref(), Some(""));
    assert_eq!(
        value("PlainHttpQueueEndpoint").as_deref(),
        Some("http://hub.internal:8080")
    );
    let denies = runtime
        .block_on(
            cloudformation
                .describe_stack_resource()
                .stack_name("gpu-fleet")
                .logical_resource_id("AgentVpcEndpointPolicy")
                .send(),
        )
        .unwrap();
    assert!(denies.stack_resource_detail().is_some(), "{denies:?}");

    // The same again: nothing to do, and it says so.
    let (code, output) = scaler(&env, &update);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("No changes: stack gpu-fleet is up to date."),
        "{output}"
    );
    assert!(!output.contains("Updating"), "{output}");
    assert!(
        !output.contains("Stored the registration token"),
        "{output}"
    );

    let (code, output) = scaler(&env, &["status", "--stack", "gpu-fleet"]);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("Stack gpu-fleet: UPDATE_COMPLETE"),
        "{output}"
    );
    // The quota check runs for the deployed fleet (moto has no EC2 quotas: it says so).
    assert!(output.contains("vCPU quotas at MaxSize:"), "{output}");
    let quota_line = |l: &str| {
        let l = l.trim_start();
        ["ok ", "warning ", "error "]
            .iter()
            .any(|label| l.starts_with(label))
            && l.split_whitespace().nth(1) == Some("quotas")
    };
    assert!(output.lines().any(quota_line), "{output}");
    assert!(
        output.contains("Fleet (pools in priority order):"),
        "{output}"
    );
    assert!(
        output.contains("Queue (http://hub.internal:8080)"),
        "{output}"
    );

    let (code, output) = scaler(&env, &["destroy", "--stack", "gpu-fleet"]);
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("Stack gpu-fleet deleted."), "{output}");
    let (code, output) = scaler(&env, &["status", "--stack", "gpu-fleet"]);
    assert_eq!(code, 1);
    assert!(
        output.contains("stack gpu-fleet does not exist"),
        "{output}"
    );
    assert!(runtime
        .block_on(
            ssm.get_parameter()
                .name("/flotilla/gpu-fleet/agent-token")
                .send()
        )
        .is_err());
}

#[test]
fn bad_input_is_refused_before_any_aws_call() {
    // Nothing listens here: an AWS call would fail with a connection error instead.
    let env = vec![
        (
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", testkit::free_port()),
        ),
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t\n").unwrap();
    let token = token_file.display().to_string();
    let base = [
        "deploy",
        "--stack",
        "gpu-fleet",
        "--token-file",
        &token,
        "--parameters",
        "QueueEndpoint=https://org.semaphoreci.com",
        "ImageId=ami-12345678",
    ];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["Colour=blue"], "unknown parameter 'Colour'"),
        (
            vec!["InstanceTypes=g6.xlarge,big-gpu"],
            "'big-gpu' is not an instance type",
        ),
        (
            vec!["MinSize=4", "MaxSize=2"],
            "MinSize (4) is greater than MaxSize (2)",
        ),
        (
            vec!["PlainHttpQueueEndpoint=http://hub.internal:8080"],
            "QueueEndpoint and PlainHttpQueueEndpoint are both set",
        ),
    ];
    for (extra, expected) in cases {
        let args: Vec<&str> = base.iter().copied().chain(extra).collect();
        let (code, output) = scaler(&env, &args);
        assert_eq!(code, 1, "{output}");
        assert!(output.contains(expected), "{expected}: {output}");
        assert!(
            !output.contains("dispatch failure") && !output.contains("onnection"),
            "{output}"
        );
    }
    let (code, output) = scaler(
        &env,
        &[
            "deploy",
            "--stack",
            "gpu-fleet",
            "--parameters",
            "QueueEndpoint=https://org.semaphoreci.com",
        ],
    );
    assert_eq!(code, 1);
    assert!(output.contains("no registration token"), "{output}");
    // A plain-HTTP queue only under its own name, and the message says which (issue 27).
    let (code, output) = scaler(
        &env,
        &[
            "deploy",
            "--stack",
            "gpu-fleet",
            "--token-file",
            &token,
            "--parameters",
            "QueueEndpoint=http://hub.internal:8080",
        ],
    );
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("PlainHttpQueueEndpoint=http://hub.internal:8080"),
        "{output}"
    );
    let (code, output) = scaler(
        &env,
        &["deploy", "--stack", "gpu_fleet", "--token-file", &token],
    );
    assert_eq!(code, 1);
    assert!(output.contains("not a valid stack name"), "{output}");
}
