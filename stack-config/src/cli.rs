//! Command-line flags that both `provision` and `cargo xtask` offer: declared once here,
//! so the xtask command that passes them on cannot drift from the one that reads them.

use clap::Args;

/// What `down` may do beyond deleting the stack's resources (each off by default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct DownFlags {
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Delete the database without the final snapshot `down` otherwise takes.
    #[arg(long)]
    pub skip_final_snapshot: bool,
    /// Delete the token secret at once instead of after its 7-day recovery window.
    #[arg(long)]
    pub purge: bool,
    /// Delete the bucket too, with every video and published release in it (kept
    /// otherwise).
    #[arg(long)]
    pub delete_videos: bool,
}

impl DownFlags {
    /// The flags that are set, as arguments to pass on to `provision down`.
    pub fn to_args(&self) -> Vec<&'static str> {
        [
            (self.yes, "--yes"),
            (self.skip_final_snapshot, "--skip-final-snapshot"),
            (self.purge, "--purge"),
            (self.delete_videos, "--delete-videos"),
        ]
        .into_iter()
        .filter_map(|(set, flag)| set.then_some(flag))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::DownFlags;

    #[derive(Parser)]
    struct Down {
        #[command(flatten)]
        flags: DownFlags,
    }

    fn parse(args: &[&str]) -> DownFlags {
        Down::try_parse_from(std::iter::once("down").chain(args.iter().copied()))
            .unwrap()
            .flags
    }

    #[test]
    fn the_flags_passed_on_are_read_back_as_the_same_flags() {
        for bits in 0..16u8 {
            let flags = DownFlags {
                yes: bits & 1 != 0,
                skip_final_snapshot: bits & 2 != 0,
                purge: bits & 4 != 0,
                delete_videos: bits & 8 != 0,
            };
            assert_eq!(parse(&flags.to_args()), flags, "{:?}", flags.to_args());
        }
        assert_eq!(parse(&[]), DownFlags::default(), "nothing is set unasked");
    }
}
