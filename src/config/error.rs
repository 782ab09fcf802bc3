//! Configuration errors that name the variable and the value at fault.

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// A setting that stops start-up. `main` prints it and exits with [`ConfigError::exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// One variable (or flag) has a value that cannot be used.
    #[error("invalid configuration: {name}={value:?}: {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: String,
    },
    /// Two settings that are each valid contradict each other.
    #[error("invalid configuration: {first}={first_value} and {second}={second_value}: {reason}")]
    Conflict {
        first: String,
        first_value: String,
        second: String,
        second_value: String,
        reason: String,
    },
    /// `--help` or `--version`: not an error, but start-up stops with clap's text.
    #[error("{0}")]
    Display(String),
    /// Any other command-line mistake, in clap's words.
    #[error("{0}")]
    Usage(String),
}

impl ConfigError {
    pub fn invalid(name: &str, value: &str, reason: &str) -> Self {
        ConfigError::Invalid {
            name: name.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }

    pub fn conflict(
        first: (&str, impl ToString),
        second: (&str, impl ToString),
        reason: &str,
    ) -> Self {
        ConfigError::Conflict {
            first: first.0.to_string(),
            first_value: first.1.to_string(),
            second: second.0.to_string(),
            second_value: second.1.to_string(),
            reason: reason.to_string(),
        }
    }

    /// 0 for help and version, 2 for every real error.
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Display(_) => 0,
            _ => 2,
        }
    }

    /// Turns a clap error into one that names the environment variable when the bad value came
    /// from the environment rather than the command line.
    pub(super) fn from_clap(
        err: clap::Error,
        command: &clap::Command,
        env: &[(String, String)],
    ) -> Self {
        match err.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                return ConfigError::Display(err.render().to_string());
            }
            ErrorKind::InvalidValue | ErrorKind::ValueValidation => {}
            _ => return ConfigError::Usage(err.render().to_string()),
        }
        let text = |kind| match err.get(kind) {
            Some(ContextValue::String(s)) => Some(s.clone()),
            _ => None,
        };
        let (Some(arg), Some(value)) = (
            text(ContextKind::InvalidArg),
            text(ContextKind::InvalidValue),
        ) else {
            return ConfigError::Usage(err.render().to_string());
        };
        let reason = std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "invalid value".to_string());
        let flag_and_env = all_args(command).find_map(|a| {
            let long = a.get_long()?;
            let flag = format!("--{long}");
            let names_this_flag = arg == flag || arg.starts_with(&format!("{flag} "));
            names_this_flag.then(|| {
                (
                    flag,
                    a.get_env().and_then(|e| e.to_str()).map(str::to_string),
                )
            })
        });
        match flag_and_env {
            Some((_, Some(env_name))) if env.iter().any(|(k, v)| *k == env_name && *v == value) => {
                ConfigError::Invalid {
                    name: env_name,
                    value,
                    reason,
                }
            }
            Some((flag, _)) => ConfigError::Invalid {
                name: flag,
                value,
                reason,
            },
            None => ConfigError::Invalid {
                name: arg,
                value,
                reason,
            },
        }
    }
}

/// Every argument of the command and its subcommands.
fn all_args(command: &clap::Command) -> impl Iterator<Item = &clap::Arg> {
    command
        .get_arguments()
        .chain(command.get_subcommands().flat_map(|s| s.get_arguments()))
}
