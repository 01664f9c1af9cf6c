//! The database side of vectorizers: the catalog `pgai.vectorizers`, its notify trigger, and the
//! PL/pgSQL functions that create, alter, drop and report on vectorizers (installed by `db init`).
//!
//! Each function call is one statement, hence one transaction: a refused call leaves nothing
//! half-created. Per-vectorizer capture functions and triggers are generated with
//! `format('%I', …)` / `format('%L', …)`: every identifier and literal is quoted, no user text
//! reaches SQL raw. The row-state predicates of `pgai.vectorizer_status` are the Rust
//! [`RowState`] ones, pasted into the DDL as literals, so there is one definition of row state.

use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::queue::{
    RowState, Table, CHANNEL_NEEDED, HAS_VECTOR_IN_PLACE, HAS_VECTOR_QUEUED, MAX_PAYLOAD_ID_BYTES,
};
use crate::vectorizer::CHANNEL_CATALOG;

/// A SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The idempotent DDL of schema `pgai`: the catalog, its notify trigger, the vectorizer functions
/// and the status view.
pub fn ddl() -> String {
    let in_place = |r: RowState| literal(&r.predicate());
    let queued = |r: RowState| literal(&r.predicate_with(HAS_VECTOR_QUEUED));
    let replacements: [(&str, String); 17] = [
        ("@CHANNEL_CATALOG@", literal(CHANNEL_CATALOG)),
        ("@CHANNEL_NEEDED@", literal(CHANNEL_NEEDED)),
        ("@MAX_PAYLOAD@", MAX_PAYLOAD_ID_BYTES.to_string()),
        ("@DEFAULT_MODEL@", literal(pgai_embed::MODEL_NAME)),
        ("@DEFAULT_DIM@", pgai_embed::DIM.to_string()),
        ("@IP_PENDING@", in_place(RowState::Pending)),
        ("@IP_PROCESSING@", in_place(RowState::Processing)),
        ("@IP_COMPLETED@", in_place(RowState::Completed)),
        ("@IP_FAILED@", in_place(RowState::Failed)),
        ("@IP_NOT_QUEUED@", in_place(RowState::NotQueued)),
        ("@IP_HAS_VECTOR@", literal(HAS_VECTOR_IN_PLACE)),
        ("@Q_PENDING@", queued(RowState::Pending)),
        ("@Q_PROCESSING@", queued(RowState::Processing)),
        ("@Q_COMPLETED@", queued(RowState::Completed)),
        ("@Q_FAILED@", queued(RowState::Failed)),
        ("@Q_NOT_QUEUED@", queued(RowState::NotQueued)),
        ("@Q_HAS_VECTOR@", literal(HAS_VECTOR_QUEUED)),
    ];
    let mut sql = DDL.replace("@QUEUED@", &literal(&RowState::queued_predicate()));
    for (token, value) in replacements {
        sql = sql.replace(token, &value);
    }
    sql
}

/// Registers (or updates the model and dimensions of) the daemon's configured table as the
/// `in_place` vectorizer of the same name. The catalog must exist (`db init`).
///
/// A least-privileged daemon role may only read the catalog, or not see it at all: when the
/// catalog row already says what this daemon would write, nothing is written (the function's
/// `INSERT … ON CONFLICT` needs INSERT and UPDATE on the catalog even when it changes nothing),
/// and a role without access to the catalog still serves its table (`db init` registered it).
pub async fn register_in_place(
    client: &Client,
    table: &Table,
    model: &str,
    dim: usize,
) -> Result<()> {
    let not_installed = || {
        Error::Schema(
            "the vectorizer catalog is not installed in this database: run `pgai-trigger db init`"
                .into(),
        )
    };
    let current = client
        .query_opt(
            "SELECT v.model = $2 AND v.dimensions = $3 AND v.destination = 'in_place'
                    AND v.source_schema IS NOT DISTINCT FROM
                        (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                          WHERE c.oid = to_regclass(quote_ident($1)))
               FROM pgai.vectorizers v WHERE v.name = $1",
            &[&table.name(), &model, &(dim as i32)],
        )
        .await;
    match current {
        Ok(Some(row)) if row.get::<_, Option<bool>>(0) == Some(true) => return Ok(()),
        Ok(_) => {}
        Err(e) => match e.as_db_error().map(|d| d.code().code()) {
            // 3F000 invalid_schema_name / 42P01 undefined_table: a database from before
            // vectorizers.
            Some("3F000") | Some("42P01") => return Err(not_installed()),
            // 42501 insufficient_privilege: the role has only the table's rights.
            Some("42501") => {
                tracing::warn!(
                    error = %crate::error::db_message(&e),
                    "the daemon's role cannot read the vectorizer catalog: serving its table only"
                );
                return Ok(());
            }
            _ => return Err(Error::Db(e)),
        },
    }
    client
        .execute(
            "SELECT pgai.register_in_place($1, $2, $3)",
            &[&table.name(), &model, &(dim as i32)],
        )
        .await
        .map_err(|e| match e.as_db_error().map(|d| d.code().code()) {
            // 42883 undefined_function: a database from before vectorizers.
            Some("3F000") | Some("42883") => not_installed(),
            Some("42501") => Error::Schema(format!(
                "the catalog row of {0} does not name this daemon's model {model} ({dim} \
                 dimensions) and the daemon's role may not update it: have the owner run \
                 SELECT pgai.register_in_place('{0}', '{model}', {dim}) ({1})",
                table.name(),
                crate::error::db_message(&e)
            )),
            _ => Error::Db(e),
        })?;
    Ok(())
}

/// The statement `db init` runs after [`ddl`]: registers `table` unless a catalog row of that
/// name exists (the daemon re-registers it with its own model when it starts).
pub(crate) fn register_unless_present(table: &Table, model: &str, dim: usize) -> String {
    let name = literal(table.name());
    format!(
        "SELECT pgai.register_in_place({name}, {}, {dim}) \
          WHERE NOT EXISTS (SELECT 1 FROM pgai.vectorizers WHERE name = {name});",
        literal(model)
    )
}

/// Removes the `in_place` catalog row of `table`, if the catalog exists (`db recreate`, before the
/// table is created and registered again).
pub(crate) fn unregister(table: &Table) -> String {
    format!(
        "DO $unregister$ BEGIN
    IF to_regclass('pgai.vectorizers') IS NOT NULL THEN
        DELETE FROM pgai.vectorizers WHERE name = {} AND destination = 'in_place';
    END IF;
END $unregister$;",
        literal(table.name())
    )
}

const DDL: &str = r#"
CREATE SCHEMA IF NOT EXISTS pgai;

CREATE TABLE IF NOT EXISTS pgai.vectorizers (
    name           text PRIMARY KEY CHECK (name ~ '^[a-z_][a-z0-9_]{0,39}$'),
    source_schema  text NOT NULL,
    source_table   text NOT NULL,
    key_columns    text[] NOT NULL,
    key_types      text[] NOT NULL,
    text_columns   text[] NOT NULL,
    template       text NOT NULL,
    text_sql       text NOT NULL,
    chunk_tokens   integer,
    chunk_overlap  integer,
    destination    text NOT NULL CHECK (destination IN ('in_place', 'column', 'table')),
    dest_schema    text NOT NULL,
    dest_name      text NOT NULL,
    view_name      text,
    created_column boolean NOT NULL DEFAULT false,
    queue_schema   text NOT NULL,
    queue_table    text NOT NULL,
    channel        text NOT NULL,
    model          text NOT NULL DEFAULT @DEFAULT_MODEL@,
    dimensions     integer NOT NULL DEFAULT @DEFAULT_DIM@,
    index_kind     text NOT NULL DEFAULT 'hnsw',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
-- Every role may read the declarations (like pg_catalog): a daemon running with least
-- privilege must see which vectorizers to serve. Queue and chunk tables stay private.
GRANT USAGE ON SCHEMA pgai TO PUBLIC;
GRANT SELECT ON pgai.vectorizers TO PUBLIC;

-- Daemons LISTEN here and reload the catalog: a vectorizer is served within a second.
CREATE OR REPLACE FUNCTION pgai.notify_vectorizers() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    PERFORM pg_notify(@CHANNEL_CATALOG@, CASE WHEN TG_OP = 'DELETE' THEN OLD.name ELSE NEW.name END);
    RETURN NULL;
END
$fn$;
CREATE OR REPLACE TRIGGER vectorizers_notify
    AFTER INSERT OR UPDATE OR DELETE ON pgai.vectorizers
    FOR EACH ROW EXECUTE FUNCTION pgai.notify_vectorizers();

-- The daemon's configured table as a catalog row: its own queue, vector in its `embedding`.
CREATE OR REPLACE FUNCTION pgai.register_in_place(table_name text, model text, dimensions integer)
RETURNS void LANGUAGE plpgsql AS $fn$
-- No SET search_path: the table name is resolved as the caller sees it (every name below is
-- qualified, and pg_catalog comes first anyway).
#variable_conflict use_column
DECLARE
    v_table text := $1;
    v_model text := $2;
    v_dim   integer := $3;
    rel     regclass;
    nsp     text;
    other   text;
BEGIN
    IF v_table IS NULL OR v_table !~ '^[a-z_][a-z0-9_]{0,39}$' THEN
        RAISE EXCEPTION 'table name "%" is not a valid vectorizer name (lower-case letters, digits and _, at most 40 bytes)', v_table;
    END IF;
    IF v_model IS NULL OR v_model = '' THEN
        RAISE EXCEPTION 'register_in_place needs a model';
    END IF;
    IF v_dim IS NULL OR v_dim < 1 OR v_dim > 16000 THEN
        RAISE EXCEPTION 'dimensions must be between 1 and 16000, got %', v_dim;
    END IF;
    rel := to_regclass(quote_ident(v_table));
    IF rel IS NULL THEN
        RAISE EXCEPTION 'table "%" does not exist: run `pgai-trigger db init`', v_table;
    END IF;
    SELECT n.nspname INTO nsp FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = rel;
    SELECT v.destination INTO other FROM pgai.vectorizers v WHERE v.name = v_table;
    IF other IS NOT NULL AND other <> 'in_place' THEN
        RAISE EXCEPTION 'vectorizer "%" already exists with destination %; the daemon''s table cannot take its name', v_table, other;
    END IF;
    INSERT INTO pgai.vectorizers AS v (name, source_schema, source_table, key_columns, key_types,
        text_columns, template, text_sql, destination, dest_schema, dest_name, queue_schema,
        queue_table, channel, model, dimensions, index_kind)
    VALUES (v_table, nsp, v_table, ARRAY['id'], ARRAY['text'], ARRAY['content'], '{content}',
        'concat((s."content")::text)', 'in_place', nsp, 'embedding', nsp, v_table,
        @CHANNEL_NEEDED@, v_model, v_dim, 'hnsw')
    ON CONFLICT (name) DO UPDATE
       SET model = EXCLUDED.model, dimensions = EXCLUDED.dimensions,
           source_schema = EXCLUDED.source_schema, dest_schema = EXCLUDED.dest_schema,
           queue_schema = EXCLUDED.queue_schema, updated_at = now()
     -- Unchanged: no update, so no catalog notification to every daemon.
     WHERE (v.model, v.dimensions, v.source_schema) IS DISTINCT FROM
           (EXCLUDED.model, EXCLUDED.dimensions, EXCLUDED.source_schema);
END
$fn$;

CREATE OR REPLACE FUNCTION pgai.create_vectorizer(
    name text,
    source text,
    text_column text DEFAULT NULL,
    template text DEFAULT NULL,
    chunk_tokens integer DEFAULT NULL,
    chunk_overlap integer DEFAULT NULL,
    destination text DEFAULT NULL,
    model text DEFAULT @DEFAULT_MODEL@,
    dimensions integer DEFAULT @DEFAULT_DIM@,
    index_kind text DEFAULT 'hnsw')
RETURNS pgai.vectorizers LANGUAGE plpgsql AS $fn$
-- No SET search_path: the source is resolved as the caller sees it; every name below is
-- qualified (pgvector's through its schema).
#variable_conflict use_column
DECLARE
    v_name      text := $1;
    v_source    text := $2;
    v_column    text := $3;
    v_template  text := $4;
    v_tokens    integer := $5;
    v_overlap   integer := $6;
    v_dest      text := coalesce($7, 'table');
    v_model     text := $8;
    v_dim       integer := $9;
    v_index     text := $10;
    rel         regclass;
    relkind     "char";
    src_schema  text;
    src_table   text;
    src         text;           -- the source, quoted and qualified
    src_label   text;           -- the source in messages
    keys        text[];
    key_types   text[];
    text_cols   text[] := '{}';
    args_s      text[] := '{}'; -- concat() arguments over alias s
    args_new    text[] := '{}'; -- the same over NEW
    lit         text := '';
    i           integer := 1;
    j           integer;
    len         integer;
    c           text;
    col         text;
    kind        text;
    dest_schema text;
    dest_name   text;
    view_name   text;
    queue       text;
    dest        text;
    text_s      text;
    text_new    text;
    canon_s     text;
    canon_new   text;
    canon_old   text;
    key_list    text;
    key_new     text;
    key_s       text;
    qkey_list   text;
    match_new   text;
    match_old   text;
    orphan_q    text;
    orphan_c    text;
    update_of   text;
    delete_chunks_old text := '';
    delete_chunks_new text := '';
    null_column text := '';
    body        text;
    fn_capture  text;
    fn_truncate text;
    channel     text;
    part        regclass;
    vec         text;           -- pgvector's schema, quoted
    result      pgai.vectorizers;
BEGIN
    -- Name.
    IF v_name IS NULL OR v_name !~ '^[a-z_][a-z0-9_]{0,39}$' THEN
        RAISE EXCEPTION 'vectorizer name "%" is not valid: use lower-case letters, digits and _, starting with a letter or _, at most 40 bytes', v_name;
    END IF;
    IF EXISTS (SELECT 1 FROM pgai.vectorizers v WHERE v.name = v_name) THEN
        RAISE EXCEPTION 'vectorizer "%" already exists', v_name;
    END IF;

    -- Source: an ordinary or partitioned table the caller can read, with a primary key.
    IF v_source IS NULL THEN
        RAISE EXCEPTION 'create_vectorizer needs a source table';
    END IF;
    BEGIN
        rel := to_regclass(v_source);
    EXCEPTION WHEN OTHERS THEN
        rel := NULL;
    END;
    IF rel IS NULL THEN
        RAISE EXCEPTION 'source table "%" does not exist', v_source;
    END IF;
    SELECT n.nspname, cl.relname, cl.relkind INTO src_schema, src_table, relkind
      FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace WHERE cl.oid = rel;
    src := format('%I.%I', src_schema, src_table);
    src_label := src_schema || '.' || src_table;
    IF relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'source % is not a table (it is a %)', src_label,
            CASE relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                         WHEN 'f' THEN 'foreign table' WHEN 'S' THEN 'sequence'
                         WHEN 'i' THEN 'index' WHEN 'I' THEN 'index' ELSE 'relation of kind ' || relkind::text END;
    END IF;
    IF NOT has_table_privilege(rel, 'SELECT') THEN
        RAISE EXCEPTION 'source % is not readable by role % (it needs SELECT)', src_label, current_user;
    END IF;
    SELECT array_agg(a.attname::text ORDER BY k.ord), array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY k.ord)
      INTO keys, key_types
      FROM pg_index x
      CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
     WHERE x.indrelid = rel AND x.indisprimary;
    IF keys IS NULL THEN
        RAISE EXCEPTION 'source % has no primary key', src_label;
    END IF;

    -- The text: a column, or a template of {column} placeholders ({{ and }} are literal braces).
    IF (v_column IS NULL) = (v_template IS NULL) THEN
        RAISE EXCEPTION 'give exactly one of text_column and template (got %)',
            CASE WHEN v_column IS NULL THEN 'neither' ELSE 'both' END;
    END IF;
    IF v_column IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = rel AND a.attname = v_column
                          AND a.attnum > 0 AND NOT a.attisdropped) THEN
            RAISE EXCEPTION 'text column "%" is not a column of %', v_column, src_label;
        END IF;
        IF v_column ~ '[{}]' THEN
            RAISE EXCEPTION 'text column "%" has a brace in its name; it cannot be stored as a template', v_column;
        END IF;
        v_template := '{' || v_column || '}';
    END IF;
    len := length(v_template);
    WHILE i <= len LOOP
        c := substr(v_template, i, 1);
        IF c = '{' AND substr(v_template, i + 1, 1) = '{' THEN
            lit := lit || '{';
            i := i + 2;
        ELSIF c = '}' AND substr(v_template, i + 1, 1) = '}' THEN
            lit := lit || '}';
            i := i + 2;
        ELSIF c = '}' THEN
            RAISE EXCEPTION 'template has an unbalanced "}" at character % (write }} for a literal brace)', i;
        ELSIF c = '{' THEN
            j := strpos(substr(v_template, i + 1), '}');
            col := CASE WHEN j > 0 THEN substr(v_template, i + 1, j - 1) END;
            IF col IS NULL OR col = '' OR strpos(col, '{') > 0 THEN
                RAISE EXCEPTION 'template has an unbalanced "{" at character % (write {{ for a literal brace)', i;
            END IF;
            IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = rel AND a.attname = col
                              AND a.attnum > 0 AND NOT a.attisdropped) THEN
                RAISE EXCEPTION 'template names column "%", which % does not have', col, src_label;
            END IF;
            IF lit <> '' THEN
                args_s := args_s || quote_literal(lit);
                args_new := args_new || quote_literal(lit);
                lit := '';
            END IF;
            args_s := args_s || format('(s.%I)::text', col);
            args_new := args_new || format('(NEW.%I)::text', col);
            IF NOT col = ANY (text_cols) THEN
                text_cols := text_cols || col;
            END IF;
            i := i + j + 1;
        ELSE
            lit := lit || c;
            i := i + 1;
        END IF;
    END LOOP;
    IF cardinality(text_cols) = 0 THEN
        RAISE EXCEPTION 'template names no column (write {column} for a column''s value)';
    END IF;
    IF lit <> '' THEN
        args_s := args_s || quote_literal(lit);
        args_new := args_new || quote_literal(lit);
    END IF;
    -- concat() renders NULL as '': the text is never NULL.
    text_s := format('concat(%s)', array_to_string(args_s, ', '));
    text_new := format('concat(%s)', array_to_string(args_new, ', '));

    -- Destination.
    IF v_dest = 'table' THEN
        kind := 'table'; dest_schema := src_schema; dest_name := v_name || '_chunks';
    ELSIF v_dest LIKE 'table:%' THEN
        kind := 'table';
        dest_name := substr(v_dest, 7);
        IF strpos(dest_name, '.') > 0 THEN
            dest_schema := split_part(dest_name, '.', 1);
            dest_name := substr(dest_name, strpos(dest_name, '.') + 1);
        ELSE
            dest_schema := src_schema;
        END IF;
        IF dest_schema = '' OR dest_name = '' OR strpos(dest_name, '.') > 0
           OR octet_length(dest_name) > 58 THEN
            RAISE EXCEPTION 'unknown destination "%": use table, table:NAME, table:SCHEMA.NAME or column:COL (NAME at most 58 bytes)', v_dest;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_namespace n WHERE n.nspname = dest_schema) THEN
            RAISE EXCEPTION 'destination schema "%" does not exist', dest_schema;
        END IF;
    ELSIF v_dest LIKE 'column:%' AND v_dest <> 'column:' THEN
        kind := 'column'; dest_schema := src_schema; dest_name := substr(v_dest, 8);
    ELSE
        RAISE EXCEPTION 'unknown destination "%": use table, table:NAME, table:SCHEMA.NAME or column:COL', v_dest;
    END IF;

    -- Chunking: windows of chunk_tokens word pieces, [CLS] and [SEP] included.
    IF v_overlap IS NOT NULL AND v_tokens IS NULL THEN
        RAISE EXCEPTION 'chunk_overlap needs chunk_tokens';
    END IF;
    IF v_tokens IS NOT NULL THEN
        IF kind = 'column' THEN
            RAISE EXCEPTION 'chunking needs a table destination: column "%" holds one vector per row', dest_name;
        END IF;
        IF v_tokens < 3 OR v_tokens > 256 THEN
            RAISE EXCEPTION 'chunk_tokens must be between 3 and 256 word pieces ([CLS] and [SEP] included), got %', v_tokens;
        END IF;
        v_overlap := coalesce(v_overlap, least(32, (v_tokens - 3) / 2));
        IF v_overlap < 0 OR 2 * v_overlap >= v_tokens - 2 THEN
            RAISE EXCEPTION 'chunk_overlap % is out of range for chunk_tokens %: it must be at least 0 and less than half of %',
                v_overlap, v_tokens, v_tokens - 2;
        END IF;
    END IF;

    -- Model, dimensions, index.
    IF v_model IS NULL OR v_model = '' THEN
        RAISE EXCEPTION 'model must not be empty';
    END IF;
    IF v_dim IS NULL OR v_dim < 1 OR v_dim > 16000 THEN
        RAISE EXCEPTION 'dimensions must be between 1 and 16000, got %', v_dim;
    END IF;
    IF v_model = @DEFAULT_MODEL@ AND v_dim <> @DEFAULT_DIM@ THEN
        RAISE EXCEPTION 'model % gives @DEFAULT_DIM@ dimensions, not %', v_model, v_dim;
    END IF;
    IF v_index IS NULL OR v_index NOT IN ('hnsw', 'none') THEN
        RAISE EXCEPTION 'unknown index_kind "%": use hnsw or none', v_index;
    END IF;
    IF v_index = 'hnsw' AND v_dim > 2000 THEN
        RAISE EXCEPTION 'an hnsw index takes at most 2000 dimensions, not %: use index_kind => ''none''', v_dim;
    END IF;

    SELECT quote_ident(n.nspname) INTO vec FROM pg_extension e
      JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector';
    IF vec IS NULL THEN
        RAISE EXCEPTION 'the pgvector extension is not created in this database: run `pgai-trigger db init`';
    END IF;

    -- Names the vectorizer will take.
    IF to_regclass(format('pgai.%I', v_name || '_queue')) IS NOT NULL THEN
        RAISE EXCEPTION 'queue table pgai.%_queue already exists', v_name;
    END IF;
    IF kind = 'table' THEN
        view_name := dest_name || '_view';
        IF EXISTS (SELECT 1 FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace
                    WHERE n.nspname = dest_schema AND cl.relname = dest_name) THEN
            RAISE EXCEPTION 'destination table %.% already exists', dest_schema, dest_name;
        END IF;
        IF EXISTS (SELECT 1 FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace
                    WHERE n.nspname = dest_schema AND cl.relname = view_name) THEN
            RAISE EXCEPTION 'view name %.% is already taken', dest_schema, view_name;
        END IF;
        SELECT string_agg(format('"%s"', a.attname), ', ') INTO col
          FROM pg_attribute a WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
           AND a.attname IN ('chunk_seq', 'chunk', 'embedding', 'embedding_model', 'embedded_at');
        IF col IS NOT NULL THEN
            RAISE EXCEPTION 'source % has column(s) %, which the view %.% takes from the chunk table', src_label, col, dest_schema, view_name;
        END IF;
    ELSE
        IF EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = rel AND a.attname = dest_name
                      AND a.attnum > 0 AND NOT a.attisdropped) THEN
            RAISE EXCEPTION 'destination column "%" already exists in %', dest_name, src_label;
        END IF;
    END IF;

    -- SQL fragments over the key.
    SELECT string_agg(format('%I', k), ', ' ORDER BY o),
           string_agg(format('NEW.%I', k), ', ' ORDER BY o),
           string_agg(format('s.%I', k), ', ' ORDER BY o),
           string_agg(format('%I', 'k_' || k), ', ' ORDER BY o),
           string_agg(format('c.%I = NEW.%I', k, k), ' AND ' ORDER BY o),
           string_agg(format('c.%I = OLD.%I', k, k), ' AND ' ORDER BY o),
           string_agg(format('s.%I = q.%I', k, 'k_' || k), ' AND ' ORDER BY o),
           string_agg(format('s.%I = c.%I', k, k), ' AND ' ORDER BY o)
      INTO key_list, key_new, key_s, qkey_list, match_new, match_old, orphan_q, orphan_c
      FROM unnest(keys) WITH ORDINALITY AS u(k, o);
    IF cardinality(keys) = 1 THEN
        canon_s := format('(s.%I)::text', keys[1]);
        canon_new := format('(NEW.%I)::text', keys[1]);
        canon_old := format('(OLD.%I)::text', keys[1]);
    ELSE
        canon_s := format('jsonb_build_array(%s)::text', key_s);
        canon_new := format('jsonb_build_array(%s)::text', key_new);
        canon_old := format('jsonb_build_array(%s)::text',
            (SELECT string_agg(format('OLD.%I', k), ', ' ORDER BY o) FROM unnest(keys) WITH ORDINALITY AS u(k, o)));
    END IF;
    SELECT string_agg(format('%I', x), ', ') INTO update_of
      FROM (SELECT DISTINCT unnest(text_cols || keys) AS x) d;

    -- The queue.
    queue := format('pgai.%I', v_name || '_queue');
    channel := 'pgai_' || v_name;
    EXECUTE format('CREATE TABLE %s (id text PRIMARY KEY, %s, needs_embedding boolean NOT NULL DEFAULT true,
        retry_count integer DEFAULT 0, last_retry_at timestamptz, retry_status text DEFAULT ''pending'',
        content_version bigint NOT NULL DEFAULT 1, queued_at timestamptz DEFAULT clock_timestamp(),
        next_attempt_at timestamptz, claimed_by text, claim_expires_at timestamptz, last_error text,
        embedded_at timestamptz, embedding_model text, text_hash text)',
        queue,
        (SELECT string_agg(format('%I %s NOT NULL', 'k_' || k, t), ', ' ORDER BY o)
           FROM unnest(keys, key_types) WITH ORDINALITY AS u(k, t, o)));
    EXECUTE format('CREATE INDEX %I ON %s (queued_at) WHERE needs_embedding = TRUE', v_name || '_queue_pending_idx', queue);
    EXECUTE format('CREATE UNIQUE INDEX %I ON %s (%s)', v_name || '_queue_key_idx', queue, qkey_list);

    -- Where the vectors go.
    IF kind = 'table' THEN
        dest := format('%I.%I', dest_schema, dest_name);
        EXECUTE format('CREATE TABLE %s (%s, chunk_seq integer NOT NULL, chunk text NOT NULL,
            embedding %s.vector(%s) NOT NULL, embedding_model text NOT NULL,
            embedded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (%s, chunk_seq) DEFERRABLE INITIALLY DEFERRED)',
            dest,
            (SELECT string_agg(format('%I %s NOT NULL', k, t), ', ' ORDER BY o)
               FROM unnest(keys, key_types) WITH ORDINALITY AS u(k, t, o)),
            vec, v_dim, key_list);
        IF v_index = 'hnsw' THEN
            EXECUTE format('CREATE INDEX ON %s USING hnsw (embedding %s.vector_cosine_ops)', dest, vec);
        END IF;
        EXECUTE format('CREATE VIEW %I.%I AS SELECT s.*, c.chunk_seq, c.chunk, c.embedding, c.embedding_model, c.embedded_at
                          FROM %s s JOIN %s c ON %s', dest_schema, view_name, src, dest, orphan_c);
        -- Chunks go after the queue row: the queue statement waits for a write-back in flight,
        -- then this DELETE's fresh snapshot sees the chunks it wrote.
        delete_chunks_old := format('DELETE FROM %s c WHERE %s;', dest, match_old);
        delete_chunks_new := format('DELETE FROM %s c WHERE %s;', dest, match_new);
    ELSE
        EXECUTE format('ALTER TABLE %s ADD COLUMN %I %s.vector(%s)', src, dest_name, vec, v_dim);
        IF v_index = 'hnsw' THEN
            EXECUTE format('CREATE INDEX ON %s USING hnsw (%I %s.vector_cosine_ops)', src, dest_name, vec);
        END IF;
        null_column := format('NEW.%I := NULL;', dest_name);
    END IF;

    -- Capture: one function for INSERT, UPDATE OF (text and key columns) and DELETE.
    fn_capture := format('pgai.%I', v_name || '_capture');
    fn_truncate := format('pgai.%I', v_name || '_truncate');
    body := format($body$
DECLARE
    k text;
    h text;
    n bigint;
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM %1$s WHERE id = %2$s;
        %3$s
        RETURN OLD;
    END IF;
    k := %4$s;
    IF TG_OP = 'UPDATE' THEN
        IF %2$s IS DISTINCT FROM k THEN
            DELETE FROM %1$s WHERE id = %2$s;
            %3$s
        END IF;
    END IF;
    h := md5(%5$s);
    INSERT INTO %1$s AS q (id, %6$s) VALUES (k, %7$s)
    ON CONFLICT (id) DO UPDATE SET content_version = q.content_version + 1, needs_embedding = TRUE,
        retry_status = 'pending', retry_count = 0, next_attempt_at = NULL, last_error = NULL,
        claimed_by = NULL, claim_expires_at = NULL, queued_at = clock_timestamp()
    WHERE q.needs_embedding IS TRUE OR q.text_hash IS DISTINCT FROM h;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        IF TG_OP = 'UPDATE' THEN
            %8$s
            %9$s
        END IF;
        PERFORM pg_notify(%10$L, CASE WHEN octet_length(k) <= @MAX_PAYLOAD@ THEN k ELSE '' END);
    END IF;
    RETURN NEW;
END
$body$, queue, canon_old, delete_chunks_old, canon_new, text_new, qkey_list, key_new,
        delete_chunks_new, null_column, channel);
    EXECUTE format('CREATE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp AS %L', fn_capture, body);
    IF kind = 'table' THEN
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OF %s OR DELETE ON %s
            FOR EACH ROW EXECUTE FUNCTION %s()', 'pgai_' || v_name || '_capture', update_of, src, fn_capture);
    ELSE
        EXECUTE format('CREATE TRIGGER %I BEFORE INSERT OR UPDATE OF %s ON %s
            FOR EACH ROW EXECUTE FUNCTION %s()', 'pgai_' || v_name || '_capture', update_of, src, fn_capture);
        EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s
            FOR EACH ROW EXECUTE FUNCTION %s()', 'pgai_' || v_name || '_delete', src, fn_capture);
    END IF;

    -- TRUNCATE: of the source, every queue row and chunk goes; of one partition (its own
    -- trigger: a partition's TRUNCATE does not fire the parent's), the rows no longer in the source.
    body := format($body$
BEGIN
    IF TG_ARGV[0] = 'all' THEN
        DELETE FROM %1$s;
        %2$s
    ELSE
        DELETE FROM %1$s q WHERE NOT EXISTS (SELECT 1 FROM %3$s s WHERE %4$s);
        %5$s
    END IF;
    RETURN NULL;
END
$body$, queue,
        CASE WHEN kind = 'table' THEN format('DELETE FROM %s;', dest) ELSE '' END,
        src, orphan_q,
        CASE WHEN kind = 'table' THEN format('DELETE FROM %s c WHERE NOT EXISTS (SELECT 1 FROM %s s WHERE %s);', dest, src, orphan_c) ELSE '' END);
    EXECUTE format('CREATE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp AS %L', fn_truncate, body);
    EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s(''all'')',
        'pgai_' || v_name || '_truncate', src, fn_truncate);
    IF relkind = 'p' THEN
        FOR part IN SELECT t.relid FROM pg_partition_tree(rel) t WHERE t.relid <> rel LOOP
            EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s(''partition'')',
                'pgai_' || v_name || '_truncate', part, fn_truncate);
        END LOOP;
    END IF;

    -- Backfill: every existing row is queued.
    EXECUTE format('INSERT INTO %s (id, %s) SELECT %s, %s FROM %s s', queue, qkey_list, canon_s, key_s, src);

    INSERT INTO pgai.vectorizers (name, source_schema, source_table, key_columns, key_types,
        text_columns, template, text_sql, chunk_tokens, chunk_overlap, destination, dest_schema,
        dest_name, view_name, created_column, queue_schema, queue_table, channel, model,
        dimensions, index_kind)
    VALUES (v_name, src_schema, src_table, keys, key_types, text_cols, v_template, text_s,
        v_tokens, v_overlap, kind, dest_schema, dest_name, view_name, kind = 'column', 'pgai',
        v_name || '_queue', channel, v_model, v_dim, v_index)
    RETURNING * INTO result;
    PERFORM pg_notify(channel, '');
    RETURN result;
END
$fn$;

CREATE OR REPLACE FUNCTION pgai.drop_vectorizer(name text, keep_embeddings boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
    -- "trigger … does not exist, skipping": noise about what a drop found already gone.
    SET client_min_messages = warning AS $fn$
#variable_conflict use_column
DECLARE
    v_name text := $1;
    v_keep boolean := coalesce($2, false);
    v      pgai.vectorizers;
    src    text;
BEGIN
    SELECT * INTO v FROM pgai.vectorizers x WHERE x.name = v_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'vectorizer "%" does not exist', v_name;
    END IF;
    IF v.destination = 'in_place' THEN
        RAISE EXCEPTION '% is the daemon''s configured table; it cannot be dropped as a vectorizer', v_name;
    END IF;
    src := format('%I.%I', v.source_schema, v.source_table);
    IF to_regclass(src) IS NOT NULL THEN
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'pgai_' || v.name || '_capture', src);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'pgai_' || v.name || '_delete', src);
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'pgai_' || v.name || '_truncate', src);
    END IF;
    -- CASCADE: the TRUNCATE triggers of partitions.
    EXECUTE format('DROP FUNCTION IF EXISTS pgai.%I() CASCADE', v.name || '_capture');
    EXECUTE format('DROP FUNCTION IF EXISTS pgai.%I() CASCADE', v.name || '_truncate');
    EXECUTE format('DROP TABLE IF EXISTS %I.%I', v.queue_schema, v.queue_table);
    IF NOT v_keep THEN
        IF v.destination = 'table' THEN
            IF v.view_name IS NOT NULL THEN
                EXECUTE format('DROP VIEW IF EXISTS %I.%I', v.dest_schema, v.view_name);
            END IF;
            EXECUTE format('DROP TABLE IF EXISTS %I.%I', v.dest_schema, v.dest_name);
        ELSIF v.created_column AND to_regclass(src) IS NOT NULL THEN
            -- Its index goes with it.
            EXECUTE format('ALTER TABLE %s DROP COLUMN IF EXISTS %I', src, v.dest_name);
        END IF;
    END IF;
    DELETE FROM pgai.vectorizers x WHERE x.name = v_name;
END
$fn$;

CREATE OR REPLACE FUNCTION pgai.alter_vectorizer(name text, model text DEFAULT NULL, dimensions integer DEFAULT NULL)
RETURNS pgai.vectorizers LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
#variable_conflict use_column
DECLARE
    v_name  text := $1;
    v_model text := $2;
    v_dim   integer := $3;
    v       pgai.vectorizers;
BEGIN
    SELECT * INTO v FROM pgai.vectorizers x WHERE x.name = v_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'vectorizer "%" does not exist', v_name;
    END IF;
    IF v.destination = 'in_place' THEN
        RAISE EXCEPTION '% is the daemon''s configured table; its model is the daemon''s (restart the daemon with the new model)', v_name;
    END IF;
    IF v_dim IS NOT NULL AND v_dim <> v.dimensions THEN
        RAISE EXCEPTION 'vectorizer % has % dimensions; changing them to % needs drop and create', v_name, v.dimensions, v_dim;
    END IF;
    IF v_model = '' THEN
        RAISE EXCEPTION 'model must not be empty';
    END IF;
    IF v_model IS NULL OR v_model = v.model THEN
        RETURN v;
    END IF;
    IF v_model = @DEFAULT_MODEL@ AND v.dimensions <> @DEFAULT_DIM@ THEN
        RAISE EXCEPTION 'model % gives @DEFAULT_DIM@ dimensions, not % (needs drop and create)', v_model, v.dimensions;
    END IF;
    UPDATE pgai.vectorizers x SET model = v_model, updated_at = now() WHERE x.name = v_name
    RETURNING * INTO v;
    -- Every row again; old vectors stay (each records its model) until replaced.
    EXECUTE format('UPDATE %I.%I SET needs_embedding = TRUE, text_hash = NULL,
        content_version = content_version + 1, retry_count = 0, retry_status = ''pending'',
        next_attempt_at = NULL, last_error = NULL, claimed_by = NULL, claim_expires_at = NULL,
        queued_at = clock_timestamp()', v.queue_schema, v.queue_table);
    PERFORM pg_notify(v.channel, '');
    RETURN v;
END
$fn$;

CREATE OR REPLACE FUNCTION pgai.vectorizer_status("only" text DEFAULT NULL)
RETURNS TABLE(name text, source text, destination text, model text, rows bigint, embedded bigint,
              pending bigint, processing bigint, failed bigint, not_queued bigint,
              coverage_pct float8, lag_secs float8, latency_p50_ms float8, latency_p99_ms float8,
              throughput_per_min bigint, not_migrated bigint, last_error text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
#variable_conflict use_column
DECLARE
    v        pgai.vectorizers;
    dest     text;
    p_pending text; p_processing text; p_completed text; p_failed text; p_not_queued text;
    p_has_vector text;
BEGIN
    FOR v IN SELECT * FROM pgai.vectorizers x WHERE $1 IS NULL OR x.name = $1 ORDER BY x.name LOOP
        -- The Rust RowState predicates (queue/state.rs), pasted in by `db init`.
        IF v.destination = 'in_place' THEN
            p_pending := @IP_PENDING@; p_processing := @IP_PROCESSING@;
            p_completed := @IP_COMPLETED@; p_failed := @IP_FAILED@;
            p_not_queued := @IP_NOT_QUEUED@; p_has_vector := @IP_HAS_VECTOR@;
            dest := 'in_place';
        ELSE
            p_pending := @Q_PENDING@; p_processing := @Q_PROCESSING@;
            p_completed := @Q_COMPLETED@; p_failed := @Q_FAILED@;
            p_not_queued := @Q_NOT_QUEUED@; p_has_vector := @Q_HAS_VECTOR@;
            dest := CASE v.destination WHEN 'table' THEN 'table:' || v.dest_schema || '.' || v.dest_name
                                       ELSE 'column:' || v.dest_name END;
        END IF;
        BEGIN
            RETURN QUERY EXECUTE format($q$
                SELECT %1$L::text, %2$L::text, %3$L::text, %4$L::text, count(*),
                       count(*) FILTER (WHERE %5$s), count(*) FILTER (WHERE %6$s),
                       count(*) FILTER (WHERE %7$s), count(*) FILTER (WHERE %8$s),
                       count(*) FILTER (WHERE %9$s),
                       CASE WHEN count(*) = 0 THEN 100.0::float8
                            ELSE (100.0 * count(*) FILTER (WHERE %5$s) / count(*))::float8 END,
                       extract(epoch FROM clock_timestamp() - min(queued_at) FILTER (WHERE %10$s))::float8,
                       (percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM embedded_at - queued_at) * 1000)
                            FILTER (WHERE %5$s AND embedded_at > clock_timestamp() - interval '5 minutes'))::float8,
                       (percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM embedded_at - queued_at) * 1000)
                            FILTER (WHERE %5$s AND embedded_at > clock_timestamp() - interval '5 minutes'))::float8,
                       count(*) FILTER (WHERE embedded_at > clock_timestamp() - interval '60 seconds'),
                       count(*) FILTER (WHERE (%11$s) AND embedding_model IS DISTINCT FROM %4$L),
                       (SELECT e.last_error FROM %12$I.%13$I e WHERE (%6$s OR %8$s) AND e.last_error IS NOT NULL
                         ORDER BY e.last_retry_at DESC NULLS LAST LIMIT 1)
                  FROM %12$I.%13$I $q$,
                v.name, v.source_schema || '.' || v.source_table, dest, v.model,
                p_completed, p_pending, p_processing, p_failed, p_not_queued, @QUEUED@,
                p_has_vector, v.queue_schema, v.queue_table);
        EXCEPTION WHEN undefined_table OR undefined_column THEN
            RETURN QUERY SELECT v.name, v.source_schema || '.' || v.source_table, dest, v.model,
                NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint,
                NULL::float8, NULL::float8, NULL::float8, NULL::float8, NULL::bigint, NULL::bigint,
                format('queue %s.%s is missing or incomplete: %s', v.queue_schema, v.queue_table, SQLERRM);
        END;
    END LOOP;
END
$fn$;

CREATE OR REPLACE VIEW pgai.vectorizer_status AS SELECT * FROM pgai.vectorizer_status();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_carries_the_rust_row_states() {
        let sql = ddl();
        assert!(!sql.contains('@'), "a placeholder was left unreplaced");
        for r in RowState::ALL {
            assert!(sql.contains(&literal(&r.predicate_with(HAS_VECTOR_QUEUED))));
            assert!(sql.contains(&literal(&r.predicate())));
        }
        assert!(sql.contains(pgai_embed::MODEL_NAME));
    }
}
