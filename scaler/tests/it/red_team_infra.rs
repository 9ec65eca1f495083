//! The stack's defaults as an attacker with a job on the fleet meets them: a job that never ends
//! must not hold its machine forever, so the reaper's maximum instance lifetime (a hard cap that
//! also retires busy instances) is finite by default, in CloudFormation and Terraform alike.

use std::path::Path;

fn read(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap()
}

/// The text right after `key` in the block that starts at `anchor`.
fn value_after(text: &str, anchor: &str, key: &str) -> String {
    let block = &text[text.find(anchor).unwrap_or_else(|| panic!("no {anchor}"))..];
    let rest = &block[block
        .find(key)
        .unwrap_or_else(|| panic!("no {key} after {anchor}"))
        + key.len()..];
    rest.lines().next().unwrap().trim().to_string()
}

#[test]
fn the_default_max_instance_lifetime_is_finite_and_the_same_in_both_stacks() {
    let cfn = read("infra/cloudformation/fleet.yaml");
    let tf = read("infra/terraform/variables.tf");
    let cfn_default: u64 = value_after(&cfn, "  MaxInstanceLifetime:", "Default:")
        .parse()
        .unwrap();
    let tf_default: u64 = value_after(&tf, "variable \"max_instance_lifetime\"", "default     =")
        .parse()
        .unwrap();
    assert!(cfn_default > 0, "MaxInstanceLifetime defaults to never");
    assert!(
        cfn_default <= 24 * 3600,
        "{cfn_default} s is not a cap worth having"
    );
    assert!(cfn_default > 3600, "below the hub's default job time limit");
    assert_eq!(cfn_default, tf_default);
}
