# Monitoring: the scaler's Embedded Metric Format lines (namespace Flotilla, dimensions AgentType
# and AgentType+Pool; scaling/src/emf.rs) on a CloudWatch dashboard, and two alarms. The twin of
# the Dashboard, QueuedJobAlarm and ShortCapacityAlarm resources of fleet.yaml.

locals {
  alarm_actions = var.alarm_topic_arn != "" ? [var.alarm_topic_arn] : []
}

resource "aws_cloudwatch_dashboard" "fleet" {
  dashboard_name = "flotilla-${var.stack_name}"
  dashboard_body = jsonencode({
    widgets = [
      {
        type = "metric", x = 0, y = 0, width = 12, height = 6
        properties = {
          title = "Queue: ${local.fleet_name}", region = local.region, stat = "Maximum", period = 60
          metrics = [
            ["Flotilla", "Queued", "AgentType", local.fleet_name],
            [".", "Running", ".", "."], [".", "IdleAgents", ".", "."],
          ]
        }
      },
      {
        type = "metric", x = 12, y = 0, width = 12, height = 6
        properties = {
          title = "Oldest queued job (minutes)", region = local.region, stat = "Maximum", period = 60
          metrics = [
            [{ expression = "m1 / 60", label = "oldest queued job", id = "minutes" }],
            ["Flotilla", "OldestQueuedSeconds", "AgentType", local.fleet_name, { id = "m1", visible = false }],
          ]
          annotations = { horizontal = [{ label = "alarm", value = var.queued_job_alarm_minutes }] }
        }
      },
      {
        type = "metric", x = 0, y = 6, width = 12, height = 6
        properties = {
          title = "Fleet: desired and in service per pool", region = local.region, period = 60
          metrics = [[{
            expression = "SEARCH('{Flotilla,AgentType,Pool} AgentType=\"${local.fleet_name}\" (MetricName=\"Desired\" OR MetricName=\"InService\")', 'Maximum', 60)"
            id         = "pools"
          }]]
        }
      },
      {
        type = "metric", x = 12, y = 6, width = 12, height = 6
        properties = {
          title = "Pools short of capacity, launches, reaps", region = local.region, period = 60
          metrics = [
            ["Flotilla", "PoolsShort", "AgentType", local.fleet_name, { stat = "Maximum" }],
            [".", "Launches", ".", ".", { stat = "Sum" }], [".", "Reaps", ".", ".", { stat = "Sum" }],
          ]
        }
      },
      {
        type = "metric", x = 0, y = 12, width = 12, height = 6
        properties = {
          title = "Enqueue to raise (ms)", region = local.region, period = 60
          metrics = [
            ["Flotilla", "EnqueueToRaise", "AgentType", local.fleet_name, { stat = "p50" }],
            ["...", { stat = "p99" }],
          ]
        }
      },
      {
        type = "alarm", x = 12, y = 12, width = 12, height = 6
        properties = {
          title  = "Alarms"
          alarms = [aws_cloudwatch_metric_alarm.queued_job.arn, aws_cloudwatch_metric_alarm.short_capacity.arn]
        }
      },
    ]
  })
}

resource "aws_cloudwatch_metric_alarm" "queued_job" {
  alarm_name        = "flotilla-${var.stack_name}-oldest-queued-job"
  alarm_description = "The oldest queued job has waited more than ${var.queued_job_alarm_minutes} minutes."
  # The metric is in seconds and the variable in minutes: compare m1 / 60.
  metric_query {
    id          = "m1"
    return_data = false
    metric {
      namespace   = "Flotilla"
      metric_name = "OldestQueuedSeconds"
      dimensions  = { AgentType = local.fleet_name }
      period      = 60
      stat        = "Maximum"
    }
  }
  metric_query {
    id          = "minutes"
    expression  = "m1 / 60"
    label       = "oldest queued job (minutes)"
    return_data = true
  }
  evaluation_periods  = 1
  threshold           = var.queued_job_alarm_minutes
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  actions_enabled     = true
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "short_capacity" {
  alarm_name        = "flotilla-${var.stack_name}-pool-short-of-capacity"
  alarm_description = "A pool has been short of capacity for ${var.short_capacity_alarm_minutes} minutes."
  namespace         = "Flotilla"
  metric_name       = "PoolsShort"
  dimensions        = { AgentType = local.fleet_name }
  # Every minute's smallest count at least 1, N minutes in a row.
  statistic           = "Minimum"
  period              = 60
  evaluation_periods  = var.short_capacity_alarm_minutes
  datapoints_to_alarm = var.short_capacity_alarm_minutes
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  actions_enabled     = true
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}
