//! One module per subcommand.

pub mod bench;
pub mod compare_schedules;
pub mod sample;
pub mod schedule;
pub mod train;
