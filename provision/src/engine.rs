//! The engine: observe the whole stack at once, apply changes in concurrent rounds ordered
//! by the names their properties mention, and delete with retries while AWS reports a
//! dependency. What each kind of resource needs is in `resources`.

use std::time::Duration;

use anyhow::{bail, Context};

use crate::aws::{Aws, DeleteError, ErrorKind, Ids, NamesById};
use crate::model::{Action, Change, Kind, Observed};
use crate::Safeguards;

impl Aws {
    // ------------------------------------------------------------------------ observe

    /// Every resource of the stack as it is now. `bucket` is the desired bucket's name.
    pub async fn observe(&self, bucket: &str) -> anyhow::Result<Vec<Observed>> {
        // Boxed: the SDK's futures are large, and four of them side by side overflow a
        // test thread's stack in debug builds.
        let (network, queues, bucket, mut monitoring, secrets, roles, alerts) = tokio::try_join!(
            Box::pin(crate::resources::network::observe(self)),
            Box::pin(crate::resources::queue::observe(self)),
            Box::pin(crate::resources::bucket::observe(self, bucket)),
            Box::pin(crate::resources::monitoring::observe(self)),
            Box::pin(crate::resources::secret::observe(self)),
            Box::pin(crate::resources::role::observe(self)),
            Box::pin(crate::resources::alerts::observe(self)),
        )?;
        let mut names: NamesById = network
            .iter()
            .map(|o| (o.id.clone(), o.resource.name.clone()))
            .collect();
        let (load_balancing, database) = tokio::try_join!(
            Box::pin(crate::resources::load_balancing::observe(self, &names)),
            Box::pin(crate::resources::database::observe(self, &names)),
        )?;
        names.extend(
            load_balancing
                .iter()
                .map(|o| (o.id.clone(), o.resource.name.clone())),
        );
        let compute = Box::pin(crate::resources::compute::observe(self, &names)).await?;
        crate::resources::monitoring::resolve_actions(&mut monitoring, &compute);
        Ok(network
            .into_iter()
            .chain(queues)
            .chain(bucket)
            .chain(alerts)
            .chain(monitoring)
            .chain(load_balancing)
            .chain(database)
            .chain(compute)
            .chain(secrets)
            .chain(roles)
            .collect())
    }

    // -------------------------------------------------------------------------- apply

    /// Carries out `changes`, as many at once as their references allow (a resource waits
    /// for those its properties name). Orphans are left alone; `down` removes them.
    pub async fn apply(&self, changes: &[Change], safeguards: &Safeguards) -> anyhow::Result<()> {
        let mut ids: Ids = changes
            .iter()
            .filter_map(|c| c.id.clone().map(|id| (c.name.clone(), id)))
            .collect();
        let mut pending: Vec<&Change> = changes
            .iter()
            .filter(|c| !matches!(c.action, Action::Ok | Action::Orphan))
            .collect();
        // Rounds: everything whose references are settled goes at once.
        while !pending.is_empty() {
            let names: std::collections::HashSet<&str> =
                pending.iter().map(|c| c.name.as_str()).collect();
            let (ready, waiting): (Vec<&Change>, Vec<&Change>) = pending
                .into_iter()
                .partition(|c| !references(c).any(|r| r != c.name && names.contains(r)));
            anyhow::ensure!(
                !ready.is_empty(),
                "resources reference each other in a cycle: {names:?}"
            );
            let results = futures_util::future::join_all(
                ready.iter().map(|c| self.apply_one(c, &ids, safeguards)),
            )
            .await;
            let mut first_error = None;
            for (change, result) in ready.iter().zip(results) {
                match result {
                    Ok(Some(id)) => {
                        ids.insert(change.name.clone(), id);
                    }
                    Ok(None) => {}
                    Err(e) => first_error = first_error.or(Some(e)),
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
            pending = waiting;
        }
        Ok(())
    }

    /// One change; returns the new id when it created something.
    async fn apply_one(
        &self,
        change: &Change,
        ids: &Ids,
        safeguards: &Safeguards,
    ) -> anyhow::Result<Option<String>> {
        let what = format!("{} {}", change.kind, change.name);
        let started = std::time::Instant::now();
        let result = match &change.action {
            Action::Ok | Action::Orphan => return Ok(None),
            Action::Create => {
                eprintln!("  creating {what}");
                crate::resources::create(self, change, ids, safeguards)
                    .await
                    .with_context(|| format!("create {what}"))
                    .map(Some)
            }
            Action::Update(_) => {
                eprintln!("  updating {what}");
                let id = ids.get(&change.name).unwrap_or_default().to_owned();
                crate::resources::update(self, change, &id, ids)
                    .await
                    .with_context(|| format!("update {what}"))
                    .map(|()| None)
            }
            Action::Replace(_) => {
                eprintln!("  replacing {what} (delete, then create)");
                let id = ids.get(&change.name).unwrap_or_default().to_owned();
                self.delete(change.kind, &change.name, &id, safeguards)
                    .await
                    .with_context(|| format!("delete {what}"))?;
                crate::resources::create(self, change, ids, safeguards)
                    .await
                    .with_context(|| format!("create {what}"))
                    .map(Some)
            }
        };
        if started.elapsed().as_secs() >= 5 {
            eprintln!("  {what}: {:.0} s", started.elapsed().as_secs_f64());
        }
        result
    }

    // ------------------------------------------------------------------------- delete

    /// Deletes one resource, retrying while AWS says something still depends on it.
    pub async fn delete(
        &self,
        kind: Kind,
        name: &str,
        id: &str,
        safeguards: &Safeguards,
    ) -> anyhow::Result<()> {
        let mut wait = Duration::from_secs(2);
        for attempt in 1..=6 {
            match crate::resources::delete(self, kind, id, safeguards).await {
                Ok(()) => return Ok(()),
                Err(DeleteError::Aws(ErrorKind::NotFound, _)) => return Ok(()),
                Err(DeleteError::Aws(ErrorKind::DependencyViolation | ErrorKind::Throttled, e))
                    if attempt < 6 =>
                {
                    eprintln!(
                        "  waiting {}s for what depends on {kind} {name} to go ({e})",
                        wait.as_secs()
                    );
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(DeleteError::Aws(_, e)) => return Err(e),
                Err(DeleteError::Other(e)) => return Err(e),
            }
        }
        bail!("{kind} {name} is still in use")
    }
}

/// The names a change's desired properties mention: what must exist before it.
fn references(change: &Change) -> impl Iterator<Item = &str> {
    change
        .desired
        .iter()
        // A script mentions names in passing; what it depends on is listed beside it.
        .filter(|(field, _)| field.as_str() != "user_data")
        .map(|(_, value)| value)
        // `=` too: a dimension such as `LoadBalancer=<name>` waits for what it names.
        .flat_map(|v| v.split([',', ';', ' ', '=']))
        .filter(|token| !token.is_empty())
}
