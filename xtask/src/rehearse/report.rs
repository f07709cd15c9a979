//! The rehearsal's final table: one line per step, pass or fail, and what is not rehearsed.

/// What cannot be rehearsed here, said with every run.
const NOT_REHEARSED: &str = "an ALB itself (HAProxy with the target group's checks stands \
in), auto scaling and instance refresh, several instances per tier, the CloudWatch agent's \
download (logs.cloudwatch_agent = false here), IAM permissions (moto does not evaluate \
them), and RDS itself (a local PostgreSQL with TLS stands in)";

/// One line of the final table.
struct Step {
    name: String,
    outcome: Result<String, String>,
}

#[derive(Default)]
pub(super) struct Report {
    steps: Vec<Step>,
}

impl Report {
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
        println!("  not rehearsed: {NOT_REHEARSED}");
    }

    pub(super) fn passed(&self) -> bool {
        self.steps.iter().all(|s| s.outcome.is_ok())
    }
}
