//! Terraform against moto for the infra tests (`terraform_e2e.rs` for the fleet module,
//! `hub_stack_e2e.rs` for the hub's): a copy of a module and one of its examples in a temporary
//! directory, run with the machine's AWS provider (`-plugin-dir`, no registry) and moto's
//! endpoints, no update checks or CLI configuration. A failing command fails the test with
//! everything Terraform said.

use crate::moto::{MotoServer, REGION};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where this machine kind keeps the AWS provider (`.ci/run` checks it is there).
pub const PLUGIN_DIR: &str = "/opt/tf-plugins";

pub struct Terraform {
    /// The copy of the module.
    pub module: PathBuf,
    /// The copy of its example, beside it as in the repository.
    pub example: PathBuf,
    env: Vec<(&'static str, String)>,
}

impl Terraform {
    /// `terraform init` with the machine's provider, then `validate`, in `dir`.
    pub fn init_and_validate(&self, dir: &Path) {
        let plugins = format!("-plugin-dir={PLUGIN_DIR}");
        self.run_in(dir, &["init", "-input=false", "-no-color", &plugins]);
        let validated = self.run_in(dir, &["validate", "-no-color"]);
        assert!(
            validated.contains("The configuration is valid"),
            "{validated}"
        );
    }

    /// `terraform apply` of the example.
    pub fn apply(&self) {
        self.run(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    }

    /// `terraform destroy` of the example.
    pub fn destroy(&self) {
        self.run(&["destroy", "-auto-approve", "-input=false", "-no-color"]);
    }

    /// Copies `infra/<module>` and its `examples/<example>` under `root`.
    pub fn new(root: &Path, moto: &MotoServer, module: &str, example: &str) -> Terraform {
        assert!(
            Path::new(PLUGIN_DIR).is_dir(),
            "{PLUGIN_DIR} (the hashicorp/aws provider, laid out for `terraform init -plugin-dir`) is missing on this machine"
        );
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../infra")
            .join(module);
        let copy = root.join(module);
        copy_tf_files(&source, &copy);
        let example = Path::new("examples").join(example);
        copy_tf_files(&source.join(&example), &copy.join(&example));
        let mut env = moto.env();
        env.extend([
            ("AWS_DEFAULT_REGION", REGION.to_string()),
            ("TF_CLI_CONFIG_FILE", "/dev/null".to_string()),
            ("CHECKPOINT_DISABLE", "1".to_string()),
            ("TF_IN_AUTOMATION", "1".to_string()),
        ]);
        Terraform {
            example: copy.join(example),
            module: copy,
            env,
        }
    }

    /// Runs terraform in the example.
    pub fn run(&self, args: &[&str]) -> String {
        self.run_in(&self.example, args)
    }

    /// Runs terraform in `dir`; its stdout, or the test fails with everything it said.
    pub fn run_in(&self, dir: &Path, args: &[&str]) -> String {
        let output = self.output_in(dir, args);
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success(),
            "terraform {args:?} in {} failed:\n{stdout}\n{}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// Runs terraform in the example, which must fail (an input the module refuses): everything
    /// it said, its diagnostics' frames dropped and its lines joined (Terraform wraps messages),
    /// so a test can look for a sentence.
    pub fn refused(&self, args: &[&str]) -> String {
        let output = self.output_in(&self.example, args);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !output.status.success(),
            "terraform {args:?} succeeded:\n{said}"
        );
        said.replace('│', " ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn output_in(&self, dir: &Path, args: &[&str]) -> std::process::Output {
        let mut command = Command::new("terraform");
        command.arg(format!("-chdir={}", dir.display())).args(args);
        command.envs(self.env.iter().map(|(name, value)| (*name, value)));
        command.output().unwrap_or_else(|e| {
            panic!("cannot run terraform ({e}): https://developer.hashicorp.com/terraform/install")
        })
    }
}

/// The `.tf` files of `from` (not its subdirectories) into `to`.
fn copy_tf_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "tf") {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}
