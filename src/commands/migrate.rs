//! `cutover migrate`: creates or upgrades the warehouse schema.

use std::process::ExitCode;

use anyhow::Result;

use super::warehouse;
use crate::cli::Global;

/// Migrates the warehouse and says so.
///
/// # Errors
/// The warehouse cannot be reached or migrated.
pub async fn command(g: &Global) -> Result<ExitCode> {
    let wh = warehouse(g).await?;
    println!("warehouse {} is migrated", wh.display_url);
    Ok(ExitCode::SUCCESS)
}
