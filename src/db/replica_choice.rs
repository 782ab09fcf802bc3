//! Replica choice: a pure decision over what the nodes published (routable, weight, in flight).
//!
//! Each shard owns one [`ReplicaChooser`]: its round-robin position and smooth-weighted counters
//! are its own, so picking a replica takes no lock and touches no other shard's memory. Every
//! shard keeps the weights' proportions on its own, so their sum does too.

use crate::config::ReplicaStrategy;

/// What the chooser knows of one replica when it picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub routable: bool,
    pub weight: u32,
    pub in_flight: u64,
}

/// One shard's replica picker.
#[derive(Debug, Clone)]
pub struct ReplicaChooser {
    strategy: ReplicaStrategy,
    /// Where round-robin (and least-connections' tie-break) starts next.
    next: usize,
    /// Smooth weighted round-robin's running weights, one per replica.
    current: Vec<i64>,
}

impl ReplicaChooser {
    pub fn new(strategy: ReplicaStrategy, replicas: usize) -> ReplicaChooser {
        ReplicaChooser {
            strategy,
            next: 0,
            current: vec![0; replicas],
        }
    }

    /// The replica to read from, or `None` when none is routable (the caller reads the primary).
    pub fn pick(&mut self, candidates: &[Candidate]) -> Option<usize> {
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        let rotated = (0..n).map(|k| (self.next + k) % n);
        let chosen = match self.strategy {
            ReplicaStrategy::RoundRobin => rotated.into_iter().find(|&i| candidates[i].routable)?,
            ReplicaStrategy::LeastConnections => rotated
                .into_iter()
                .filter(|&i| candidates[i].routable)
                .min_by_key(|&i| candidates[i].in_flight)?,
            ReplicaStrategy::Weighted => return self.pick_weighted(candidates),
        };
        self.next = (chosen + 1) % n;
        Some(chosen)
    }

    /// Smooth weighted round-robin (as nginx does it): every routable replica gains its weight,
    /// the one with the most is chosen and pays back the total. Weights 3/3/2 give the order
    /// A B C A B C A B, then again: no replica chosen in long runs. An unroutable replica's counter
    /// is reset, so it does not come back with a burst.
    fn pick_weighted(&mut self, candidates: &[Candidate]) -> Option<usize> {
        self.current.resize(candidates.len(), 0);
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, c) in candidates.iter().enumerate() {
            if !c.routable {
                self.current[i] = 0;
                continue;
            }
            self.current[i] += i64::from(c.weight);
            total += i64::from(c.weight);
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        self.current[best] -= total;
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(weight: u32, in_flight: u64) -> Candidate {
        Candidate {
            routable: true,
            weight,
            in_flight,
        }
    }

    fn down(weight: u32) -> Candidate {
        Candidate {
            routable: false,
            ..up(weight, 0)
        }
    }

    fn picks(strategy: ReplicaStrategy, candidates: &[Candidate], times: usize) -> Vec<usize> {
        let mut chooser = ReplicaChooser::new(strategy, candidates.len());
        (0..times)
            .map(|_| chooser.pick(candidates).expect("a replica"))
            .collect()
    }

    #[test]
    fn strategies() {
        use ReplicaStrategy::*;
        let cases: &[(ReplicaStrategy, &[Candidate], &[usize])] = &[
            (
                RoundRobin,
                &[up(3, 0), up(3, 0), up(2, 0)],
                &[0, 1, 2, 0, 1, 2],
            ),
            (RoundRobin, &[up(3, 0), down(3), up(2, 0)], &[0, 2, 0, 2]),
            (
                Weighted,
                &[up(3, 0), up(3, 0), up(2, 0)],
                &[0, 1, 2, 0, 1, 2, 0, 1],
            ),
            (Weighted, &[up(1, 0), up(1, 0)], &[0, 1, 0, 1]),
            (Weighted, &[down(3), up(3, 0), up(2, 0)], &[1, 2, 1, 2, 1]),
            (
                LeastConnections,
                &[up(1, 5), up(1, 2), up(1, 9)],
                &[1, 1, 1],
            ),
            (
                LeastConnections,
                &[up(1, 0), down(1), up(1, 0)],
                &[0, 2, 0, 2],
            ),
            (LeastConnections, &[down(1), up(1, 7), up(1, 3)], &[2, 2]),
        ];
        for (strategy, candidates, expected) in cases {
            assert_eq!(
                picks(*strategy, candidates, expected.len()),
                *expected,
                "{strategy:?} over {candidates:?}"
            );
        }
    }

    #[test]
    fn weighted_matches_the_weights_over_many_picks() {
        let candidates = [up(3, 0), up(3, 0), up(2, 0)];
        let mut counts = [0usize; 3];
        for i in picks(ReplicaStrategy::Weighted, &candidates, 8_000) {
            counts[i] += 1;
        }
        assert_eq!(counts, [3_000, 3_000, 2_000]);
    }

    #[test]
    fn none_routable_picks_none() {
        for strategy in [
            ReplicaStrategy::RoundRobin,
            ReplicaStrategy::LeastConnections,
            ReplicaStrategy::Weighted,
        ] {
            let mut chooser = ReplicaChooser::new(strategy, 2);
            assert_eq!(chooser.pick(&[down(1), down(2)]), None, "{strategy:?}");
            assert_eq!(chooser.pick(&[]), None, "{strategy:?}");
        }
    }
}
