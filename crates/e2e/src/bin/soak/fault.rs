//! The faults the soak injects, and how often.

/// One cycle's fault.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Fault {
    /// No fault of its own (other workers' outages still reach it).
    None,
    /// The API server is down (connections refused) through the ADD and the DEL.
    ApiDown,
    /// The API server answers 503 to the next few requests.
    ApiErrors,
    /// The process doing the ADD is killed (-9) at a random moment: `plexus` in thin
    /// mode, `plexusd` in thick mode (restarted at once, as its DaemonSet would).
    Killed,
    /// One of the pod's networks fails its ADD.
    DelegateFails,
    /// One of the pod's networks hangs in its ADD until the delegate time limit.
    DelegateHangs,
    /// The pod's namespace is gone before the DEL (the runtime removed it first).
    NetnsGone,
}

/// Every fault, each of which the soak injects at least once.
pub const ALL: [Fault; 6] = [
    Fault::ApiDown,
    Fault::ApiErrors,
    Fault::Killed,
    Fault::DelegateFails,
    Fault::DelegateHangs,
    Fault::NetnsGone,
];

impl Fault {
    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::ApiDown => "API server down",
            Fault::ApiErrors => "API server errors (503)",
            Fault::Killed => "plugin or daemon killed mid-ADD",
            Fault::DelegateFails => "delegate fails",
            Fault::DelegateHangs => "delegate hangs",
            Fault::NetnsGone => "namespace gone before DEL",
        }
    }

    /// Relative weight among faulty cycles: the slow ones (an outage waits out the
    /// client's retries, a hang the delegate time limit) are rarer.
    fn weight(self) -> u32 {
        match self {
            Fault::None => 0,
            Fault::ApiDown => 2,
            Fault::DelegateHangs => 1,
            Fault::ApiErrors | Fault::Killed | Fault::DelegateFails => 5,
            Fault::NetnsGone => 6,
        }
    }
}

/// The fault of cycle `n`: the first cycles go through every fault once, then each
/// cycle is faulty with probability `rate`. `kills` is false where killing is off
/// (the daemon's memory is measured over one lifetime).
pub fn pick(rng: &mut fastrand::Rng, n: usize, rate: f64, kills: bool) -> Fault {
    if let Some(f) = ALL.get(n) {
        return *f;
    }
    if rng.f64() >= rate {
        return Fault::None;
    }
    let choices: Vec<Fault> = ALL
        .iter()
        .copied()
        .filter(|f| kills || *f != Fault::Killed)
        .collect();
    let total: u32 = choices.iter().map(|f| f.weight()).sum();
    let mut x = rng.u32(0..total);
    for f in choices {
        if x < f.weight() {
            return f;
        }
        x -= f.weight();
    }
    Fault::None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fault_comes_first_then_the_rate_holds() {
        let mut rng = fastrand::Rng::with_seed(7);
        let first: Vec<Fault> = (0..ALL.len())
            .map(|n| pick(&mut rng, n, 0.0, true))
            .collect();
        assert_eq!(first, ALL);
        let faulty = (ALL.len()..10_000)
            .filter(|&n| pick(&mut rng, n, 0.3, false) != Fault::None)
            .count();
        assert!((2_500..3_500).contains(&faulty), "{faulty}");
        assert!((100..10_000).all(|n| pick(&mut rng, n, 1.0, false) != Fault::Killed));
    }
}
