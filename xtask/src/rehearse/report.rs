//! The rehearsal's final table: one line per step, pass or fail, and what is not rehearsed.

/// What cannot be rehearsed here, said with every run.
const NOT_REHEARSED: &str = "an ALB itself (HAProxy with the target group's checks stands \
in), auto scaling and instance refresh, several instances per tier, the CloudWatch agent's \
download (logs.cloudwatch_agent = false here), IAM permissions (moto does not evaluate \
them), and RDS itself (a local PostgreSQL with TLS stands in)";

/// What the game day cannot rehearse.
const NOT_REHEARSED_ON_GAME_DAY: &str = "an ALB itself (HAProxy with the target group's \
checks stands in), EC2 and Auto Scaling themselves (moto holds the groups and launches their \
instances; the harness boots a container for each and runs the worker policy, lifecycle hooks, \
instance refreshes and replacements), alarms going off by themselves (moto does not evaluate \
them), the web tier's CPU policy (the web group keeps its desired capacity), the \
CloudWatch agent's download, IAM permissions, and RDS itself (a local PostgreSQL with TLS \
stands in; its failover is a stop and start)";

/// One line of the final table.
struct Step {
    name: String,
    outcome: Result<String, String>,
}

pub(super) struct Report {
    steps: Vec<Step>,
    not_rehearsed: &'static str,
}

impl Report {
    pub(super) fn new(game_day: bool) -> Self {
        Self {
            steps: Vec::new(),
            not_rehearsed: if game_day {
                NOT_REHEARSED_ON_GAME_DAY
            } else {
                NOT_REHEARSED
            },
        }
    }

    pub(super) fn pass(&mut self, name: &str, detail: String) {
        eprintln!("rehearse: {name}: {detail}");
        self.steps.push(Step {
            name: name.to_owned(),
            outcome: Ok(detail),
        });
    }

    pub(super) fn fail(&mut self, name: &str, error: &anyhow::Error) {
        eprintln!("rehearse: {name} FAILED: {error:#}");
        self.steps.push(Step {
            name: name.to_owned(),
            outcome: Err(format!("{error:#}")),
        });
    }

    pub(super) fn print(&self) {
        println!("\n== cargo xtask rehearse ==");
        for step in &self.steps {
            let (verdict, detail) = match &step.outcome {
                Ok(detail) => ("pass", detail.as_str()),
                Err(error) => ("FAIL", error.as_str()),
            };
            println!("  {verdict:<5} {:<34} {detail}", step.name);
        }
        println!("  not rehearsed: {}", self.not_rehearsed);
    }

    pub(super) fn passed(&self) -> bool {
        self.steps.iter().all(|s| s.outcome.is_ok())
    }
}
