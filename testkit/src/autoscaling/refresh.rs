//! Instance refreshes: `StartInstanceRefresh` checked as AWS checks it, and
//! `DescribeInstanceRefreshes`, which advances a refresh a step and carries a successful
//! one out on moto (unless its group's refreshes are driven: then it only reports).

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::{answer, error, escape, invalid, Refresh, RefreshOutcome, Shared, ACTIVE};

/// Checks a StartInstanceRefresh's parameters, for a group that launches
/// `group_version` of its template, as AWS's API reference describes them; the message of
/// the first rule broken.
fn refuse_refresh(params: &BTreeMap<String, String>, group_version: &str) -> Option<String> {
    let number = |key: &str| params.get(key).map(|v| v.parse::<i64>().unwrap_or(-1));
    let min = number("Preferences.MinHealthyPercentage");
    let max = number("Preferences.MaxHealthyPercentage");
    let auto_rollback = params.get("Preferences.AutoRollback").map(String::as_str) == Some("true");
    let version = params.get("DesiredConfiguration.LaunchTemplate.Version");
    let has_desired = params
        .keys()
        .any(|k| k.starts_with("DesiredConfiguration."));
    if auto_rollback && !has_desired {
        // AWS's own message.
        return Some(
            "The request isn't valid. The AutoRollback parameter cannot be set to true when \
             the DesiredConfiguration parameter is empty. Set AutoRollback to false or specify \
             a desired configuration and try again."
                .to_owned(),
        );
    }
    if auto_rollback && version.is_some_and(|v| v == "$Latest" || v == "$Default") {
        // The rule is AWS's (the API reference's AutoRollback); the wording is ours.
        return Some(format!(
            "The AutoRollback parameter cannot be set to true when the desired configuration's \
             launch template version is {}: name a version number.",
            version.map_or("", String::as_str)
        ));
    }
    if auto_rollback && group_version.parse::<u64>().is_err() {
        // The rule is AWS's (RefreshPreferences.AutoRollback: not supported when the group
        // uses `$Latest` or `$Default`); the wording is ours.
        return Some(format!(
            "The AutoRollback parameter cannot be set to true when the Auto Scaling group \
             uses the launch template's {group_version} version."
        ));
    }
    if min.is_some_and(|m| !(0..=100).contains(&m)) {
        return Some("MinHealthyPercentage must be between 0 and 100.".to_owned());
    }
    if let Some(max) = max {
        if !(100..=200).contains(&max) {
            return Some("MaxHealthyPercentage must be between 100 and 200.".to_owned());
        }
        let Some(min) = min else {
            return Some(
                "MinHealthyPercentage must be specified when MaxHealthyPercentage is.".to_owned(),
            );
        };
        if max - min > 100 {
            return Some(
                "The difference between MaxHealthyPercentage and MinHealthyPercentage cannot \
                 be greater than 100."
                    .to_owned(),
            );
        }
    }
    let alarms = params
        .keys()
        .filter(|k| k.starts_with("Preferences.AlarmSpecification.Alarms.member."))
        .count();
    if alarms > 10 {
        return Some("An alarm specification can name at most 10 alarms.".to_owned());
    }
    None
}

pub(super) async fn start(
    shared: &Shared,
    params: &BTreeMap<String, String>,
) -> Response<Full<Bytes>> {
    shared.record("StartInstanceRefresh", params);
    let Some(name) = params.get("AutoScalingGroupName") else {
        return invalid("AutoScalingGroupName is required.");
    };
    let group = match shared.group(name).await {
        Ok(Some(group)) => group,
        Ok(None) => {
            return invalid(&format!(
                "AutoScalingGroup name not found - AutoScalingGroup {name} not found"
            ))
        }
        Err(e) => return error(StatusCode::BAD_GATEWAY, "StandInUpstream", &e.to_string()),
    };
    let group_version = group.version.as_deref().unwrap_or("$Default");
    if let Some(message) = refuse_refresh(params, group_version) {
        return invalid(&message);
    }
    let desired = params
        .get("DesiredConfiguration.LaunchTemplate.LaunchTemplateName")
        .or(group.template.as_ref())
        .zip(params.get("DesiredConfiguration.LaunchTemplate.Version"))
        .map(|(t, v)| (t.clone(), v.clone()));
    let mut state = shared.lock();
    if state
        .refreshes
        .iter()
        .any(|r| r.group == *name && ACTIVE.contains(&r.status))
    {
        drop(state);
        return error(
            StatusCode::BAD_REQUEST,
            "InstanceRefreshInProgress",
            "An Instance Refresh is already in progress and blocks the execution of this \
             Instance Refresh.",
        );
    }
    let id = uuid::Uuid::new_v4().to_string();
    let outcome = state.outcomes.get(name).cloned().unwrap_or_default();
    state.refreshes.push(Refresh {
        id: id.clone(),
        group: name.clone(),
        status: "Pending",
        reason: "Waiting for the refresh to start".to_owned(),
        percent: 0,
        to_update: group.instances.len(),
        started: chrono::Utc::now(),
        ended: None,
        desired,
        preferences: params
            .iter()
            .filter(|(k, _)| k.starts_with("Preferences."))
            .map(|(k, v)| (k["Preferences.".len()..].to_owned(), v.clone()))
            .collect(),
        outcome,
    });
    state.events.push(format!("started {name}"));
    drop(state);
    answer(
        "StartInstanceRefresh",
        &format!("<InstanceRefreshId>{id}</InstanceRefreshId>"),
    )
}

/// What a refresh does on moto when it succeeds: the group launches the desired version
/// (made the template's default too, as moto reports an instance's version as its
/// template's default) and every instance of another version is replaced.
async fn carry_out(
    shared: &Shared,
    group: &str,
    desired: Option<&(String, String)>,
) -> anyhow::Result<()> {
    let before = shared.group(group).await?.unwrap_or_default();
    if let Some((template, version)) = desired {
        shared
            .moto_call(
                "autoscaling",
                &[
                    ("Action", "UpdateAutoScalingGroup"),
                    ("AutoScalingGroupName", group),
                    ("LaunchTemplate.LaunchTemplateName", template),
                    ("LaunchTemplate.Version", version),
                ],
            )
            .await?;
        shared
            .moto_call(
                "ec2",
                &[
                    ("Action", "ModifyLaunchTemplate"),
                    ("LaunchTemplateName", template),
                    ("SetDefaultVersion", version),
                ],
            )
            .await?;
    }
    let wanted = desired.map(|(_, v)| v.as_str());
    for (instance, version) in &before.instances {
        if wanted.is_some_and(|w| w == version) {
            continue;
        }
        shared
            .moto_call(
                "autoscaling",
                &[
                    ("Action", "TerminateInstanceInAutoScalingGroup"),
                    ("InstanceId", instance),
                    ("ShouldDecrementDesiredCapacity", "false"),
                ],
            )
            .await?;
    }
    Ok(())
}

pub(super) async fn describe(
    shared: &Shared,
    params: &BTreeMap<String, String>,
) -> Response<Full<Bytes>> {
    shared.record("DescribeInstanceRefreshes", params);
    let Some(name) = params.get("AutoScalingGroupName") else {
        return invalid("AutoScalingGroupName is required.");
    };
    let ids: Vec<&String> = params
        .iter()
        .filter(|(k, _)| k.starts_with("InstanceRefreshIds.member."))
        .map(|(_, v)| v)
        .collect();
    // Advance the group's active refresh; a success is carried out on moto before it
    // is reported, so a client that reads the group next sees the new version.
    let finishing = {
        let mut state = shared.lock();
        let mut finishing = None;
        let mut ended = None;
        let driven = state.driven_groups.contains(name);
        if let Some(refresh) = state
            .refreshes
            .iter_mut()
            .filter(|_| !driven)
            .find(|r| r.group == *name && ACTIVE.contains(&r.status))
        {
            match (refresh.status, refresh.percent, &refresh.outcome) {
                ("Pending", ..) => {
                    refresh.status = "InProgress";
                    refresh.reason = "Replacing instances, new ones first".to_owned();
                }
                ("InProgress", 0, _) => refresh.percent = 50,
                ("InProgress", _, RefreshOutcome::Succeed) => {
                    finishing = Some(refresh.desired.clone());
                }
                ("InProgress", _, RefreshOutcome::RollBack(reason)) => {
                    refresh.status = "RollbackInProgress";
                    refresh.reason = reason.clone();
                }
                ("InProgress", _, RefreshOutcome::Fail(reason)) => {
                    refresh.status = "Failed";
                    refresh.reason = reason.clone();
                    refresh.ended = Some(chrono::Utc::now());
                    ended = Some("Failed");
                }
                ("RollbackInProgress", ..) => {
                    refresh.status = "RollbackSuccessful";
                    refresh.percent = 100;
                    refresh.ended = Some(chrono::Utc::now());
                    ended = Some("RollbackSuccessful");
                }
                _ => {}
            }
        }
        if let Some(status) = ended {
            state.events.push(format!("{status} {name}"));
        }
        finishing
    };
    if let Some(desired) = finishing {
        if let Err(e) = carry_out(shared, name, desired.as_ref()).await {
            return error(StatusCode::BAD_GATEWAY, "StandInUpstream", &e.to_string());
        }
        let mut state = shared.lock();
        if let Some(refresh) = state
            .refreshes
            .iter_mut()
            .find(|r| r.group == *name && r.status == "InProgress")
        {
            refresh.status = "Successful";
            refresh.reason = String::new();
            refresh.percent = 100;
            refresh.ended = Some(chrono::Utc::now());
        }
        state.events.push(format!("Successful {name}"));
    }
    let state = shared.lock();
    let members: String = state
        .refreshes
        .iter()
        .rev()
        .filter(|r| r.group == *name && (ids.is_empty() || ids.contains(&&r.id)))
        .map(refresh_xml)
        .collect();
    drop(state);
    answer(
        "DescribeInstanceRefreshes",
        &format!("<InstanceRefreshes>{members}</InstanceRefreshes>"),
    )
}

fn refresh_xml(refresh: &Refresh) -> String {
    let time =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let ended = refresh
        .ended
        .map(|t| format!("<EndTime>{}</EndTime>", time(t)))
        .unwrap_or_default();
    let desired = refresh
        .desired
        .as_ref()
        .map(|(template, version)| {
            format!(
                "<DesiredConfiguration><LaunchTemplate><LaunchTemplateName>{}</LaunchTemplateName>\
                 <Version>{}</Version></LaunchTemplate></DesiredConfiguration>",
                escape(template),
                escape(version)
            )
        })
        .unwrap_or_default();
    let preferences: String = refresh
        .preferences
        .iter()
        .filter(|(k, _)| !k.contains('.'))
        .map(|(k, v)| format!("<{k}>{}</{k}>", escape(v)))
        .collect();
    let remaining = if refresh.status == "Successful" {
        0
    } else {
        refresh.to_update
    };
    format!(
        "<member><InstanceRefreshId>{}</InstanceRefreshId><AutoScalingGroupName>{}\
         </AutoScalingGroupName><Status>{}</Status><StatusReason>{}</StatusReason>\
         <StartTime>{}</StartTime>{ended}<PercentageComplete>{}</PercentageComplete>\
         <InstancesToUpdate>{remaining}</InstancesToUpdate><Preferences>{preferences}\
         </Preferences>{desired}</member>",
        refresh.id,
        escape(&refresh.group),
        refresh.status,
        escape(&refresh.reason),
        time(refresh.started),
        refresh.percent,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The answer's (Status, PercentageComplete, InstancesToUpdate, has EndTime).
    fn described(xml: &str) -> (String, String, String, bool) {
        let field = |name: &str| {
            xml.split_once(&format!("<{name}>"))
                .and_then(|(_, rest)| rest.split_once(&format!("</{name}>")))
                .map(|(value, _)| value.to_owned())
                .unwrap_or_default()
        };
        (
            field("Status"),
            field("PercentageComplete"),
            field("InstancesToUpdate"),
            xml.contains("<EndTime>"),
        )
    }

    #[test]
    fn a_driven_refresh_moves_only_when_its_driver_says_so() {
        let stand_in = super::super::AutoScalingStandIn {
            endpoint: String::new(),
            shared: std::sync::Arc::new(Shared {
                // Never called: a driven refresh is not carried out on moto.
                moto: "http://127.0.0.1:9".to_owned(),
                http: reqwest::Client::new(),
                state: std::sync::Mutex::default(),
            }),
        };
        stand_in.shared.lock().refreshes.push(Refresh {
            id: "r-1".into(),
            group: "g".into(),
            status: "Pending",
            reason: String::new(),
            percent: 0,
            to_update: 2,
            started: chrono::Utc::now(),
            ended: None,
            desired: Some(("t".into(), "2".into())),
            preferences: BTreeMap::from([("InstanceWarmup".into(), "120".into())]),
            outcome: RefreshOutcome::Succeed,
        });
        stand_in.drive_refreshes("g");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let describe = || {
            let answer = runtime.block_on(describe(
                &stand_in.shared,
                &params(&[("AutoScalingGroupName", "g")]),
            ));
            let body = runtime
                .block_on(http_body_util::BodyExt::collect(answer.into_body()))
                .unwrap()
                .to_bytes();
            described(&String::from_utf8_lossy(&body))
        };
        for _ in 0..5 {
            assert_eq!(
                describe(),
                ("Pending".into(), "0".into(), "2".into(), false)
            );
        }
        let order = stand_in.active_refresh("g").unwrap();
        assert_eq!(order.desired, Some(("t".into(), "2".into())));
        assert_eq!(order.preferences["InstanceWarmup"], "120");
        stand_in.advance_refresh("r-1", "InProgress", "Replacing", 50, 1);
        assert_eq!(
            describe(),
            ("InProgress".into(), "50".into(), "1".into(), false)
        );
        assert!(stand_in.events("g").is_empty(), "nothing ended yet");
        stand_in.advance_refresh("r-1", "RollbackSuccessful", "health checks failed", 100, 0);
        assert_eq!(
            describe(),
            ("RollbackSuccessful".into(), "100".into(), "0".into(), true)
        );
        assert_eq!(stand_in.active_refresh("g"), None);
        assert_eq!(stand_in.events("g"), ["RollbackSuccessful g"]);
    }

    #[test]
    fn refreshes_are_refused_as_aws_refuses_them() {
        let rollback_without_desired = params(&[("Preferences.AutoRollback", "true")]);
        assert!(refuse_refresh(&rollback_without_desired, "1")
            .is_some_and(|m| m.contains("DesiredConfiguration parameter is empty")));
        let on_latest = params(&[
            ("Preferences.AutoRollback", "true"),
            (
                "DesiredConfiguration.LaunchTemplate.LaunchTemplateName",
                "t",
            ),
            ("DesiredConfiguration.LaunchTemplate.Version", "$Latest"),
        ]);
        assert!(refuse_refresh(&on_latest, "1").is_some_and(|m| m.contains("$Latest")));
        let numbered = params(&[
            ("Preferences.AutoRollback", "true"),
            (
                "DesiredConfiguration.LaunchTemplate.LaunchTemplateName",
                "t",
            ),
            ("DesiredConfiguration.LaunchTemplate.Version", "3"),
            ("Preferences.MinHealthyPercentage", "100"),
            ("Preferences.MaxHealthyPercentage", "134"),
        ]);
        assert_eq!(refuse_refresh(&numbered, "1"), None);
        for (min, max) in [("100", "201"), ("90", "99"), ("50", "160"), ("101", "150")] {
            let p = params(&[
                ("Preferences.MinHealthyPercentage", min),
                ("Preferences.MaxHealthyPercentage", max),
            ]);
            assert!(refuse_refresh(&p, "1").is_some(), "min {min} max {max}");
        }
        assert!(
            refuse_refresh(&params(&[("Preferences.MaxHealthyPercentage", "150")]), "1").is_some()
        );
    }
}
