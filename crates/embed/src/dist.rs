//! Where `make setup` (scripts/setup.sh) keeps fetched files.

use std::path::PathBuf;

/// `$PGAI_HOME`, else `/var/lib/pgai-trigger` for root (outside `/root`, so an unprivileged
/// PostgreSQL user can reach it), else `${XDG_DATA_HOME:-~/.local/share}/pgai-trigger`.
/// The same rule as `scripts/env.sh`.
pub fn home() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    home_from(
        non_empty_var("PGAI_HOME"),
        root,
        non_empty_var("XDG_DATA_HOME"),
        user_home(),
    )
}

fn home_from(
    pgai_home: Option<String>,
    root: bool,
    xdg_data: Option<String>,
    user_home: PathBuf,
) -> PathBuf {
    match (pgai_home, root, xdg_data) {
        (Some(home), _, _) => home.into(),
        (None, true, _) => "/var/lib/pgai-trigger".into(),
        (None, false, Some(data)) => PathBuf::from(data).join("pgai-trigger"),
        (None, false, None) => user_home.join(".local/share/pgai-trigger"),
    }
}

/// An environment variable, with empty meaning unset (as `${VAR:-…}` in the shell).
pub(crate) fn non_empty_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub(crate) fn user_home() -> PathBuf {
    non_empty_var("HOME").unwrap_or_else(|| ".".into()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_rule_as_env_sh() {
        let home = || PathBuf::from("/home/ann");
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            home_from(some("/opt/p"), true, some("/x"), home()),
            PathBuf::from("/opt/p")
        );
        assert_eq!(
            home_from(None, true, some("/x"), home()),
            PathBuf::from("/var/lib/pgai-trigger")
        );
        assert_eq!(
            home_from(None, false, some("/x"), home()),
            PathBuf::from("/x/pgai-trigger")
        );
        assert_eq!(
            home_from(None, false, None, home()),
            PathBuf::from("/home/ann/.local/share/pgai-trigger")
        );
    }
}
