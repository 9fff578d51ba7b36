//! Results: `results.json` (everything), `summary.md` (the tables and the
//! targets of issue 7) and one hand-written SVG bar chart per scenario and
//! metric (median bars, min–max whiskers).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::scenarios::Record;

#[derive(Debug, Serialize, serde::Deserialize)]
pub(crate) struct Meta {
    pub(crate) date: String,
    pub(crate) nproc: usize,
    pub(crate) cpu_model: String,
    pub(crate) kernel: String,
    pub(crate) loadavg_start: String,
    pub(crate) loadavg_end: String,
    #[serde(default)]
    pub(crate) loadavg_per_scenario: Vec<String>,
    pub(crate) dovecot: String,
    pub(crate) command_line: String,
    pub(crate) quick: bool,
    pub(crate) server_cpu: Option<String>,
    pub(crate) client_cpu: Option<String>,
    pub(crate) plan: String,
    pub(crate) skipped: Vec<String>,
    pub(crate) wall_seconds: f64,
    pub(crate) errors: Vec<String>,
    #[serde(default)]
    pub(crate) warnings: Vec<String>,
}

const SERVERS: [&str; 3] = ["pobox", "dovecot", "raw"];

/// Re-renders summary.md and the charts from a results.json.
///
/// # Errors
/// Unreadable or malformed file.
pub(crate) fn rerender(results: &Path, out: &Path) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct File {
        meta: Meta,
        records: Vec<Record>,
    }
    let f: File = serde_json::from_str(&std::fs::read_to_string(results)?)?;
    write_all(out, &f.meta, &f.records)?;
    Ok(())
}

/// Writes results.json, summary.md and the charts into `out`.
///
/// # Errors
/// File-system errors.
pub(crate) fn write_all(out: &Path, meta: &Meta, records: &[Record]) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(out)?;
    let json = serde_json::json!({ "meta": meta, "records": records });
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&json)?)?;
    let mut charts = Vec::new();
    for ((scenario, metric), recs) in group_by_metric(records) {
        let name = format!("{scenario}-{}.svg", slug(&metric));
        std::fs::write(out.join(&name), chart(&scenario, &metric, &recs))?;
        charts.push(name);
    }
    // Server CPU cost per unit of work: robust against other load on a
    // shared machine, unlike throughput.
    let cpu: Vec<Record> = records
        .iter()
        .filter(|r| !(r.scenario == "idle" && r.metric.contains("PSS")))
        .filter_map(|r| {
            let (k, v) = r.extra.iter().find(|(k, _)| k.starts_with("server CPU"))?;
            let mut c = r.clone();
            c.metric = k.clone();
            c.value = *v;
            c.higher_is_better = false;
            Some(c)
        })
        .collect();
    for ((scenario, metric), recs) in group_by_metric(&cpu) {
        let name = format!("{scenario}-{}.svg", slug(&metric));
        std::fs::write(out.join(&name), chart(&scenario, &metric, &recs))?;
        charts.push(name);
    }
    std::fs::write(out.join("summary.md"), summary(meta, records, &charts))?;
    Ok(charts)
}

fn slug(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect::<String>().trim_matches('-').replace("--", "-")
}

fn group_by_metric(records: &[Record]) -> BTreeMap<(String, String), Vec<&Record>> {
    let mut m: BTreeMap<(String, String), Vec<&Record>> = BTreeMap::new();
    for r in records {
        m.entry((r.scenario.clone(), r.metric.clone())).or_default().push(r);
    }
    m
}

pub(crate) fn num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

fn spread(r: &Record) -> String {
    if r.reps.len() > 1 {
        format!("{} ({}–{})", num(r.value.median), num(r.value.min), num(r.value.max))
    } else {
        num(r.value.median)
    }
}

/// >1 means pobox is better, whichever direction the metric runs.
pub(crate) fn advantage(pobox: &Record, other: &Record) -> f64 {
    if pobox.higher_is_better { pobox.value.median / other.value.median } else { other.value.median / pobox.value.median }
}

/// One table row: (scenario, variant, metric) and the record per server.
struct Row<'a> {
    key: (String, String, String),
    by: BTreeMap<String, &'a Record>,
}

/// Rows in first-seen order.
fn rows(records: &[Record]) -> Vec<Row<'_>> {
    let mut out: Vec<Row<'_>> = Vec::new();
    for r in records {
        let key = (r.scenario.clone(), r.variant.clone(), r.metric.clone());
        match out.iter_mut().find(|row| row.key == key) {
            Some(row) => {
                row.by.insert(r.server.clone(), r);
            }
            None => out.push(Row { key, by: BTreeMap::from([(r.server.clone(), r)]) }),
        }
    }
    out
}

fn summary(meta: &Meta, records: &[Record], charts: &[String]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# pobox-bench results\n");
    let _ = writeln!(s, "- date: {}\n- machine: {} × {}, kernel {}\n- load average at start / end: {} / {}", meta.date, meta.nproc, meta.cpu_model, meta.kernel, meta.loadavg_start, meta.loadavg_end);
    let _ = writeln!(s, "- load average (1/5/15 min) as each scenario started: {}", meta.loadavg_per_scenario.join("; "));
    let _ = writeln!(s, "- server CPU {}, load generator CPU {}", meta.server_cpu.as_deref().unwrap_or("unpinned"), meta.client_cpu.as_deref().unwrap_or("unpinned"));
    let _ = writeln!(s, "- Dovecot: {}\n- plan: {}\n- command: `{}`\n- wall time: {:.0} s", if meta.dovecot.is_empty() { "skipped" } else { &meta.dovecot }, meta.plan, meta.command_line, meta.wall_seconds);
    for sk in &meta.skipped {
        let _ = writeln!(s, "- SKIPPED: {sk}");
    }
    let _ = writeln!(s, "- correctness/protocol errors: {}", meta.errors.len());
    for e in &meta.errors {
        let _ = writeln!(s, "  - ERROR {e}");
    }
    let _ = writeln!(s, "- warnings (Dovecot stalls that hit the client's I/O timeout): {}", meta.warnings.len());
    for w in &meta.warnings {
        let _ = writeln!(s, "  - {w}");
    }
    s.push('\n');

    let _ = writeln!(s, "## Results (median, min–max over repetitions)\n");
    let _ = writeln!(s, "| scenario | variant | metric | pobox | Dovecot | pobox advantage | raw limit | pobox / raw |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for Row { key: (sc, var, metric), by } in rows(records) {
        let cell = |name: &str| by.get(name).map(|r| spread(r)).unwrap_or_else(|| "–".into());
        let adv = match (by.get("pobox"), by.get("dovecot")) {
            (Some(p), Some(d)) => format!("{:.2}×", advantage(p, d)),
            _ => "–".into(),
        };
        let raw = match (by.get("pobox"), by.get("raw")) {
            (Some(p), Some(r)) => format!("{:.0}%", 100.0 * p.value.median / r.value.median),
            _ => "–".into(),
        };
        let _ = writeln!(s, "| {sc} | {var} | {metric} | {} | {} | {adv} | {} | {raw} |", cell("pobox"), cell("dovecot"), cell("raw"));
    }

    if records.iter().any(|r| r.server.starts_with("pobox-pg")) {
        let _ = writeln!(s, "\n## pobox on PostgreSQL beside pobox on Maildir (same run)\n");
        let _ = writeln!(s, "One PostgreSQL 15 cluster on the server CPU; its CPU counts as the server's. `pobox-pg`: one node; `pobox-pg2`: two nodes on one database, workers spread across them. Ratios > 1 mean better than Maildir.\n");
        let _ = writeln!(s, "| scenario | variant | metric | Maildir | PostgreSQL, 1 node | PostgreSQL, 2 nodes | 1 node / Maildir | 2 nodes / Maildir |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for Row { key: (sc, var, metric), by } in rows(records) {
            if !by.keys().any(|k| k.starts_with("pobox-pg")) {
                continue;
            }
            let cell = |name: &str| by.get(name).map(|r| spread(r)).unwrap_or_else(|| "–".into());
            let ratio = |name: &str| match (by.get(name), by.get("pobox")) {
                (Some(p), Some(m)) => format!("{:.2}×", advantage(p, m)),
                _ => "–".into(),
            };
            let _ = writeln!(
                s,
                "| {sc} | {var} | {metric} | {} | {} | {} | {} | {} |",
                cell("pobox"),
                cell("pobox-pg"),
                cell("pobox-pg2"),
                ratio("pobox-pg"),
                ratio("pobox-pg2")
            );
        }
    }

    let _ = writeln!(s, "\n## Secondary figures (median, min–max)\n");
    let _ = writeln!(s, "| scenario | variant | server | figures |\n|---|---|---|---|");
    for r in records.iter().filter(|r| !r.extra.is_empty()) {
        let figs: Vec<String> = r.extra.iter().map(|(k, v)| {
            if v.min == v.max { format!("{k}: {}", num(v.median)) } else { format!("{k}: {} ({}–{})", num(v.median), num(v.min), num(v.max)) }
        }).collect();
        let _ = writeln!(s, "| {} | {} | {} | {} |", r.scenario, r.variant, r.server, figs.join("; "));
    }

    let _ = writeln!(s, "\n## Latency per command (ms, p50 / p99, all repetitions)\n");
    let _ = writeln!(s, "| scenario | variant | server | commands |\n|---|---|---|---|");
    for r in records.iter().filter(|r| !r.latency.is_empty()) {
        let cmds: Vec<String> = r.latency.iter().map(|(k, p)| format!("{k} {} / {}", num(p.p50_ms), num(p.p99_ms))).collect();
        let _ = writeln!(s, "| {} | {} | {} | {} |", r.scenario, r.variant, r.server, cmds.join("; "));
    }

    let _ = writeln!(s, "\n## Targets of issue 7 (worst variant)\n");
    let _ = writeln!(s, "| target | required | measured (throughput) | met | same comparison by server CPU cost per unit |\n|---|---|---|---|---|");
    for t in targets(records) {
        let _ = writeln!(s, "| {} | {} | {} | {} | {} |", t.0, t.1, t.2, t.3, t.4);
    }
    let _ = writeln!(s, "\n## Charts\n");
    for c in charts {
        let _ = writeln!(s, "![{c}]({c})");
    }
    s
}

/// (target, required, measured, met) for each target of issue 7.
pub(crate) fn targets(records: &[Record]) -> Vec<(String, String, String, String, String)> {
    let find = |sc: &str, metric: &str, server: &str| -> Vec<&Record> {
        records.iter().filter(|r| r.scenario == sc && r.metric == metric && r.server == server).collect()
    };
    let worst = |sc: &str, metric: &str, other: &str| -> Option<(f64, String)> {
        let mut w: Option<(f64, String)> = None;
        for p in find(sc, metric, "pobox") {
            if let Some(o) = find(sc, metric, other).into_iter().find(|o| o.variant == p.variant) {
                let a = advantage(p, o);
                if w.as_ref().is_none_or(|(x, _)| a < *x) {
                    w = Some((a, p.variant.clone()));
                }
            }
        }
        w
    };
    // The same comparison by server CPU cost per unit of work (robust
    // against other load on a shared machine): other's cost ÷ pobox's.
    let cpu_worst = |sc: &str, metric: &str, other: &str| -> String {
        let key = |r: &Record| r.extra.keys().find(|k| k.starts_with("server CPU")).cloned();
        let mut w: Option<(f64, String)> = None;
        for p in find(sc, metric, "pobox") {
            let Some(k) = key(p) else { continue };
            if let Some(o) = find(sc, metric, other).into_iter().find(|o| o.variant == p.variant)
                && let (Some(pc), Some(oc)) = (p.extra.get(&k), o.extra.get(&k))
                && pc.median > 0.0
            {
                let a = oc.median / pc.median;
                if w.as_ref().is_none_or(|(x, _)| a < *x) {
                    w = Some((a, p.variant.clone()));
                }
            }
        }
        match w {
            Some((a, v)) if other == "raw" => format!("{:.0}% ({v})", a * 100.0),
            Some((a, v)) => format!("{a:.2}× ({v})"),
            None => "–".into(),
        }
    };
    let mut out = Vec::new();
    let mut push = |name: &str, req: f64, sc: &str, metric: &str, other: &str, pct: bool| {
        let (measured, met) = match worst(sc, metric, other) {
            Some((a, v)) => (
                if pct { format!("{:.0}% ({v})", a * 100.0) } else { format!("{a:.2}× ({v})") },
                if a >= req { "yes" } else { "**no**" }.to_string(),
            ),
            None => ("not measured".into(), "–".into()),
        };
        let req = if pct { format!("≥ {:.0}%", req * 100.0) } else { format!("≥ {req}×") };
        out.push((name.to_string(), req, measured, met, cpu_worst(sc, metric, other)));
    };
    push("login sessions/s vs Dovecot", 5.0, "login", "sessions/s", "dovecot", false);
    push("fetch MiB/s vs Dovecot", 2.5, "fetch", "MiB/s", "dovecot", false);
    push("fetch MiB/s vs raw limit", 0.7, "fetch", "MiB/s", "raw", true);
    push("fetch-pipelined MiB/s vs Dovecot", 2.5, "fetch-pipelined", "MiB/s", "dovecot", false);
    push("fetch-pipelined MiB/s vs raw limit", 0.7, "fetch-pipelined", "MiB/s", "raw", true);
    push("tls-fetch MiB/s vs Dovecot", 3.0, "tls-fetch", "MiB/s", "dovecot", false);
    push("idle RSS/session: Dovecot ÷ pobox", 100.0, "idle", "KiB RSS/session", "dovecot", false);
    push("idle PSS/session: Dovecot ÷ pobox (stricter)", 100.0, "idle", "KiB PSS/session", "dovecot", false);
    push("LMTP deliveries/s vs Dovecot (fsync both)", 2.0, "deliver", "messages/s", "dovecot", false);
    push("big-maildrop login+STAT+UIDL speed-up", 5.0, "big-maildrop", "seconds", "dovecot", false);
    let held = records.iter().any(|r| r.scenario == "idle" && r.server == "pobox" && r.variant == "K=10000");
    out.push(("10,000 idle sessions held by pobox".into(), "all answer NOOP".into(), if held { "10,000 held".into() } else { "not measured/failed".into() }, if held { "yes".into() } else { "**no**".into() }, "–".into()));
    out
}

fn color(server: &str) -> &'static str {
    match server {
        "pobox" => "#2b7bb9",
        "dovecot" => "#e0812f",
        _ => "#7f7f7f",
    }
}

/// A grouped bar chart: variants on x, one bar per server, whiskers min–max.
fn chart(scenario: &str, metric: &str, recs: &[&Record]) -> String {
    let mut variants: Vec<String> = Vec::new();
    for r in recs {
        if !variants.contains(&r.variant) {
            variants.push(r.variant.clone());
        }
    }
    let servers: Vec<&str> = SERVERS.iter().copied().filter(|s| recs.iter().any(|r| r.server == *s)).collect();
    let (bar, gap, left, top, plot_h) = (34.0, 30.0, 70.0, 50.0, 240.0);
    let group_w = bar * servers.len() as f64 + gap;
    let width = left + group_w * variants.len() as f64 + 20.0;
    let height = top + plot_h + 60.0;
    let ymax = recs.iter().map(|r| r.value.max).fold(0.0f64, f64::max).max(1e-9) * 1.15;
    let y = |v: f64| top + plot_h - v / ymax * plot_h;
    let mut s = String::new();
    let _ = writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#);
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let better = if recs.first().is_some_and(|r| r.higher_is_better) { "higher is better" } else { "lower is better" };
    let _ = writeln!(s, r#"<text x="{left}" y="20" font-size="14" font-weight="bold">{scenario}: {metric} ({better})</text>"#);
    for i in 0..=4 {
        let v = ymax / 1.15 * f64::from(i) / 4.0;
        let yy = y(v);
        let _ = writeln!(s, r##"<line x1="{left}" y1="{yy:.1}" x2="{:.0}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.0}" y="{:.1}" text-anchor="end">{}</text>"##, width - 10.0, left - 5.0, yy + 4.0, num(v));
    }
    for (vi, v) in variants.iter().enumerate() {
        let gx = left + gap / 2.0 + group_w * vi as f64;
        for (si, srv) in servers.iter().enumerate() {
            let Some(r) = recs.iter().find(|r| &r.variant == v && r.server == *srv) else { continue };
            let x = gx + bar * si as f64;
            let (y0, ym) = (y(0.0), y(r.value.median));
            let _ = writeln!(s, r#"<rect x="{x:.1}" y="{ym:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"#, bar - 4.0, (y0 - ym).max(0.5), color(srv));
            let cx = x + (bar - 4.0) / 2.0;
            if r.value.min != r.value.max {
                let _ = writeln!(s, r#"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="black"/>"#, y(r.value.min), y(r.value.max));
            }
            let _ = writeln!(s, r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-size="9">{}</text>"#, y(r.value.max) - 3.0, num(r.value.median));
        }
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{v}</text>"#, gx + bar * servers.len() as f64 / 2.0, top + plot_h + 16.0);
    }
    for (si, srv) in servers.iter().enumerate() {
        let lx = left + 110.0 * si as f64;
        let ly = top + plot_h + 36.0;
        let _ = writeln!(s, r#"<rect x="{lx:.0}" y="{:.0}" width="12" height="12" fill="{}"/><text x="{:.0}" y="{:.0}">{srv}</text>"#, ly - 10.0, color(srv), lx + 16.0, ly);
    }
    s.push_str("</svg>\n");
    s
}
