//! The flags that state an agent type's registration rule, shared by `scaler agent-types create`
//! (any new type) and `scaler hub` (its default type, so that the hub stack's own type can bind
//! registrations to the fleet's instances from its first start).

use protocol::views::IdentityPolicy;

#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct RegistrationRuleArgs {
    /// Agents must send an AWS-signed instance identity document (`agent --ec2`); each is
    /// named by its instance id, and an instance registers once, ever. Implies
    /// --single-job-only unless --allow-multi-job-agents.
    #[arg(
        long,
        env = "FLOTILLA_REQUIRE_INSTANCE_IDENTITY",
        requires = "allowed_accounts"
    )]
    pub require_instance_identity: bool,
    /// An AWS account allowed to register (repeat, or comma-separated; needed with
    /// --require-instance-identity).
    #[arg(
        long = "allowed-account",
        env = "FLOTILLA_ALLOWED_ACCOUNTS",
        value_delimiter = ','
    )]
    pub allowed_accounts: Vec<String>,
    /// A region allowed to register (repeat, or comma-separated; none: any).
    #[arg(
        long = "allowed-region",
        env = "FLOTILLA_ALLOWED_REGIONS",
        value_delimiter = ','
    )]
    pub allowed_regions: Vec<String>,
    /// Only agents that take one job (`single_job`) register.
    #[arg(long, conflicts_with = "allow_multi_job_agents")]
    pub single_job_only: bool,
    /// Agents that take job after job may register although the type requires the instance
    /// identity.
    #[arg(long)]
    pub allow_multi_job_agents: bool,
}

impl RegistrationRuleArgs {
    /// The rule these flags state.
    pub(crate) fn policy(&self) -> IdentityPolicy {
        IdentityPolicy {
            require_instance_identity: self.require_instance_identity,
            allowed_accounts: self.allowed_accounts.clone(),
            allowed_regions: self.allowed_regions.clone(),
            single_job_only: match (self.single_job_only, self.allow_multi_job_agents) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
        }
    }

    /// Whether any flag was given (else `scaler hub` leaves its default type's rule as it is).
    pub(crate) fn given(&self) -> bool {
        !self.policy().is_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        rule: RegistrationRuleArgs,
    }

    fn policy(args: &[&str]) -> IdentityPolicy {
        let cli = Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied())).unwrap();
        cli.rule.policy()
    }

    #[test]
    fn the_flags_state_the_rule_and_identity_implies_single_job_agents() {
        assert!(policy(&[]).is_default());
        let bound = policy(&[
            "--require-instance-identity",
            "--allowed-account",
            "123456789012,210987654321",
            "--allowed-region=eu-west-1",
        ]);
        assert_eq!(bound.allowed_accounts.len(), 2);
        assert!(bound.single_job_only());
        let multi = policy(&[
            "--require-instance-identity",
            "--allowed-account=123456789012",
            "--allow-multi-job-agents",
        ]);
        assert!(!multi.single_job_only());
        assert!(policy(&["--single-job-only"]).single_job_only());
        let refused = Cli::try_parse_from(["t", "--single-job-only", "--allow-multi-job-agents"]);
        assert!(refused.is_err());
        assert!(Cli::try_parse_from(["t", "--require-instance-identity"]).is_err());
    }
}
