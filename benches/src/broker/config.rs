//! What a run of the broker bench is asked to do, read from the environment.

use super::{BenchError, CLIENTS, Case, DEFAULT_N, DEFAULT_ROUNDS, RPC_CALLS, RuntimeKind, Workload};

/// What the environment asked for.
#[derive(Debug, Clone)]
pub struct Config {
    /// The broker.
    pub url: String,
    /// Messages per run for lepus and the ceiling.
    pub n: u64,
    /// Messages per run for lapin.
    pub lapin_n: u64,
    /// Measured rpc calls.
    pub rpc_calls: u64,
    /// The selected workloads.
    pub workloads: Vec<Workload>,
    /// The selected body sizes (empty: every size a workload has).
    pub sizes: Vec<usize>,
    /// The clients that run (`lepus`, `lapin`, `ceiling`).
    pub clients: Vec<&'static str>,
    /// Rounds of the cases that are repeated (publish 64 B, confirm, consume 64 B).
    pub rounds: u64,
    /// The runtimes lepus and lapin run on, each on a fresh one per run.
    pub runtimes: Vec<RuntimeKind>,
    /// The runtimes the ceiling runs on.
    pub ceiling_runtimes: Vec<RuntimeKind>,
    /// Whether lepus's and lapin's workloads run in a spawned task (on a worker of the
    /// multi-thread runtime) instead of in `block_on` (`LEPUS_BENCH_SPAWN`).
    pub spawn: bool,
}

/// `current`, `multi`, `both`, or a comma-separated list of the first two.
fn runtime_list(name: &str, value: Option<&str>, default: &[RuntimeKind]) -> Result<Vec<RuntimeKind>, BenchError> {
    let Some(value) = value else { return Ok(default.to_vec()) };
    let mut kinds = Vec::new();
    for part in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let more: &[RuntimeKind] = match part {
            "current" => &[RuntimeKind::CurrentThread],
            "multi" => &[RuntimeKind::MultiThread],
            "both" => &RuntimeKind::ALL,
            other => return Err(format!("{name}: {other:?} is not current, multi or both").into()),
        };
        for kind in more {
            if !kinds.contains(kind) {
                kinds.push(*kind);
            }
        }
    }
    if kinds.is_empty() {
        return Err(format!("{name}: empty").into());
    }
    Ok(kinds)
}

/// A comma-separated list of names, each of which must be in `known`.
fn names<T: Copy>(name: &str, list: &str, known: impl Fn(&str) -> Option<T>, hint: &str) -> Result<Vec<T>, BenchError> {
    let mut found = Vec::new();
    for part in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match known(part) {
            Some(item) => found.push(item),
            None => return Err(format!("{name}: unknown {part:?}{hint}").into()),
        }
    }
    Ok(found)
}

impl Config {
    /// Reads the environment (see the module docs of [`super`]).
    pub fn from_env() -> Result<Config, BenchError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let url = match (var("AMQP_URL"), var("AMQP_HOST")) {
            (Some(url), _) => url,
            (None, Some(host)) => {
                let port = var("AMQP_PORT").unwrap_or_else(|| "5672".to_owned());
                format!("amqp://guest:guest@{host}:{port}/%2f")
            }
            (None, None) => "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
        };
        let count = |name: &str| -> Result<Option<u64>, BenchError> {
            match var(name) {
                None => Ok(None),
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if n > 0 => Ok(Some(n)),
                    _ => Err(format!("{name} must be a positive integer, not {v:?}").into()),
                },
            }
        };
        let n = count("LEPUS_BENCH_N")?.unwrap_or(DEFAULT_N);
        let lapin_n = count("LEPUS_BENCH_LAPIN_N")?.unwrap_or(n);
        let workloads = match var("LEPUS_BENCH_ONLY") {
            None => Workload::ALL.to_vec(),
            Some(list) => names(
                "LEPUS_BENCH_ONLY",
                &list,
                |p| Workload::ALL.into_iter().find(|w| w.name() == p),
                " (workloads: publish, confirm, consume, rpc, pubsub; pick clients with LEPUS_BENCH_CLIENTS)",
            )?,
        };
        let sizes = match var("LEPUS_BENCH_SIZE") {
            None => Vec::new(),
            Some(list) => names("LEPUS_BENCH_SIZE", &list, |p| p.parse::<usize>().ok(), " (a size in bytes)")?,
        };
        let clients = match var("LEPUS_BENCH_CLIENTS") {
            None => CLIENTS.to_vec(),
            Some(list) => names("LEPUS_BENCH_CLIENTS", &list, |p| CLIENTS.into_iter().find(|c| *c == p), "")?,
        };
        let runtimes = runtime_list("LEPUS_BENCH_RUNTIME", var("LEPUS_BENCH_RUNTIME").as_deref(), &RuntimeKind::ALL)?;
        let ceiling_runtimes = runtime_list(
            "LEPUS_BENCH_CEILING_RUNTIME",
            var("LEPUS_BENCH_CEILING_RUNTIME").as_deref(),
            &[RuntimeKind::CurrentThread],
        )?;
        let rounds = count("LEPUS_BENCH_ROUNDS")?.unwrap_or(DEFAULT_ROUNDS);
        let spawn = var("LEPUS_BENCH_SPAWN").is_some_and(|v| !v.trim().is_empty() && v.trim() != "0");
        Ok(Config {
            url,
            n,
            lapin_n,
            rpc_calls: RPC_CALLS.min(n),
            workloads,
            sizes,
            clients,
            rounds,
            runtimes,
            ceiling_runtimes,
            spawn,
        })
    }

    /// True if `client` is to run.
    pub fn runs(&self, client: &str) -> bool {
        self.clients.contains(&client)
    }

    /// How many rounds `case` gets: [`Config::rounds`] for the cases of
    /// [`Case::is_repeated`]; one for the rest.
    pub fn rounds_of(&self, case: Case) -> u64 {
        if case.is_repeated() { self.rounds } else { 1 }
    }

    /// The runs of `workload`, with `n` messages (rpc: `rpc_calls`), at the selected sizes.
    pub fn cases(&self, workload: Workload, n: u64) -> Vec<Case> {
        let n = if workload == Workload::Rpc { self.rpc_calls.min(n) } else { n };
        workload
            .sizes()
            .iter()
            .filter(|size| self.sizes.is_empty() || self.sizes.contains(size))
            .map(|&size| Case { workload, size, n })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            url: String::new(),
            n: 1000,
            lapin_n: 1000,
            rpc_calls: 1000,
            workloads: Workload::ALL.to_vec(),
            sizes: Vec::new(),
            clients: CLIENTS.to_vec(),
            rounds: 3,
            runtimes: RuntimeKind::ALL.to_vec(),
            ceiling_runtimes: vec![RuntimeKind::CurrentThread],
            spawn: false,
        }
    }

    #[test]
    fn cases_cover_the_sizes() {
        let config = config();
        let sizes = |w| config.cases(w, 1000).iter().map(|c| c.size).collect::<Vec<_>>();
        assert_eq!(sizes(Workload::Publish), [64, 4096]);
        assert_eq!(sizes(Workload::Consume), [64, 4096]);
        assert_eq!(sizes(Workload::Confirm), [64]);
        assert_eq!(config.cases(Workload::Rpc, 500)[0].n, 500);
        let small = Config { sizes: vec![64], ..config };
        assert_eq!(small.cases(Workload::Consume, 10).len(), 1);
    }

    #[test]
    fn runtime_lists() {
        let all = RuntimeKind::ALL;
        assert_eq!(runtime_list("X", None, &all).unwrap(), all);
        assert_eq!(runtime_list("X", Some("multi"), &all).unwrap(), [RuntimeKind::MultiThread]);
        assert_eq!(runtime_list("X", Some("both,current"), &all).unwrap(), all);
        assert!(runtime_list("X", Some("fast"), &all).is_err());
        assert!(runtime_list("X", Some(","), &all).is_err());
    }

    #[test]
    fn rounds_only_for_repeated_cases() {
        let config = config();
        assert_eq!(config.rounds_of(Case { workload: Workload::Confirm, size: 64, n: 1 }), 3);
        assert_eq!(config.rounds_of(Case { workload: Workload::Consume, size: 64, n: 1 }), 3);
        assert_eq!(config.rounds_of(Case { workload: Workload::Consume, size: 4096, n: 1 }), 1);
        assert_eq!(config.rounds_of(Case { workload: Workload::Rpc, size: 64, n: 1 }), 1);
    }
}
