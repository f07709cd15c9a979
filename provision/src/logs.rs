//! `provision logs`: the stack's CloudWatch Logs group (`/anb/<stack>`, one stream per
//! instance and tier, `<instance>/<tier>` and `<instance>/<tier>-boot`, as the instances'
//! agent writes them), filtered by tier, instance or video, oldest first; `--follow` keeps
//! polling for new lines.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::aws::{error_kind, Aws, ErrorKind};

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// "web" or "worker": that tier's streams (service and boot logs).
    pub tier: Option<String>,
    pub instance: Option<String>,
    /// A video's id: the lines that name it, from the API's upload to the worker's
    /// processed line.
    pub video: Option<String>,
    pub since: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LogLine {
    pub time: DateTime<Utc>,
    pub stream: String,
    pub message: String,
    #[serde(skip)]
    id: String,
}

impl LogLine {
    pub fn render(&self) -> String {
        format!(
            "{} {:<28} {}",
            self.time.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            self.stream,
            self.message.trim_end()
        )
    }
}

/// The stack's log group.
pub fn log_group(stack: &str) -> String {
    format!("/anb/{stack}")
}

impl LogQuery {
    /// Whether a stream belongs to the query's tier and instance.
    fn wants_stream(&self, stream: &str) -> bool {
        let (instance, tier) = stream.split_once('/').unwrap_or((stream, ""));
        let tier = tier.strip_suffix("-boot").unwrap_or(tier);
        self.tier.as_deref().is_none_or(|t| t == tier)
            && self.instance.as_deref().is_none_or(|i| i == instance)
    }

    /// CloudWatch's filter pattern: the video id as a quoted term.
    fn pattern(&self) -> anyhow::Result<Option<String>> {
        self.video
            .as_deref()
            .map(|id| {
                anyhow::ensure!(
                    !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                    "--video takes a video's id (letters, digits and '-'), such as the \
                     task_id an upload answers with"
                );
                Ok(format!("\"{id}\""))
            })
            .transpose()
    }
}

impl Aws {
    /// The lines matching `query` from `start` on, oldest first.
    pub async fn log_lines(
        &self,
        query: &LogQuery,
        start: DateTime<Utc>,
    ) -> anyhow::Result<Vec<LogLine>> {
        let group = log_group(&self.stack);
        let pattern = query.pattern()?;
        // A tier or an instance: the streams by name (FilterLogEvents takes a prefix or
        // names, and a tier is a suffix).
        let streams = if query.tier.is_some() || query.instance.is_some() {
            let streams = self.log_streams(&group).await?;
            let wanted: Vec<String> = streams
                .into_iter()
                .filter(|s| query.wants_stream(s))
                .collect();
            if wanted.is_empty() {
                return Ok(Vec::new());
            }
            Some(wanted)
        } else {
            None
        };
        let mut lines = Vec::new();
        // At most 100 names per call.
        let chunks: Vec<Option<Vec<String>>> = match streams {
            Some(names) => names.chunks(100).map(|c| Some(c.to_vec())).collect(),
            None => vec![None],
        };
        for names in chunks {
            let pages = self
                .logs
                .filter_log_events()
                .log_group_name(&group)
                .set_log_stream_names(names)
                .set_filter_pattern(pattern.clone())
                .start_time(start.timestamp_millis())
                .into_paginator()
                .send()
                .collect::<Vec<_>>()
                .await;
            for page in pages {
                let page = match page {
                    Ok(page) => page,
                    Err(e) if error_kind(&e) == ErrorKind::NotFound => anyhow::bail!(
                        "no log group {group}: the instances write it once they run with \
                         [logs] cloudwatch_agent = true"
                    ),
                    Err(e) => return Err(e).context("read the stack's logs"),
                };
                lines.extend(page.events().iter().map(|e| {
                    LogLine {
                        time: DateTime::from_timestamp_millis(e.timestamp().unwrap_or_default())
                            .unwrap_or_default(),
                        stream: e.log_stream_name().unwrap_or_default().to_owned(),
                        message: e.message().unwrap_or_default().to_owned(),
                        id: e.event_id().unwrap_or_default().to_owned(),
                    }
                }));
            }
        }
        lines.sort_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id)));
        Ok(lines)
    }

    async fn log_streams(&self, group: &str) -> anyhow::Result<Vec<String>> {
        let pages = self
            .logs
            .describe_log_streams()
            .log_group_name(group)
            .into_paginator()
            .send()
            .collect::<Vec<_>>()
            .await;
        let mut out = Vec::new();
        for page in pages {
            match page {
                Ok(page) => out.extend(
                    page.log_streams()
                        .iter()
                        .filter_map(|s| s.log_stream_name().map(str::to_owned)),
                ),
                Err(e) if error_kind(&e) == ErrorKind::NotFound => anyhow::bail!(
                    "no log group {group}: the instances write it once they run with [logs] \
                     cloudwatch_agent = true"
                ),
                Err(e) => return Err(e).context("list the stack's log streams"),
            }
        }
        Ok(out)
    }

    /// Prints the matching lines; with `follow`, keeps polling every `poll` and prints
    /// new ones as they come, until interrupted.
    pub async fn print_logs(
        &self,
        query: &LogQuery,
        follow: bool,
        poll: Duration,
        print: impl Fn(&LogLine),
    ) -> anyhow::Result<()> {
        let mut start = query
            .since
            .unwrap_or_else(|| Utc::now() - chrono::Duration::hours(1));
        // The instances' agents send in batches, so a line can arrive after newer ones
        // from another instance: each poll looks this far back, and skips what it printed.
        let lookback = chrono::Duration::seconds(FOLLOW_LOOKBACK_S);
        let mut printed: HashMap<String, DateTime<Utc>> = HashMap::new();
        loop {
            let polled_at = Utc::now();
            for line in self.log_lines(query, start).await? {
                if printed.insert(line.id.clone(), line.time).is_none() {
                    print(&line);
                }
            }
            if !follow {
                return Ok(());
            }
            start = start.max(polled_at - lookback);
            printed.retain(|_, time| *time >= start);
            tokio::time::sleep(poll).await;
        }
    }
}

/// How far back `--follow` looks again at each poll, in seconds: longer than the agent's
/// batching (5 s by default) and its retries.
const FOLLOW_LOOKBACK_S: i64 = 60;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_chosen_by_tier_and_instance() {
        let web = LogQuery {
            tier: Some("web".into()),
            ..LogQuery::default()
        };
        assert!(web.wants_stream("i-0abc/web"));
        assert!(web.wants_stream("i-0abc/web-boot"));
        assert!(!web.wants_stream("i-0abc/worker"));
        let instance = LogQuery {
            instance: Some("i-0abc".into()),
            ..LogQuery::default()
        };
        assert!(instance.wants_stream("i-0abc/worker-boot"));
        assert!(!instance.wants_stream("i-0def/worker"));
    }

    #[test]
    fn a_video_id_becomes_a_quoted_term_and_nothing_else_does() {
        let video = |id: &str| LogQuery {
            video: Some(id.into()),
            ..LogQuery::default()
        };
        assert_eq!(
            video("0e4a8c1e-13f7-4b1e-9c55-3c1a2b9d7f00")
                .pattern()
                .unwrap(),
            Some("\"0e4a8c1e-13f7-4b1e-9c55-3c1a2b9d7f00\"".into())
        );
        assert!(video("x\" OR \"").pattern().is_err());
        assert!(video("").pattern().is_err());
        assert_eq!(LogQuery::default().pattern().unwrap(), None);
    }
}
