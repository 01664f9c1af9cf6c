//! Where `make setup` (scripts/setup.sh) keeps fetched files.

use std::path::PathBuf;

/// `$PGAI_HOME`, else `/var/lib/pgai-trigger` for root (outside `/root`, so an unprivileged
/// PostgreSQL user can reach it), else `${XDG_DATA_HOME:-~/.local/share}/pgai-trigger`.
/// The same rule as `scripts/env.sh`.
pub fn home() -> PathBuf {
    if let Some(home) = non_empty_var("PGAI_HOME") {
        return home.into();
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return "/var/lib/pgai-trigger".into();
    }
    let data = non_empty_var("XDG_DATA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| user_home().join(".local/share"));
    data.join("pgai-trigger")
}

pub(crate) fn non_empty_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub(crate) fn user_home() -> PathBuf {
    non_empty_var("HOME").unwrap_or_else(|| ".".into()).into()
}
