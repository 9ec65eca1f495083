//! `scaler preflight --stack NAME --parameters …`, and the same checks at the start of every
//! fleet `scaler deploy` (`--dry-run` included), before anything is created or changed: the
//! problems that otherwise show up only when the first GPU job waits for an instance that never
//! comes — a vCPU quota below what MaxSize needs, a type no zone of the subnets offers, spot
//! capacity unlikely, an image of the wrong architecture or without the GPU driver, a private
//! subnet with no way out — each said in one line with what to do. Errors stop `deploy` (unless
//! `--ignore-preflight`); warnings do not. The checks are pure ([`checks`]), the reading sits
//! behind a trait ([`gather::Reader`], the AWS one in `aws/preflight.rs`).

pub(crate) mod checks;
pub(crate) mod gather;
#[cfg(test)]
mod tests;

use super::deploy::{normalize_list_value, parse_parameters, StackArgs, Template, TemplateKind};
use crate::aws::preflight::AwsReader;
use crate::aws::stacks::Stacks;
use anyhow::{bail, Result};
use checks::{has_errors, Finding, Inputs, Severity};
use gather::Reader;
use std::collections::BTreeMap;

#[derive(clap::Args, Clone, Debug)]
pub(crate) struct PreflightArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    /// Fleet template parameters as KEY=VALUE, as `deploy` takes them; those not given come from
    /// the stack when it exists, else from the template's defaults.
    #[arg(long = "parameters", alias = "parameter", num_args = 1.., value_name = "KEY=VALUE")]
    pub parameters: Vec<String>,
}

/// `scaler preflight`: exit 1 when it finds an error.
pub(crate) fn run(args: PreflightArgs) -> Result<i32> {
    let template = Template::embedded()?;
    let given = parse_parameters(&template.parameters, &args.parameters)?;
    let stack = args.stack.stack.as_str();
    let stacks = Stacks::connect(&args.stack.region)?;
    let previous: BTreeMap<String, String> = match stacks.stack(stack)? {
        Some(found) if TemplateKind::of_stack(&found.parameters) == Some(TemplateKind::Hub) => {
            bail!("stack {stack} is a hub: the preflight checks fleets")
        }
        Some(found) => found
            .parameters
            .iter()
            .map(|(key, value)| (key.clone(), normalize_list_value(value)))
            .collect(),
        None => BTreeMap::new(),
    };
    let mut values = previous;
    values.extend(given);
    let reader = AwsReader::connect(&args.stack.region)?;
    let findings = report(&reader, &with_defaults(&template, &values))?;
    Ok(i32::from(has_errors(&findings)))
}

/// The preflight of `scaler deploy`, on the values it will pass: an error when it finds one,
/// unless `ignore` (`--ignore-preflight`).
pub(crate) fn before_deploy(
    region: &str,
    template: &Template,
    values: &BTreeMap<String, String>,
    ignore: bool,
) -> Result<()> {
    let reader = AwsReader::connect(region)?;
    let findings = report(&reader, &with_defaults(template, values))?;
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    match errors {
        0 => Ok(()),
        _ if ignore => {
            println!("--ignore-preflight: going on despite {errors} preflight error(s)");
            Ok(())
        }
        _ => bail!("the preflight found {errors} error(s) (above); fix them, or deploy anyway with --ignore-preflight"),
    }
}

/// The quota lines of `scaler status` for a deployed fleet (its parameters, the template's
/// defaults for the rest): best effort, like the rest of the status.
pub(crate) fn quota_headroom(region: &str, parameters: &BTreeMap<String, String>) -> Vec<Finding> {
    let values: BTreeMap<String, String> = parameters
        .iter()
        .map(|(key, value)| (key.clone(), normalize_list_value(value)))
        .collect();
    let values = match Template::embedded() {
        Ok(template) => with_defaults(&template, &values),
        Err(_) => values,
    };
    let read = AwsReader::connect(region).map_err(|e| e.to_string());
    let inputs = Inputs::from_parameters(&values).map_err(|e| e.to_string());
    match (read, inputs) {
        (Ok(reader), Ok(inputs)) => gather::quota_headroom(&reader, &inputs),
        (Err(why), _) | (_, Err(why)) => vec![Finding::new(
            Severity::Warning,
            "quotas",
            format!("not checked: {why}"),
            "",
        )],
    }
}

/// The values with the template's defaults for those not set.
fn with_defaults(
    template: &Template,
    values: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut all: BTreeMap<String, String> = template
        .parameters
        .iter()
        .filter_map(|s| Some((s.name.clone(), s.default.clone()?)))
        .collect();
    all.extend(values.iter().map(|(k, v)| (k.clone(), v.clone())));
    all
}

/// Runs the checks and prints one line per finding, then a count; the findings.
pub(crate) fn report(
    reader: &dyn Reader,
    values: &BTreeMap<String, String>,
) -> Result<Vec<Finding>> {
    let inputs = Inputs::from_parameters(values)?;
    println!(
        "Preflight: {} × {} in {}",
        inputs.max_size,
        inputs.instance_types.join(","),
        reader.region()
    );
    let findings = gather::preflight(reader, &inputs);
    for finding in &findings {
        println!("  {finding}");
    }
    let count = |severity| findings.iter().filter(|f| f.severity == severity).count();
    println!(
        "Preflight: {} error(s), {} warning(s)",
        count(Severity::Error),
        count(Severity::Warning)
    );
    Ok(findings)
}
