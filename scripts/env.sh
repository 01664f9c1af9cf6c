# Sourced by the Makefile's recipes and scripts/setup.sh: where pgai-trigger keeps its fetched
# files and default data. Root gets a path outside /root so the unprivileged PostgreSQL user can
# reach it; everyone else gets their XDG data directory. The Rust side resolves the same default
# (pgai_embed::dist::home).
if [ -z "${PGAI_HOME:-}" ]; then
    if [ "$(id -u)" = 0 ]; then
        PGAI_HOME=/var/lib/pgai-trigger
    else
        PGAI_HOME="${XDG_DATA_HOME:-$HOME/.local/share}/pgai-trigger"
    fi
fi
export PGAI_HOME
