//! `pgai-trigger bench --quick` end to end: the real binary, its own embedded cluster, the
//! daemon as child processes of it, the real model. Proves the command works and writes every
//! section; asserts no timing (these machines are shared and noisy), only that every row was
//! embedded and every number is there.

use std::process::Command;

use pgai_testkit::TestDir;
use serde_json::Value;

#[test]
fn quick_bench_writes_every_section() {
    let dir = TestDir::new("bench-smoke");
    let out = dir.path().join("results.json");
    let run = Command::new(env!("CARGO_BIN_EXE_pgai-trigger"))
        .args([
            "bench",
            "--quick",
            "--no-fsync",
            "--fairness-rows",
            "2000",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("running pgai-trigger bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "bench --quick failed ({}):\n{stdout}\n{stderr}",
        run.status
    );
    assert!(stdout.contains("Targets"), "the table is printed: {stdout}");

    let json: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for section in [
        "meta",
        "latency",
        "polling",
        "burst",
        "raw_model",
        "db_write",
        "breakdown",
        "trigger_overhead",
        "idle",
        "memory",
        "fairness",
        "targets",
    ] {
        assert!(
            !json[section].is_null(),
            "section {section} missing: {json:#}"
        );
    }
    let num = |v: &Value, what: &str| assert!(v.is_number(), "{what} is not a number: {v}");

    let latency = json["latency"].as_array().unwrap();
    let mut runs: Vec<String> = latency
        .iter()
        .map(|r| format!("{}-{}", r["profile"], r["mode"]))
        .collect();
    runs.sort();
    assert_eq!(
        runs,
        [
            r#""long"-"immediate""#,
            r#""long"-"polling""#,
            r#""short"-"immediate""#,
            r#""short"-"polling""#
        ]
    );
    for r in latency {
        assert_eq!(
            r["missing"], 0,
            "every measured row embedded and announced: {r:#}"
        );
        assert_eq!(r["client_ms"]["samples"], r["rows"], "{r:#}");
        num(&r["client_ms"]["p99"], "client P99");
        num(&r["db_ms"]["p50"], "database-clock P50");
    }
    assert_eq!(json["polling"].as_array().unwrap().len(), 2);
    num(&json["polling"][0]["p50_ratio"], "polling ratio");

    let bursts = json["burst"].as_array().unwrap();
    assert_eq!(bursts.len(), 2);
    for b in bursts {
        assert_eq!(b["embedded"], b["rows"], "the whole burst embedded: {b:#}");
        num(&b["rows_per_s"], "burst rows/s");
        assert_eq!(b["trickle"]["missing"], 0, "{b:#}");
    }

    for p in ["short", "long"] {
        num(&json["raw_model"][p]["batch"]["rows_per_s"], "raw rows/s");
        num(
            &json["raw_model"][p]["batch"]["stepped_rows_per_s"],
            "raw rows/s in the backlog's calls",
        );
        num(
            &json["raw_model"][p]["single"]["embed_ms"]["p50"],
            "raw single P50",
        );
    }
    num(
        &json["db_write"]["batches"]["write_ms_per_row"],
        "write cost",
    );
    num(
        &json["db_write"]["batches"]["postgres_cpu_ms_per_row"],
        "PostgreSQL CPU per row (embedded cluster)",
    );
    assert_eq!(json["breakdown"]["batched"].as_array().unwrap().len(), 2);
    num(
        &json["breakdown"]["batched"][0]["ceiling_rows_per_s"],
        "ceiling",
    );
    num(
        &json["breakdown"]["single_short"]["accounted_ms"],
        "single-row breakdown",
    );
    for k in ["row_trigger_s", "no_trigger_s", "statement_trigger_s"] {
        num(&json["trigger_overhead"][k], k);
    }
    num(&json["idle"]["immediate_cpu_percent"], "idle CPU");
    num(&json["idle"]["polling_cpu_percent"], "idle CPU, polling");
    let daemons = json["memory"]["daemons"].as_array().unwrap();
    assert_eq!(daemons.len(), 6, "{daemons:#?}");
    assert!(daemons.iter().all(|d| d["peak_rss_mb"].is_number()));
    num(
        &json["memory"]["peak_rss_mb_under_load"],
        "peak RSS under load",
    );

    // Fairness: B's singles alone and during A's backfill, all embedded; A's backfill figures.
    let fair = &json["fairness"];
    assert_eq!(fair["backfill_rows"], 2000, "{fair:#}");
    for run in ["idle", "loaded"] {
        assert_eq!(fair[run]["missing"], 0, "every B row embedded: {fair:#}");
        assert_eq!(fair[run]["db_ms"]["samples"], fair[run]["rows"], "{fair:#}");
        num(&fair[run]["db_ms"]["p50"], "fairness P50");
        num(&fair[run]["db_ms"]["p99"], "fairness P99");
    }
    num(&fair["p50_diff_ms"], "fairness P50 difference");
    num(&fair["p99_diff_ms"], "fairness P99 difference");
    assert!(fair["met"].is_boolean(), "{fair:#}");
    for k in [
        "window_s",
        "rows_in_window",
        "rows_per_s",
        "pending_at_start",
        "pending_at_end",
    ] {
        num(&fair["backfill"][k], k);
    }
    assert!(fair["backfill"]["drained_during_window"].is_boolean());
    let targets = json["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 13, "{targets:#?}");
    // A target is judged exactly when it has a value (a quick burst may see no single insert).
    for t in targets {
        let judged = t["met"].is_boolean();
        assert_eq!(t["value"].is_number(), judged, "{t:#}");
        assert!(judged || t["met"].is_null(), "{t:#}");
    }
    let value = |name: &str| {
        targets
            .iter()
            .find(|t| t["name"].as_str().unwrap().starts_with(name))
            .map(|t| t["value"].clone())
            .unwrap_or_else(|| panic!("no target {name}: {targets:#?}"))
    };
    for name in [
        "latency P50, short",
        "raw model, short, batch",
        "raw model, a lone short text",
        "idle CPU",
    ] {
        num(&value(name), name);
    }

    let svg = std::fs::read_to_string(out.with_extension("svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(
        svg.matches("<polyline").count() >= 4,
        "one line per latency run: {svg}"
    );
    let table = std::fs::read_to_string(out.with_extension("txt")).unwrap();
    assert!(table.contains("Targets"), "{table}");
    assert!(table.contains("Fairness"), "{table}");
    assert!(table.contains("Summary (README-ready)"), "{table}");
}
