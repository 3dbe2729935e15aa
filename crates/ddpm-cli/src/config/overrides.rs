//! `--set section.key=value`: command-line edits of a config before it is checked.

use anyhow::{bail, Context, Result};

/// Sets the dotted `key` of `item` (`key=value`) in `table`. The value is read as TOML
/// (`1e-3`, `true`, `[32, 64]`, `"text"`), or as a bare string when it is not TOML
/// (`sampling.sampler=ddim`). Tables on the way are created; a preset `model` name is
/// expanded into its table so that one of its keys can be changed.
pub fn apply_override(table: &mut toml::Table, item: &str) -> Result<()> {
    let Some((key, raw)) = item.split_once('=') else {
        bail!("expected key=value");
    };
    let path: Vec<&str> = key.trim().split('.').map(str::trim).collect();
    if path.iter().any(|p| p.is_empty()) {
        bail!("empty key in {key:?}");
    }
    let value = parse_value(raw.trim());
    let (last, parents) = path.split_last().context("empty key")?;
    let mut current = table;
    for (depth, part) in parents.iter().enumerate() {
        if depth == 0 && *part == "model" {
            expand_model_preset(current)?;
        }
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            _ => bail!("{} is not a table", path[..=depth].join(".")),
        };
    }
    current.insert(last.to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn expand_model_preset(table: &mut toml::Table) -> Result<()> {
    let name = match table.get("model") {
        Some(toml::Value::String(name)) => name.clone(),
        Some(_) => return Ok(()),
        None => "fashion-mnist".to_string(),
    };
    let config = ddpm_unet::UNetConfig::preset(&name).context("model")?;
    let value = toml::Value::try_from(&config)?;
    table.insert("model".into(), value);
    Ok(())
}
