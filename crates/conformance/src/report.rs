//! The report: a table for the terminal, JSON, JUnit XML (for CI systems) and Markdown,
//! with the totals per level.

use crate::suite::{Level, Outcome, TestResult};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Passed, failed and skipped per level.
pub fn totals(results: &[TestResult]) -> BTreeMap<Level, (usize, usize, usize)> {
    let mut t: BTreeMap<Level, (usize, usize, usize)> = BTreeMap::new();
    for r in results {
        let e = t.entry(r.level).or_default();
        match r.outcome {
            Outcome::Pass => e.0 += 1,
            Outcome::Fail(_) => e.1 += 1,
            Outcome::Skip(_) => e.2 += 1,
        }
    }
    t
}

/// True when every MUST passed (skipped ones are not failures).
pub fn conformant(results: &[TestResult]) -> bool {
    !results
        .iter()
        .any(|r| r.level == Level::Must && matches!(r.outcome, Outcome::Fail(_)))
}

fn word(o: &Outcome) -> &'static str {
    match o {
        Outcome::Pass => "pass",
        Outcome::Fail(_) => "FAIL",
        Outcome::Skip(_) => "skip",
    }
}

fn detail(o: &Outcome) -> &str {
    match o {
        Outcome::Pass => "",
        Outcome::Fail(m) | Outcome::Skip(m) => m,
    }
}

/// One line per test, as it finishes.
pub fn line(r: &TestResult) -> String {
    let d = detail(&r.outcome);
    format!(
        "{:<4} {:<6} {}{}",
        word(&r.outcome),
        r.level.as_str(),
        r.id,
        if d.is_empty() {
            String::new()
        } else {
            format!(": {d}")
        }
    )
}

/// The totals as a line.
pub fn summary(candidate: &str, results: &[TestResult]) -> String {
    let mut s = format!("{candidate}:");
    for (level, (p, f, k)) in totals(results) {
        s.push_str(&format!(
            " {} {p} passed, {f} failed, {k} skipped;",
            level.as_str()
        ));
    }
    s.push_str(if conformant(results) {
        " every MUST passed"
    } else {
        " NOT conformant: a MUST failed"
    });
    s
}

/// JSON: the candidate, each result, the totals.
pub fn to_json(candidate: &str, results: &[TestResult]) -> Value {
    let totals: serde_json::Map<String, Value> = totals(results)
        .into_iter()
        .map(|(l, (p, f, k))| {
            (
                l.as_str().to_string(),
                json!({"passed": p, "failed": f, "skipped": k}),
            )
        })
        .collect();
    json!({
        "candidate": candidate,
        "conformant": conformant(results),
        "totals": totals,
        "results": results.iter().map(|r| json!({
            "id": r.id, "level": r.level.as_str(), "requirement": r.text,
            "outcome": word(&r.outcome).to_lowercase(), "message": detail(&r.outcome),
            "seconds": (r.seconds * 1000.0).round() / 1000.0,
        })).collect::<Vec<_>>(),
    })
}

fn xml(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&apos;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// JUnit XML: one testsuite, a testcase per requirement (classname: its level).
pub fn to_junit(candidate: &str, results: &[TestResult]) -> String {
    let failures = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Fail(_)))
        .count();
    let skipped = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Skip(_)))
        .count();
    let time: f64 = results.iter().map(|r| r.seconds).sum();
    let mut s = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n<testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{time:.3}\">\n",
        xml(candidate),
        results.len()
    );
    for r in results {
        s.push_str(&format!(
            "  <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\">",
            r.level.as_str(),
            xml(r.id),
            r.seconds
        ));
        match &r.outcome {
            Outcome::Pass => {}
            Outcome::Fail(m) => s.push_str(&format!(
                "<failure message=\"{}\">{}</failure>",
                xml(m),
                xml(r.text)
            )),
            Outcome::Skip(m) => s.push_str(&format!("<skipped message=\"{}\"/>", xml(m))),
        }
        s.push_str("</testcase>\n");
    }
    s.push_str("</testsuite>\n</testsuites>\n");
    s
}

fn md(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Markdown: the totals per level, then every requirement.
pub fn to_markdown(candidate: &str, command: &str, results: &[TestResult]) -> String {
    let mut s = format!("### {}\n\n", md(candidate));
    if !command.is_empty() {
        s.push_str(&format!("```\n{command}\n```\n\n"));
    }
    s.push_str("| level | passed | failed | skipped |\n|---|---:|---:|---:|\n");
    for (l, (p, f, k)) in totals(results) {
        s.push_str(&format!("| {} | {p} | {f} | {k} |\n", l.as_str()));
    }
    s.push_str(&format!(
        "\n{}\n\n| requirement | level | result | what it says | detail |\n|---|---|---|---|---|\n",
        if conformant(results) {
            "Every MUST passes."
        } else {
            "**A MUST fails.**"
        }
    ));
    for r in results {
        s.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            r.id,
            r.level.as_str(),
            word(&r.outcome),
            md(r.text),
            md(detail(&r.outcome))
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: &'static str, level: Level, outcome: Outcome) -> TestResult {
        TestResult {
            id,
            level,
            text: "a <text> & \"quotes\"",
            outcome,
            seconds: 0.25,
        }
    }

    #[test]
    fn totals_verdict_and_formats() {
        let rs = vec![
            r("A", Level::Must, Outcome::Pass),
            r("B", Level::Should, Outcome::Fail("x < y".into())),
            r("C", Level::Must, Outcome::Skip("n/a".into())),
        ];
        assert!(
            conformant(&rs),
            "a failed SHOULD and a skipped MUST keep it conformant"
        );
        assert_eq!(totals(&rs)[&Level::Must], (1, 0, 1));
        let j = to_json("cand", &rs);
        assert_eq!(j["results"][1]["outcome"], "fail");
        assert_eq!(j["totals"]["SHOULD"]["failed"], 1);
        let x = to_junit("c&d", &rs);
        assert!(
            x.contains("name=\"c&amp;d\"")
                && x.contains("failures=\"1\"")
                && x.contains("skipped=\"1\""),
            "{x}"
        );
        assert!(x.contains("message=\"x &lt; y\""), "{x}");
        let m = to_markdown("cand", "cmd", &rs);
        assert!(
            m.contains("| MUST | 1 | 0 | 1 |") && m.contains("Every MUST passes."),
            "{m}"
        );
        let mut bad = rs.clone();
        bad.push(r("D", Level::Must, Outcome::Fail("no".into())));
        assert!(!conformant(&bad));
        assert!(summary("c", &bad).contains("NOT conformant"));
    }
}
