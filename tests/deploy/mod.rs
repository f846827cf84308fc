//! The checks of tests/deploy_files.rs, one module per subject. Each check is a function from
//! file text to a list of problems.

use super::*;

pub mod image;
pub mod lint;
pub mod platform;
