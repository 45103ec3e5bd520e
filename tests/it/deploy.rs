//! The operator's files checked with the real tools: alert rules and their
//! unit tests with `promtool` (installed by scripts/services.sh from
//! Debian's `prometheus` package), the dashboard's queries parsed by
//! Prometheus's own parser, every alert's runbook present, and every link
//! of the documentation resolving inside the repository.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs promtool with `args` in deploy/; panics with its output on failure.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(Path::new(ROOT).join("deploy"))
        .output()
        .expect("promtool is installed (scripts/services.sh installs Debian's prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The `alert:` names of deploy/alerts.yml.
fn alert_names() -> Vec<String> {
    read("deploy/alerts.yml")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect()
}

/// GitHub's anchor for a Markdown heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect()
}

#[test]
fn alert_rules_pass_promtool_with_a_test_per_alert() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    let names = alert_names();
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", names.len())),
        "{checked}"
    );
    let tested = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Every alert has a case where it fires (an expected alert with its
    // runbook) and its runbook exists.
    let tests = read("deploy/alerts.test.yml");
    let runbooks = anchors(&read("docs/runbooks.md"));
    let rules = read("deploy/alerts.yml");
    for name in &names {
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "{name} has no unit test in deploy/alerts.test.yml"
        );
        let url = format!("runbook_url: \"docs/runbooks.md#{}\"", name.to_lowercase());
        assert!(rules.contains(&url), "{name} lacks `{url}` in alerts.yml");
        assert!(tests.contains(&url), "no test of {name} expects it to fire");
        assert!(
            runbooks.contains(&name.to_lowercase()),
            "docs/runbooks.md has no section for {name}"
        );
    }
    assert_eq!(
        rules.matches("runbook_url:").count(),
        names.len(),
        "every alert carries exactly one runbook_url"
    );
}

/// The dashboard is valid JSON and each of its queries parses with
/// Prometheus's parser (as recording rules checked by promtool).
#[test]
fn dashboard_queries_parse_with_promtool() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/dashboards/writer.json")).unwrap();
    fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    assert!(queries.len() >= 20, "only {} queries", queries.len());
    // Grafana's template variables, as Grafana substitutes them.
    let rules: String = queries
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let q = q
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "1m")
                .replace("${instance:regex}", ".*")
                .replace("$instance", ".*");
            assert!(!q.contains('$'), "unknown template variable in {q}");
            format!(
                "      - record: dashboard_query_{i}\n        expr: {}\n",
                serde_json::to_string(&q).unwrap()
            )
        })
        .collect();
    let file = std::env::temp_dir().join(format!("writer-dashboard-{}.yml", std::process::id()));
    std::fs::write(
        &file,
        format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    )
    .unwrap();
    let checked = promtool(&["check", "rules", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{checked}"
    );
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() && !name.starts_with('.') && name != "target" {
            markdown_files(&path, out);
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// Every relative link in the repository's Markdown (README, docs/, adr/,
/// deploy/, benches/) names a file inside the repository, and its anchor a
/// heading of that file: the documentation is complete without anything
/// outside the repository.
#[test]
fn documentation_links_resolve_inside_the_repository() {
    let root = Path::new(ROOT).canonicalize().unwrap();
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    assert!(files.iter().any(|f| f.ends_with("README.md")));
    assert!(files.iter().any(|f| f.ends_with("docs/contract.md")));
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = &rest[..end];
            rest = &rest[end..];
            if target.contains("://") || target.starts_with("mailto:") {
                if file.ends_with("README.md") && file.parent() == Some(root.as_path()) {
                    broken.push(format!(
                        "README.md: {target} (the README links only inside the repository)"
                    ));
                }
                continue;
            }
            checked += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            let shown = format!("{}: {target}", file.strip_prefix(&root).unwrap().display());
            match resolved.canonicalize() {
                Ok(p) if !p.starts_with(&root) => {
                    broken.push(format!("{shown} (outside the repository)"))
                }
                Ok(p) => {
                    if !anchor.is_empty()
                        && p.is_file()
                        && !anchors(&std::fs::read_to_string(&p).unwrap()).contains(anchor)
                    {
                        broken.push(format!("{shown} (no such heading)"));
                    }
                }
                Err(_) => broken.push(format!("{shown} (no such file)")),
            }
        }
    }
    assert!(checked >= 10, "only {checked} links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
