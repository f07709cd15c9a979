//! Lifecycle actions: `CompleteLifecycleAction` and `RecordLifecycleActionHeartbeat`,
//! and the AccessDenied a role without the permission gets.

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::{answer, error, invalid, Shared};

/// AccessDenied for an instance's call about a group whose calls a test refuses.
pub(super) fn refuse_instance_call(
    shared: &Shared,
    params: &BTreeMap<String, String>,
) -> Option<Response<Full<Bytes>>> {
    let action = params.get("Action")?;
    let group = params.get("AutoScalingGroupName")?;
    let instance_call = matches!(
        action.as_str(),
        "SetInstanceProtection" | "CompleteLifecycleAction" | "RecordLifecycleActionHeartbeat"
    );
    if !instance_call || !shared.lock().refused_groups.contains(group) {
        return None;
    }
    shared.record(action, params);
    Some(error(
        StatusCode::FORBIDDEN,
        "AccessDenied",
        &format!(
            "User: arn:aws:sts::123456789012:assumed-role/LabRole/i-0 is not authorized to \
             perform: autoscaling:{action} on resource: {group}"
        ),
    ))
}

/// `CompleteLifecycleAction` and `RecordLifecycleActionHeartbeat`: accepted for a hook
/// moto holds and an instance a test put into `Terminating:Wait`
/// ([`super::AutoScalingStandIn::begin_termination`]); a completion ends the action.
pub(super) async fn action(
    shared: &Shared,
    action: &str,
    params: &BTreeMap<String, String>,
) -> Response<Full<Bytes>> {
    shared.record(action, params);
    let (Some(group), Some(hook)) = (
        params.get("AutoScalingGroupName"),
        params.get("LifecycleHookName"),
    ) else {
        return invalid("AutoScalingGroupName and LifecycleHookName are required.");
    };
    let Some(instance) = params.get("InstanceId") else {
        // The worker names its instance; a token alone is not modelled here.
        return invalid("InstanceId is required by this stand-in (a LifecycleActionToken alone is not modelled).");
    };
    if action == "CompleteLifecycleAction"
        && !matches!(
            params.get("LifecycleActionResult").map(String::as_str),
            Some("CONTINUE" | "ABANDON")
        )
    {
        return invalid("LifecycleActionResult must be CONTINUE or ABANDON.");
    }
    let hooks = shared
        .moto_call(
            "autoscaling",
            &[
                ("Action", "DescribeLifecycleHooks"),
                ("AutoScalingGroupName", group),
                ("LifecycleHookNames.member.1", hook),
            ],
        )
        .await;
    match hooks {
        Ok(xml) if xml.contains(&format!("<LifecycleHookName>{hook}</LifecycleHookName>")) => {}
        Ok(_) => {
            return invalid(&format!(
                "No Lifecycle Hook found with name {hook} for group {group}"
            ))
        }
        Err(e) => return error(StatusCode::BAD_GATEWAY, "StandInUpstream", &e.to_string()),
    }
    let mut state = shared.lock();
    let key = (group.clone(), hook.clone(), instance.clone());
    let Some(at) = state.pending_actions.iter().position(|p| *p == key) else {
        drop(state);
        // AWS's message.
        return invalid(&format!(
            "No active Lifecycle Action found with instance ID {instance}"
        ));
    };
    if action == "CompleteLifecycleAction" {
        state.pending_actions.remove(at);
    }
    drop(state);
    answer(action, "")
}
