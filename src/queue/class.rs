//! The four priority classes, their CPU weights, aging, and which class each route runs in.

use std::time::Duration;

/// A priority class. Jobs and HTTP requests of a class share its CPU weight on the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High = 0,
    Medium = 1,
    Low = 2,
    Background = 3,
}

/// A waiting job raises its class's weight by the class's own weight once per this much waiting,
/// up to the top weight: background work still moves when higher classes keep the core busy.
pub const AGING_STEP: Duration = Duration::from_secs(1);

impl Priority {
    pub const ALL: [Priority; 4] = [
        Priority::High,
        Priority::Medium,
        Priority::Low,
        Priority::Background,
    ];

    /// Relative CPU share when every class has work: 8:4:2:1.
    pub const fn weight(self) -> u32 {
        match self {
            Priority::High => 8,
            Priority::Medium => 4,
            Priority::Low => 2,
            Priority::Background => 1,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
            Priority::Background => "background",
        }
    }

    pub fn parse(text: &str) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.as_str() == text)
    }

    pub const fn index(self) -> usize {
        self as usize
    }
}

/// The weight a class gets when its oldest waiting job has waited `oldest_wait` (aging).
pub fn aged_weight(class: Priority, oldest_wait: Option<Duration>) -> u32 {
    let Some(wait) = oldest_wait else {
        return class.weight();
    };
    let steps = (wait.as_nanos() / AGING_STEP.as_nanos()).min(u32::MAX as u128) as u32;
    class
        .weight()
        .saturating_mul(steps.saturating_add(1))
        .min(Priority::High.weight())
}

/// Weighted turn-taking between the classes (stride scheduling), for an engine whose scheduler
/// has no shares of its own: of the classes with something to run, the turn goes to the one
/// that has had the least of its weight so far. With every class busy they get turns in the
/// ratio of their weights (8:4:2:1, or as aging sets them); a class that had nothing to do
/// rejoins level with the others, without credit saved up, so no class can hold the core after
/// an idle spell, and none starves.
#[derive(Debug, Clone)]
pub struct Turns {
    /// Virtual time each class has used.
    pass: [u64; 4],
    /// Virtual time one turn costs each class: inversely proportional to its weight.
    stride: [u64; 4],
    /// The pass of the last class served: where a returning class rejoins.
    level: u64,
}

/// The stride of weight 1.
const STRIDE_UNIT: u64 = 1 << 20;

impl Default for Turns {
    fn default() -> Self {
        Turns {
            pass: [0; 4],
            stride: Priority::ALL.map(|class| STRIDE_UNIT / u64::from(class.weight())),
            level: 0,
        }
    }
}

impl Turns {
    /// The weight `class` gets from now on.
    pub fn set_weight(&mut self, class: Priority, weight: u32) {
        self.stride[class.index()] = STRIDE_UNIT / u64::from(weight.max(1));
    }

    /// The class whose turn it is among those `ready` (by index), charged for the turn; `None`
    /// when none is ready. Ties go to the higher class.
    pub fn next(&mut self, ready: [bool; 4]) -> Option<Priority> {
        let level = self.level;
        let pick = Priority::ALL
            .into_iter()
            .filter(|class| ready[class.index()])
            .min_by_key(|class| self.pass[class.index()].max(level))?;
        let i = pick.index();
        self.pass[i] = self.pass[i].max(level);
        self.level = self.pass[i];
        self.pass[i] += self.stride[i];
        Some(pick)
    }
}

/// Overrides of the route table's classes (`QUEUE_ROUTE_CLASSES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteClasses {
    /// `none`: every request runs outside the classes.
    pub disabled: bool,
    /// Route name and its class (`None`: outside the classes).
    pub overrides: Vec<(String, Option<Priority>)>,
}

impl RouteClasses {
    /// Parses `none` or `route=class,...` (class: high, medium, low, background or none).
    pub fn parse(text: &str) -> Result<RouteClasses, String> {
        let text = text.trim();
        if text == "none" {
            return Ok(RouteClasses {
                disabled: true,
                overrides: Vec::new(),
            });
        }
        let mut overrides = Vec::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (route, class) = pair
                .split_once('=')
                .ok_or_else(|| format!("expected route=class, got {pair:?}"))?;
            let route = route.trim();
            if !crate::app::routes::ROUTE_NAMES.contains(&route) {
                return Err(format!(
                    "unknown route {route:?}; routes: {}",
                    crate::app::routes::ROUTE_NAMES.join(", ")
                ));
            }
            let class = match class.trim() {
                "none" => None,
                name => Some(Priority::parse(name).ok_or_else(|| {
                    format!("unknown class {name:?}; classes: high, medium, low, background, none")
                })?),
            };
            overrides.push((route.to_string(), class));
        }
        Ok(RouteClasses {
            disabled: false,
            overrides,
        })
    }

    /// The class of each route: the table's default unless overridden.
    pub fn resolve(
        this: Option<&RouteClasses>,
        names: &[&str],
        defaults: &[Option<Priority>],
    ) -> Vec<Option<Priority>> {
        names
            .iter()
            .zip(defaults)
            .map(|(name, default)| match this {
                Some(c) if c.disabled => None,
                Some(c) => c
                    .overrides
                    .iter()
                    .rev()
                    .find(|(route, _)| route == name)
                    .map_or(*default, |(_, class)| *class),
                None => *default,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_follow_the_weights_and_let_no_class_bank_credit() {
        let mut turns = Turns::default();
        let mut counts = [0u32; 4];
        for _ in 0..150 {
            counts[turns.next([true; 4]).unwrap().index()] += 1;
        }
        assert_eq!(counts, [80, 40, 20, 10]);
        // Only background and low have work: 1:2, and they do not stall.
        let mut counts = [0u32; 4];
        for _ in 0..30 {
            counts[turns.next([false, false, true, true]).unwrap().index()] += 1;
        }
        assert_eq!(counts, [0, 0, 20, 10]);
        // High and medium come back after idling for 30 turns: they rejoin level, they do not
        // take the next 30 turns to catch up.
        let mut counts = [0u32; 4];
        for _ in 0..30 {
            counts[turns.next([true; 4]).unwrap().index()] += 1;
        }
        assert!(
            counts[0] <= 17 && counts[2] >= 3 && counts[3] >= 1,
            "{counts:?}"
        );
        assert_eq!(turns.next([false; 4]), None);
        // Aging: background at weight 8 gets as many turns as high.
        let mut turns = Turns::default();
        turns.set_weight(Priority::Background, 8);
        let mut counts = [0u32; 4];
        for _ in 0..16 {
            counts[turns.next([true, false, false, true]).unwrap().index()] += 1;
        }
        assert_eq!(counts, [8, 0, 0, 8]);
    }

    #[test]
    fn aging_table() {
        let s = Duration::from_secs;
        let cases = [
            (Priority::Background, None, 1),
            (Priority::Background, Some(Duration::from_millis(999)), 1),
            (Priority::Background, Some(s(1)), 2),
            (Priority::Background, Some(s(3)), 4),
            (Priority::Background, Some(s(7)), 8),
            (Priority::Background, Some(s(3600)), 8),
            (Priority::Low, Some(s(1)), 4),
            (Priority::Low, Some(s(5)), 8),
            (Priority::Medium, Some(s(1)), 8),
            (Priority::High, Some(s(100)), 8),
        ];
        for (class, wait, expected) in cases {
            assert_eq!(aged_weight(class, wait), expected, "{class:?} {wait:?}");
        }
    }

    #[test]
    fn route_classes_parse_and_resolve() {
        let names = ["health", "metrics", "livez"];
        let defaults = [None, Some(Priority::Background), None];
        let parsed = RouteClasses::parse("livez=high, metrics=none").unwrap();
        assert_eq!(
            RouteClasses::resolve(Some(&parsed), &names, &defaults),
            vec![None, None, Some(Priority::High)]
        );
        let off = RouteClasses::parse("none").unwrap();
        assert_eq!(
            RouteClasses::resolve(Some(&off), &names, &defaults),
            vec![None, None, None]
        );
        assert_eq!(
            RouteClasses::resolve(None, &names, &defaults),
            defaults.to_vec()
        );
        for bad in ["livez", "nope=high", "livez=urgent"] {
            assert!(RouteClasses::parse(bad).is_err(), "{bad}");
        }
    }
}
