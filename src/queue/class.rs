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
