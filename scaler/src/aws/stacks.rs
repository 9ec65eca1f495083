//! The stacks client behind `scaler deploy | status | destroy`: the only place those commands call
//! CloudFormation, SSM (writes; reads go through [`super::ssm_parameter`]) or Auto Scaling. Each
//! method is one SDK call (or one page of reads) turned into plain values: statuses stay the SDK's
//! typed enums, a missing stack is told apart by its error code, never by an error's text, and
//! every failure carries what was being done. Deciding, waiting and printing live in `cmd`.

use anyhow::{Context, Result};
use aws_sdk_autoscaling::types::LifecycleState;
use aws_sdk_cloudformation::error::ProvideErrorMetadata;
use aws_sdk_cloudformation::types::{
    Capability, ChangeSetStatus, ChangeSetType, Parameter, ResourceStatus, StackStatus, Tag,
};
use aws_sdk_ssm::types::ParameterStringFilter;
use std::collections::BTreeMap;

/// The error code CloudFormation answers `DescribeStacks` with for a stack name it does not know.
const STACK_NOT_FOUND_CODE: &str = "ValidationError";

/// A stack as it is now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stack {
    pub status: StackStatus,
    /// Parameter values as CloudFormation reports them (moto writes lists as Python lists).
    pub parameters: BTreeMap<String, String>,
    /// Outputs in the stack's order.
    pub outputs: Vec<(String, String)>,
}

impl Stack {
    pub(crate) fn output(&self, key: &str) -> Option<&str> {
        self.outputs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// One stack event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Event {
    pub id: String,
    pub logical_id: String,
    pub resource_type: String,
    pub status: ResourceStatus,
    pub reason: String,
}

/// A change set as described, with the resources it would change.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChangeSet {
    pub status: Option<ChangeSetStatus>,
    pub reason: String,
    pub changes: Vec<ResourceChange>,
}

/// One planned change: `Add`, `Modify`, `Remove`… of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResourceChange {
    pub action: String,
    pub logical_id: String,
    pub resource_type: String,
}

/// An Auto Scaling group's sizes and instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pool {
    pub desired: i32,
    pub min: i32,
    pub max: i32,
    pub instances: usize,
    pub in_service: usize,
}

/// One recent scaling activity of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Activity {
    pub group: String,
    pub started: String,
    pub status: String,
    pub description: String,
}

/// What a new stack or change set is built from.
pub(crate) struct Definition<'a> {
    pub stack: &'a str,
    pub template: &'a str,
    pub parameters: &'a [(String, String)],
}

impl Definition<'_> {
    fn parameters(&self) -> Vec<Parameter> {
        self.parameters
            .iter()
            .map(|(key, value)| {
                Parameter::builder()
                    .parameter_key(key)
                    .parameter_value(value)
                    .build()
            })
            .collect()
    }

    fn tag(&self) -> Tag {
        Tag::builder()
            .key("flotilla:stack")
            .value(self.stack)
            .build()
    }
}

pub(crate) struct Stacks {
    runtime: tokio::runtime::Runtime,
    config: aws_config::SdkConfig,
    cloudformation: aws_sdk_cloudformation::Client,
    ssm: aws_sdk_ssm::Client,
    autoscaling: aws_sdk_autoscaling::Client,
}

impl Stacks {
    /// Credentials and region from the standard chain (`region` overrides it when not empty).
    pub(crate) fn connect(region: &str) -> Result<Stacks> {
        let runtime = super::runtime()?;
        let config = super::sdk_config(&runtime, region, "")?;
        Ok(Stacks {
            cloudformation: aws_sdk_cloudformation::Client::new(&config),
            ssm: aws_sdk_ssm::Client::new(&config),
            autoscaling: aws_sdk_autoscaling::Client::new(&config),
            runtime,
            config,
        })
    }

    /// Runs one SDK request to its end; a failure says what was being done.
    fn call<T, E>(
        &self,
        request: impl std::future::Future<Output = Result<T, E>>,
        doing: impl FnOnce() -> String,
    ) -> Result<T>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        self.runtime.block_on(request).with_context(doing)
    }

    /// An SSM parameter's (decrypted) value, through the scaler's shared reader.
    pub(crate) fn parameter(&self, name: &str) -> Result<String> {
        super::ssm_parameter(&self.runtime, &self.config, name)
    }

    /// The stack, `None` when there is none (or only a deleted one) by that name.
    pub(crate) fn stack(&self, name: &str) -> Result<Option<Stack>> {
        let described = self.runtime.block_on(
            self.cloudformation
                .describe_stacks()
                .stack_name(name)
                .send(),
        );
        let output = match described {
            Ok(output) => output,
            Err(error) if error.code() == Some(STACK_NOT_FOUND_CODE) => return Ok(None),
            Err(error) => {
                return Err(error).with_context(|| format!("describing stack {name}"));
            }
        };
        let Some(stack) = output.stacks().first() else {
            return Ok(None);
        };
        let status = stack
            .stack_status()
            .cloned()
            .unwrap_or_else(|| StackStatus::from(""));
        if status == StackStatus::DeleteComplete {
            return Ok(None);
        }
        let pair = |key: Option<&str>, value: Option<&str>| {
            Some((key?.to_string(), value.unwrap_or_default().to_string()))
        };
        Ok(Some(Stack {
            status,
            parameters: stack
                .parameters()
                .iter()
                .filter_map(|p| pair(p.parameter_key(), p.parameter_value()))
                .collect(),
            outputs: stack
                .outputs()
                .iter()
                .filter_map(|o| pair(o.output_key(), o.output_value()))
                .collect(),
        }))
    }

    /// The template the stack was last deployed with.
    pub(crate) fn template(&self, name: &str) -> Result<String> {
        let request = self.cloudformation.get_template().stack_name(name);
        let output = self.call(request.send(), || {
            format!("reading the template of stack {name}")
        })?;
        Ok(output.template_body().unwrap_or_default().to_string())
    }

    /// The stack's events, oldest first.
    pub(crate) fn events(&self, name: &str) -> Result<Vec<Event>> {
        let request = self.cloudformation.describe_stack_events().stack_name(name);
        let output = self.call(request.send(), || {
            format!("reading the events of stack {name}")
        })?;
        let mut events: Vec<Event> = output
            .stack_events()
            .iter()
            .map(|e| Event {
                id: e.event_id().unwrap_or_default().to_string(),
                logical_id: e.logical_resource_id().unwrap_or_default().to_string(),
                resource_type: e.resource_type().unwrap_or_default().to_string(),
                status: e
                    .resource_status()
                    .cloned()
                    .unwrap_or_else(|| ResourceStatus::from("")),
                reason: e.resource_status_reason().unwrap_or_default().to_string(),
            })
            .collect();
        events.reverse();
        Ok(events)
    }

    /// `CreateStack` (rollback on failure is its default), tagged with the stack's name.
    pub(crate) fn create_stack(&self, definition: &Definition) -> Result<()> {
        let create = self
            .cloudformation
            .create_stack()
            .stack_name(definition.stack)
            .template_body(definition.template)
            .set_parameters(Some(definition.parameters()))
            .capabilities(Capability::CapabilityIam)
            .capabilities(Capability::CapabilityNamedIam)
            .tags(definition.tag());
        self.call(create.send(), || {
            format!("creating stack {}", definition.stack)
        })?;
        Ok(())
    }

    /// `CreateChangeSet`; returns the change set's id.
    pub(crate) fn create_change_set(
        &self,
        definition: &Definition,
        change_set: &str,
        kind: ChangeSetType,
    ) -> Result<String> {
        let create = self
            .cloudformation
            .create_change_set()
            .stack_name(definition.stack)
            .change_set_name(change_set)
            .change_set_type(kind)
            .template_body(definition.template)
            .set_parameters(Some(definition.parameters()))
            .capabilities(Capability::CapabilityIam)
            .capabilities(Capability::CapabilityNamedIam)
            .tags(definition.tag());
        let created = self.call(create.send(), || "creating the change set".into())?;
        Ok(created.id().unwrap_or(change_set).to_string())
    }

    pub(crate) fn change_set(&self, stack: &str, id: &str) -> Result<ChangeSet> {
        let request = self
            .cloudformation
            .describe_change_set()
            .stack_name(stack)
            .change_set_name(id);
        let described = self.call(request.send(), || "describing the change set".into())?;
        let changes = described
            .changes()
            .iter()
            .filter_map(|change| change.resource_change())
            .map(|resource| ResourceChange {
                action: resource.action().map(|a| a.as_str()).unwrap_or("?").into(),
                logical_id: resource.logical_resource_id().unwrap_or_default().into(),
                resource_type: resource.resource_type().unwrap_or_default().into(),
            })
            .collect();
        Ok(ChangeSet {
            status: described.status().cloned(),
            reason: described.status_reason().unwrap_or_default().to_string(),
            changes,
        })
    }

    pub(crate) fn execute_change_set(&self, stack: &str, id: &str) -> Result<()> {
        let execute = self
            .cloudformation
            .execute_change_set()
            .stack_name(stack)
            .change_set_name(id);
        self.call(execute.send(), || "executing the change set".into())?;
        Ok(())
    }

    pub(crate) fn delete_change_set(&self, stack: &str, id: &str) -> Result<()> {
        let delete = self
            .cloudformation
            .delete_change_set()
            .stack_name(stack)
            .change_set_name(id);
        self.call(delete.send(), || "deleting the change set".into())?;
        Ok(())
    }

    pub(crate) fn delete_stack(&self, name: &str) -> Result<()> {
        let request = self.cloudformation.delete_stack().stack_name(name);
        self.call(request.send(), || format!("deleting stack {name}"))?;
        Ok(())
    }

    /// Writes (or overwrites) an SSM SecureString encrypted under the KMS key `key_id`; the value
    /// never appears in an error.
    pub(crate) fn put_secure_string(
        &self,
        name: &str,
        value: &str,
        description: &str,
        key_id: &str,
    ) -> Result<()> {
        let put = self
            .ssm
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .key_id(key_id)
            .overwrite(true)
            .description(description);
        self.call(put.send(), || format!("storing the SSM parameter {name}"))?;
        Ok(())
    }

    /// The KMS key an SSM parameter is encrypted under, as SSM names it (`""` for a plain String),
    /// from its metadata: nothing is decrypted. `None` when there is no such parameter.
    pub(crate) fn parameter_key(&self, name: &str) -> Result<Option<String>> {
        let filter = ParameterStringFilter::builder()
            .key("Name")
            .option("Equals")
            .values(name)
            .build()
            .context("building the parameter filter")?;
        let request = self.ssm.describe_parameters().parameter_filters(filter);
        let described = self.call(request.send(), || {
            format!("describing the SSM parameter {name}")
        })?;
        Ok(described
            .parameters()
            .iter()
            .find(|p| p.name() == Some(name))
            .map(|p| p.key_id().unwrap_or_default().to_string()))
    }

    pub(crate) fn delete_parameter(&self, name: &str) -> Result<()> {
        let request = self.ssm.delete_parameter().name(name);
        self.call(request.send(), || {
            format!("deleting the SSM parameter {name}")
        })?;
        Ok(())
    }

    /// The named Auto Scaling groups, in the order asked; `None` for one that does not exist.
    pub(crate) fn pools(&self, groups: &[String]) -> Result<Vec<Option<Pool>>> {
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let request = self
            .autoscaling
            .describe_auto_scaling_groups()
            .set_auto_scaling_group_names(Some(groups.to_vec()));
        let described = self.call(request.send(), || {
            "describing the Auto Scaling groups".into()
        })?;
        let found = described.auto_scaling_groups();
        Ok(groups
            .iter()
            .map(|name| {
                let group = found
                    .iter()
                    .find(|g| g.auto_scaling_group_name() == Some(name.as_str()))?;
                let instances = group.instances();
                Some(Pool {
                    desired: group.desired_capacity().unwrap_or(0),
                    min: group.min_size().unwrap_or(0),
                    max: group.max_size().unwrap_or(0),
                    instances: instances.len(),
                    in_service: instances
                        .iter()
                        .filter(|i| i.lifecycle_state() == Some(&LifecycleState::InService))
                        .count(),
                })
            })
            .collect())
    }

    /// A group's newest `count` scaling activities, newest first.
    pub(crate) fn activities(&self, group: &str, count: i32) -> Result<Vec<Activity>> {
        let request = self
            .autoscaling
            .describe_scaling_activities()
            .auto_scaling_group_name(group)
            .max_records(count);
        let described = self.call(request.send(), || {
            format!("reading the scaling activities of {group}")
        })?;
        Ok(described
            .activities()
            .iter()
            .map(|activity| Activity {
                group: group.to_string(),
                started: activity
                    .start_time()
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
                status: activity
                    .status_code()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
                description: activity.description().unwrap_or_default().to_string(),
            })
            .collect())
    }
}
