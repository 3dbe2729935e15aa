//! One module per subcommand.

pub mod compare_schedules;
pub mod schedule;
