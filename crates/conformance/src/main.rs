//! `plexus-conformance`: runs the NPWG / device-info / CNI 1.1 conformance suite against
//! the meta-plugin a candidate file describes. Exit code 0 only when every MUST passes
//! (2 for a usage or set-up error).

use clap::Parser;
use plexus_conformance::candidate::CandidateFile;
use plexus_conformance::suite::{self, Env, Options, Requirement};
use plexus_conformance::{report, requirements};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "NPWG multi-network conformance suite for CNI meta-plugins"
)]
struct Args {
    /// The candidate file (see docs/conformance.md).
    #[arg(long, required_unless_present = "list")]
    candidate: Option<PathBuf>,
    /// A cluster to run against instead of the built-in test API server; the suite
    /// creates its own namespaces, NADs and pods there and removes them.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The node name the pods are placed on (`@NODE@`).
    #[arg(long, default_value = "conformance-node")]
    node: String,
    /// Only these requirements (ids, or prefixes ending in `*`), comma-separated.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Not these requirements (ids or prefixes ending in `*`).
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Lists the requirements and exits.
    #[arg(long)]
    list: bool,
    /// Time limit of one execution of the candidate, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout_seconds: u64,
    /// Writes the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Writes the report as JUnit XML here.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Writes the report as Markdown here.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

/// Prints a line; a closed stdout (`| head`) ends the output, not the program.
fn out(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn matches(pattern: &str, id: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => id.starts_with(prefix),
        None => pattern == id,
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let all = requirements::all();
    let chosen: Vec<&Requirement> = all
        .iter()
        .filter(|r| args.only.is_empty() || args.only.iter().any(|p| matches(p, r.id)))
        .filter(|r| !args.skip.iter().any(|p| matches(p, r.id)))
        .collect();
    if args.list {
        for r in &chosen {
            out(&format!("{:<50} {:<6} {}", r.id, r.level.as_str(), r.text));
        }
        return ExitCode::SUCCESS;
    }
    for p in args.only.iter().chain(&args.skip) {
        if !all.iter().any(|r| matches(p, r.id)) {
            eprintln!("plexus-conformance: {p:?} names no requirement (see --list)");
            return ExitCode::from(2);
        }
    }
    match run(&args, &chosen) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("plexus-conformance: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args, chosen: &[&Requirement]) -> anyhow::Result<bool> {
    let Some(path) = &args.candidate else {
        anyhow::bail!("--candidate is required");
    };
    let file = CandidateFile::load(path)?;
    let base = path
        .canonicalize()?
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let exe_dir = std::env::current_exe()?
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let opts = Options {
        kubeconfig: args.kubeconfig.clone(),
        node: args.node.clone(),
        timeout: Duration::from_secs(args.timeout_seconds.max(1)),
        exe_dir,
    };
    let env = Env::new(&file, &base, &opts)?;
    eprintln!(
        "plexus-conformance: {} requirements against {:?}",
        chosen.len(),
        file.name
    );
    let results = suite::run(&env, chosen, &mut |r| out(&report::line(r)));
    drop(env);
    out(&format!("\n{}", report::summary(&file.name, &results)));
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    if let Some(p) = &args.json {
        std::fs::write(
            p,
            serde_json::to_vec_pretty(&report::to_json(&file.name, &results))?,
        )?;
    }
    if let Some(p) = &args.junit {
        std::fs::write(p, report::to_junit(&file.name, &results))?;
    }
    if let Some(p) = &args.markdown {
        std::fs::write(p, report::to_markdown(&file.name, &command, &results))?;
    }
    Ok(report::conformant(&results))
}
