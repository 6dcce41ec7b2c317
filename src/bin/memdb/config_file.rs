//! `--config FILE`: a TOML file whose tables set flags by name.

use std::path::PathBuf;

use anyhow::Context;

use crate::args::Cli;

/// `--config FILE` (or `MEMDB_CONFIG`): a TOML file with a table per role (`[leader]`,
/// `[replica]`, `[local-replica]`) whose keys are the long flag names. Each setting
/// becomes the flag's `MEMDB_*` variable unless that is already set, so the precedence
/// is: command-line flag, then environment variable, then config file, then default.
/// Unknown roles and keys are errors (a typo must not be silently ignored).
pub fn apply_config_file(args: &[std::ffi::OsString]) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let mut path = std::env::var_os("MEMDB_CONFIG").map(PathBuf::from);
    let mut role = None;
    let mut it = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = it.next() {
        if a == "--config" {
            path = it.next().map(PathBuf::from);
        } else if let Some(p) = a.strip_prefix("--config=") {
            path = Some(PathBuf::from(p));
        } else if role.is_none() && ["leader", "replica", "local-replica"].contains(&a.as_str()) {
            role = Some(a);
        }
    }
    let Some(path) = path else { return Ok(()) };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    let doc: toml::Table = toml::from_str(&text)
        .with_context(|| format!("parsing the config file {}", path.display()))?;
    let cmd = Cli::command();
    for (section, table) in &doc {
        let Some(sub) = cmd.find_subcommand(section) else {
            anyhow::bail!(
                "{}: unknown table [{section}]: expected [leader], [replica] or [local-replica]",
                path.display()
            );
        };
        let table = table
            .as_table()
            .with_context(|| format!("{}: [{section}] must be a table", path.display()))?;
        for (key, value) in table {
            let arg = sub
                .get_arguments()
                .find(|a| a.get_long() == Some(key.as_str()))
                .with_context(|| {
                    format!("{}: unknown setting {key:?} in [{section}]", path.display())
                })?;
            let env = arg.get_env().with_context(|| {
                format!("{}: {key:?} cannot be set from a file", path.display())
            })?;
            let value = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Array(items) => items
                    .iter()
                    .map(|v| match v {
                        toml::Value::String(s) => Ok(s.clone()),
                        toml::Value::Integer(i) => Ok(i.to_string()),
                        other => Err(anyhow::anyhow!(
                            "{}: {key:?} holds an unsupported value {other:?}",
                            path.display()
                        )),
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?
                    .join(","),
                other => anyhow::bail!(
                    "{}: {key:?} has an unsupported value {other:?}",
                    path.display()
                ),
            };
            // Only the running role's table applies; the others are still checked.
            if role.as_deref() == Some(section.as_str()) && std::env::var_os(env).is_none() {
                // SAFETY: called at the top of `main`, before any thread is started.
                #[allow(unsafe_code)]
                unsafe {
                    std::env::set_var(env, value)
                };
            }
        }
    }
    Ok(())
}
