//! One module per subcommand.

pub mod bench;
pub mod compare_schedules;
pub mod device_check;
pub mod eval;
pub mod export;
pub mod sample;
pub mod schedule;
pub mod train;
pub mod train_classifier;
