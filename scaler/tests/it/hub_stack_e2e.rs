//! The hub stack against moto server, as far as moto goes (docs/testing.md, "The hub stack").
//! `scaler deploy --template hub` sends the embedded hub.yaml to moto's CloudFormation, which
//! refuses it (it has no `MasterUserSecret.SecretArn` attribute for a DB instance, and creates no
//! Secrets Manager secret or security group egress rule from a template): the test holds the
//! scaler to a clean failure there — no token asked for, no stack left — so the day moto takes the
//! template, this test fails and asks to be extended. Terraform calls the APIs themselves, which
//! moto serves: `infra/terraform-hub/examples/hub` is applied to moto and what moto then holds is
//! checked (the PostgreSQL instance Multi-AZ, encrypted, its password managed in Secrets Manager
//! under the module's key, TLS forced; the load balancer's HTTPS listener and policy, the target
//! group's health check; the group's sizes and IMDSv2; the secrets; the hub-config the image
//! reads), then destroyed, leaving the database's final snapshot. The image's
//! `flotilla-hub-boot` is run with a stand-in AWS CLI to show what it writes from those secrets.

use testkit::moto;
use testkit::terraform;

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use terraform::{Terraform, PLUGIN_DIR};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

use testkit::runtime;

/// Runs the scaler with `env`; (exit code, stdout + stderr).
fn scaler(env: &[(&'static str, String)], args: &[&str]) -> (i32, String) {
    testkit::hub_process::scaler_with_env(env, args)
}

/// One call of an AWS API on moto without an SDK client of its own here (RDS, ELBv2: query
/// protocol; Secrets Manager, ACM: JSON protocol with `target`). moto tells the service by the
/// credential scope of the Authorization header and checks no signature.
fn call(moto: &moto::MotoServer, service: &str, target: Option<&str>, body: String) -> String {
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential=testing/20260101/{}/{service}/aws4_request, SignedHeaders=host, Signature=0",
        moto::REGION
    );
    let mut request = reqwest::blocking::Client::new()
        .post(&moto.url)
        .header("Authorization", authorization);
    request = match target {
        Some(target) => request
            .header("X-Amz-Target", target)
            .header("Content-Type", "application/x-amz-json-1.1"),
        None => request.header("Content-Type", "application/x-www-form-urlencoded"),
    };
    let response = request.body(body).send().unwrap();
    let status = response.status();
    let text = response.text().unwrap();
    assert!(
        status.is_success(),
        "{service} {target:?}: {status}\n{text}"
    );
    text
}

fn query(moto: &moto::MotoServer, service: &str, version: &str, action: &str) -> String {
    call(
        moto,
        service,
        None,
        format!("Action={action}&Version={version}"),
    )
}

fn json_call(moto: &moto::MotoServer, service: &str, target: &str, body: Value) -> Value {
    serde_json::from_str(&call(moto, service, Some(target), body.to_string())).unwrap()
}

/// The first subnets, the first image and the default VPC of moto's region.
fn network(
    runtime: &tokio::runtime::Runtime,
    moto: &moto::MotoServer,
) -> (String, Vec<String>, String) {
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk(runtime));
    let vpcs = runtime.block_on(ec2.describe_vpcs().send()).unwrap();
    let vpc = vpcs.vpcs()[0].vpc_id().unwrap().to_string();
    let subnets = runtime.block_on(ec2.describe_subnets().send()).unwrap();
    let subnets = subnets.subnets()[..2]
        .iter()
        .map(|s| s.subnet_id().unwrap().to_string())
        .collect();
    let images = runtime.block_on(ec2.describe_images().send()).unwrap();
    let image = images.images()[0].image_id().unwrap().to_string();
    (vpc, subnets, image)
}

#[test]
fn scaler_deploy_template_hub_asks_no_token_and_fails_cleanly_where_moto_stops() {
    // Checked before any AWS call: the endpoint is a closed port.
    let closed = vec![
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ("FLOTILLA_TEST_TOKEN", "a-token".to_string()),
    ];
    let base = ["deploy", "--stack", "ci-hub", "--template", "hub"];
    let (code, output) = scaler(
        &closed,
        &[&base[..], &["--token-env", "FLOTILLA_TEST_TOKEN"]].concat(),
    );
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("makes its own registration token"),
        "{output}"
    );
    let (code, output) = scaler(
        &closed,
        &[&base[..], &["--parameters", "HubInstances=0"]].concat(),
    );
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("outside 1..10"), "{output}");

    let runtime = runtime();
    let moto = moto::MotoServer::start();
    let (vpc, subnets, image) = network(&runtime, &moto);
    let parameters = [
        format!("VpcId={vpc}"),
        format!("SubnetIds={}", subnets.join(",")),
        format!("LoadBalancerSubnetIds={}", subnets.join(",")),
        "AllowedCidr=10.0.0.0/16".to_string(),
        "CertificateArn=arn:aws:acm:us-east-1:123456789012:certificate/abc-123".to_string(),
        format!("ImageId={image}"),
        "DatabaseDeletionProtection=false".to_string(),
    ];
    let mut args: Vec<&str> = base.to_vec();
    args.push("--parameters");
    args.extend(parameters.iter().map(String::as_str));
    let (code, output) = scaler(&moto.env(), &args);
    // moto's CloudFormation has no MasterUserSecret.SecretArn attribute for AWS::RDS::DBInstance.
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("creating stack ci-hub"), "{output}");
    assert!(output.contains("MasterUserSecret.SecretArn"), "{output}");
    assert!(!output.to_lowercase().contains("token"), "{output}");
    let cloudformation = aws_sdk_cloudformation::Client::new(&moto.sdk(&runtime));
    let described = runtime.block_on(cloudformation.describe_stacks().stack_name("ci-hub").send());
    assert!(described.is_err(), "a stack was left: {described:?}");
}

#[test]
fn terraform_applies_the_hub_example_to_moto_and_destroys_it() {
    let runtime = runtime();
    let moto = moto::MotoServer::start();
    let (vpc, subnets, image) = network(&runtime, &moto);
    // The listener needs a certificate ACM knows.
    let certificate = json_call(
        &moto,
        "acm",
        "CertificateManager.RequestCertificate",
        serde_json::json!({"DomainName": "hub.example.com"}),
    )["CertificateArn"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let terraform = Terraform::new(dir.path(), &moto, "terraform-hub", "hub");
    // Deletion protection would (rightly) stop the destroy: off, as docs/hub-stack.md says.
    std::fs::write(
        terraform.example.join("test_override.tf"),
        "module \"hub\" {\n  database_deletion_protection = false\n}\n",
    )
    .unwrap();
    let plugins = format!("-plugin-dir={PLUGIN_DIR}");
    terraform.run(&["init", "-input=false", "-no-color", &plugins]);
    let variables = [
        format!("vpc_id={vpc}"),
        format!("private_subnet_ids={}", serde_json::json!(subnets)),
        format!("image_id={image}"),
        format!("certificate_arn={certificate}"),
    ];
    let mut apply = vec!["apply", "-auto-approve", "-input=false", "-no-color"];
    for variable in &variables {
        apply.extend(["-var", variable.as_str()]);
    }
    terraform.run(&apply);
    let outputs: Value = serde_json::from_str(&terraform.run(&["output", "-json"])).unwrap();
    assert_eq!(
        outputs["queue_endpoint"]["value"],
        "https://hub.example.com"
    );
    check_database(&moto);
    check_load_balancer(&moto, &certificate);
    check_instances(&runtime, &moto);
    check_secrets_and_config(&runtime, &moto, &outputs);

    let mut destroy = apply.clone();
    destroy[0] = "destroy";
    terraform.run(&destroy);
    check_gone(&runtime, &moto);
}

fn check_database(moto: &moto::MotoServer) {
    let instances = query(moto, "rds", "2014-10-31", "DescribeDBInstances");
    for expected in [
        "<Engine>postgres</Engine>",
        "<MultiAZ>true</MultiAZ>",
        "<StorageEncrypted>true</StorageEncrypted>",
        "<PubliclyAccessible>false</PubliclyAccessible>",
        "<DBName>flotilla</DBName>",
        "<MasterUserSecret>",
        "<BackupRetentionPeriod>7</BackupRetentionPeriod>",
    ] {
        assert!(instances.contains(expected), "{expected} in {instances}");
    }
    let key = between(&instances, "<KmsKeyId>", "</KmsKeyId>");
    assert!(key.contains(":key/"), "{instances}");
    let group = between(
        &instances,
        "<DBParameterGroupName>",
        "</DBParameterGroupName>",
    );
    let body = format!(
        "Action=DescribeDBParameters&Version=2014-10-31&DBParameterGroupName={group}&Source=user"
    );
    let parameters = call(moto, "rds", None, body);
    let force_ssl = parameters
        .split("<Parameter>")
        .find(|p| p.contains("<ParameterName>rds.force_ssl</ParameterName>"))
        .unwrap_or_else(|| panic!("no rds.force_ssl in {parameters}"));
    assert!(
        force_ssl.contains("<ParameterValue>1</ParameterValue>"),
        "{force_ssl}"
    );
}

fn check_load_balancer(moto: &moto::MotoServer, certificate: &str) {
    let version = "2015-12-01";
    let balancers = query(
        moto,
        "elasticloadbalancing",
        version,
        "DescribeLoadBalancers",
    );
    assert!(
        balancers.contains("<Scheme>internal</Scheme>"),
        "{balancers}"
    );
    assert!(
        balancers.contains("<Type>application</Type>"),
        "{balancers}"
    );
    let arn = between(&balancers, "<LoadBalancerArn>", "</LoadBalancerArn>");
    let body = format!("Action=DescribeListeners&Version={version}&LoadBalancerArn={arn}");
    let listeners = call(moto, "elasticloadbalancing", None, body);
    assert_eq!(listeners.matches("<ListenerArn>").count(), 1, "{listeners}");
    for expected in [
        "<Protocol>HTTPS</Protocol>",
        "<Port>443</Port>",
        "<SslPolicy>ELBSecurityPolicy-TLS13-1-2-2021-06</SslPolicy>",
        certificate,
    ] {
        assert!(listeners.contains(expected), "{expected} in {listeners}");
    }
    let groups = query(
        moto,
        "elasticloadbalancing",
        version,
        "DescribeTargetGroups",
    );
    for expected in [
        "<Port>8080</Port>",
        "<HealthCheckPath>/healthz</HealthCheckPath>",
    ] {
        assert!(groups.contains(expected), "{expected} in {groups}");
    }
}

fn check_instances(runtime: &tokio::runtime::Runtime, moto: &moto::MotoServer) {
    let (desired, instances, _) = moto.group(runtime, "flotilla-ci-hub-hub");
    assert_eq!((desired, instances.len()), (2, 2));
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk(runtime));
    let all = runtime
        .block_on(ec2.describe_launch_templates().send())
        .unwrap();
    assert_eq!(all.launch_templates().len(), 1);
    let id = all.launch_templates()[0].launch_template_id().unwrap();
    let request = ec2
        .describe_launch_template_versions()
        .launch_template_id(id);
    let versions = runtime.block_on(request.send()).unwrap();
    let versions = versions.launch_template_versions();
    let data = versions[0].launch_template_data().unwrap();
    let metadata = data.metadata_options().unwrap();
    assert_eq!(metadata.http_tokens().map(|t| t.as_str()), Some("required"));
    assert_eq!(metadata.http_put_response_hop_limit(), Some(1));
    // base64 of the one line FLOTILLA_HUB_CONFIG_PARAMETER=/flotilla/ci-hub/hub-config
    let line = "RkxPVElMTEFfSFVCX0NPTkZJR19QQVJBTUVURVI9L2Zsb3RpbGxhL2NpLWh1Yi9odWItY29uZmln";
    assert_eq!(data.user_data(), Some(line));
}

fn check_secrets_and_config(
    runtime: &tokio::runtime::Runtime,
    moto: &moto::MotoServer,
    outputs: &Value,
) {
    let listed = json_call(
        moto,
        "secretsmanager",
        "secretsmanager.ListSecrets",
        serde_json::json!({}),
    );
    let names: Vec<&str> = listed["SecretList"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["Name"].as_str())
        .collect();
    for name in [
        "/flotilla/ci-hub/admin-token",
        "/flotilla/ci-hub/registration-token",
    ] {
        assert!(names.contains(&name), "{names:?}");
    }
    let mut values = Vec::new();
    for output in ["admin_token_secret_arn", "registration_token_secret_arn"] {
        let arn = outputs[output]["value"].as_str().unwrap();
        let target = "secretsmanager.GetSecretValue";
        let secret = json_call(
            moto,
            "secretsmanager",
            target,
            serde_json::json!({"SecretId": arn}),
        );
        let value = secret["SecretString"].as_str().unwrap().to_string();
        assert!(
            value.len() == 48 && value.chars().all(|c| c.is_ascii_alphanumeric()),
            "{output}"
        );
        values.push(value);
    }
    let ssm = aws_sdk_ssm::Client::new(&moto.sdk(runtime));
    let request = ssm.get_parameter().name("/flotilla/ci-hub/hub-config");
    let config = runtime.block_on(request.send()).unwrap();
    let text = config.parameter().unwrap().value().unwrap().to_string();
    assert!(
        text.contains("public_url=https://hub.example.com\n"),
        "{text}"
    );
    assert!(
        text.contains("database_secret_arn=arn:aws:secretsmanager:"),
        "{text}"
    );
    assert!(
        values.iter().all(|v| !text.contains(v.as_str())),
        "a secret in {text}"
    );
    // The default type's rule: this account's and region's instances, by default.
    assert!(
        text.contains(
            "require_instance_identity=true\nagent_accounts=123456789012\nagent_regions=us-east-1"
        ),
        "{text}"
    );
}

#[test]
fn the_hub_boot_script_states_the_default_types_registration_rule() {
    let dir = tempfile::tempdir().unwrap();
    let database = r#"{"username": "flotilla", "password": "secret-password"}"#;
    let rule = "require_instance_identity=true\nagent_accounts=123456789012,210987654321\n\
                agent_regions=eu-west-1\n";
    let (code, stderr, env) = hub_boot(dir.path(), &hub_config(rule), database);
    assert_eq!(code, 0, "{stderr}");
    let env = env.expect("hub.env");
    for line in [
        "FLOTILLA_REQUIRE_INSTANCE_IDENTITY=true",
        "FLOTILLA_ALLOWED_ACCOUNTS=123456789012,210987654321",
        "FLOTILLA_ALLOWED_REGIONS=eu-west-1",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} in:\n{env}");
    }
    // Turned off, or a parameter written before the rule existed: no rule lines.
    for config in [
        hub_config("require_instance_identity=false\nagent_accounts=123456789012\n"),
        hub_config(""),
    ] {
        let (code, stderr, env) = hub_boot(dir.path(), &config, database);
        assert_eq!(code, 0, "{stderr}");
        assert!(!env
            .expect("hub.env")
            .contains("FLOTILLA_REQUIRE_INSTANCE_IDENTITY"));
    }
}

fn check_gone(runtime: &tokio::runtime::Runtime, moto: &moto::MotoServer) {
    let instances = query(moto, "rds", "2014-10-31", "DescribeDBInstances");
    assert!(!instances.contains("<DBInstance>"), "{instances}");
    let snapshots = query(moto, "rds", "2014-10-31", "DescribeDBSnapshots");
    assert!(
        snapshots.contains("flotilla-ci-hub-final"),
        "no final snapshot: {snapshots}"
    );
    let balancers = query(
        moto,
        "elasticloadbalancing",
        "2015-12-01",
        "DescribeLoadBalancers",
    );
    assert!(!balancers.contains("<LoadBalancerArn>"), "{balancers}");
    let autoscaling = aws_sdk_autoscaling::Client::new(&moto.sdk(runtime));
    let groups = runtime
        .block_on(autoscaling.describe_auto_scaling_groups().send())
        .unwrap();
    assert!(groups.auto_scaling_groups().is_empty());
}

/// The text between the first `start` and the next `end`.
fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("no {start} in {text}"))
        + start.len();
    &text[from..from + text[from..].find(end).unwrap()]
}

/// A stand-in AWS CLI for `flotilla-hub-boot`: answers `ssm get-parameter` with `config` and
/// `secretsmanager get-secret-value --secret-id ARN` with the file named after the ARN's tail.
fn fake_aws_cli(dir: &Path, config: &str, secrets: &[(&str, &str)]) -> PathBuf {
    std::fs::write(dir.join("config"), config).unwrap();
    for (name, value) in secrets {
        std::fs::write(dir.join(name), value).unwrap();
    }
    let script = dir.join("aws");
    let body = format!(
        "#!/usr/bin/env bash\nset -eu\necho \"$*\" >>{log}\ncase \"$*\" in\n\
         *'ssm get-parameter'*) cat {dir}/config ;;\n\
         *'secretsmanager get-secret-value'*) all=\"$*\"; id=\"${{all##*--secret-id }}\"; id=\"${{id%% *}}\"; cat \"{dir}/${{id##*:}}\" ;;\n\
         *) exit 2 ;;\nesac\n",
        log = dir.join("calls").display(),
        dir = dir.display()
    );
    std::fs::write(&script, body).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

const ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:";

fn hub_config(extra: &str) -> String {
    format!(
        "public_url=https://hub.example.com\ndatabase_host=db.example.internal\ndatabase_port=5432\n\
         database_name=flotilla\ndatabase_secret_arn={ARN}database\nadmin_token_secret_arn={ARN}admin\n\
         registration_token_secret_arn={ARN}registration\n{extra}"
    )
}

/// Runs the boot script; (exit code, stderr, hub.env if written).
fn hub_boot(dir: &Path, config: &str, database: &str) -> (i32, String, Option<String>) {
    let secrets = [
        ("admin", "AdminToken0123456789abcdefXYZ"),
        ("registration", "RegistrationToken0123456789xyz"),
        ("database", database),
    ];
    let aws = fake_aws_cli(dir, config, &secrets);
    let ca = dir.join("rds-ca.pem");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
    let run_dir = dir.join("run");
    let _ = std::fs::remove_file(run_dir.join("hub.env"));
    let output = Command::new(repo().join("ami/scripts/flotilla-hub-boot"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env(
            "FLOTILLA_HUB_CONFIG_PARAMETER",
            "/flotilla/ci-hub/hub-config",
        )
        .env("AWS_REGION", "us-east-1")
        .env("FLOTILLA_RUN_DIR", &run_dir)
        .env("FLOTILLA_AWS_CLI", &aws)
        .env("FLOTILLA_DATABASE_CA", &ca)
        .output()
        .expect("run flotilla-hub-boot (needs bash and jq)");
    let env = std::fs::read_to_string(run_dir.join("hub.env")).ok();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    (output.status.code().unwrap_or(-1), stderr, env)
}

#[test]
fn the_hub_boot_script_writes_the_secrets_only_into_a_root_only_env_file() {
    let dir = tempfile::tempdir().unwrap();
    let database = r#"{"username": "flotilla", "password": "p@ss/w:rd%&?#= x"}"#;
    let (code, stderr, env) = hub_boot(dir.path(), &hub_config(""), database);
    assert_eq!(code, 0, "{stderr}");
    let env = env.expect("hub.env");
    for line in [
        "FLOTILLA_HUB_LISTEN=0.0.0.0:8080",
        "FLOTILLA_PLAIN_HTTP_BEHIND_PROXY=true",
        "FLOTILLA_KEEP_ALIVE_TIMEOUT=130",
        "FLOTILLA_PUBLIC_URL=https://hub.example.com",
        "FLOTILLA_DATABASE_URL=postgres://flotilla:p%40ss%2Fw%3Ard%25%26%3F%23%3D%20x@db.example.internal:5432/flotilla?sslmode=require",
        "FLOTILLA_ADMIN_TOKEN=AdminToken0123456789abcdefXYZ",
        "FLOTILLA_REGISTRATION_TOKEN=RegistrationToken0123456789xyz",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} in:\n{env}");
    }
    let mode = std::fs::metadata(dir.path().join("run/hub.env"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // No secret in its log or in the AWS CLI's arguments.
    let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
    for secret in ["AdminToken", "RegistrationToken", "p@ss"] {
        assert!(
            !stderr.contains(secret) && !calls.contains(secret),
            "{secret}"
        );
    }
    // (scenario, config, database secret, what the error says)
    let rows = [
        (
            "an unknown key",
            hub_config("shell=$(reboot)\n"),
            database,
            "unknown line",
        ),
        (
            "a missing key",
            hub_config("").replace("database_port=5432\n", ""),
            database,
            "no database_port",
        ),
        (
            "an http URL",
            hub_config("").replace("https://hub", "http://hub"),
            database,
            "public_url is not valid",
        ),
        (
            "no password",
            hub_config(""),
            r#"{"username": "flotilla"}"#,
            "no username or password",
        ),
        (
            "identity without accounts",
            hub_config("require_instance_identity=true\n"),
            database,
            "names no agent_accounts",
        ),
        (
            "an account that is no account id",
            hub_config("require_instance_identity=true\nagent_accounts=12345,x\n"),
            database,
            "agent_accounts is not valid",
        ),
    ];
    for (scenario, config, database, expected) in rows {
        let (code, stderr, env) = hub_boot(dir.path(), &config, database);
        assert_eq!(code, 1, "{scenario}: {stderr}");
        assert!(stderr.contains(expected), "{scenario}: {stderr}");
        assert!(env.is_none(), "{scenario}: hub.env was written");
    }
}
