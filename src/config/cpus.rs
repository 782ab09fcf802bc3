//! CPU lists such as `0-3,6`, as the kernel writes them in `/sys` and `taskset` reads them.

use std::fmt;
use std::str::FromStr;

/// A sorted list of distinct CPU ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(Vec<usize>);

impl CpuList {
    pub fn new(mut cpus: Vec<usize>) -> Self {
        cpus.sort_unstable();
        cpus.dedup();
        CpuList(cpus)
    }

    pub fn ids(&self) -> &[usize] {
        &self.0
    }
}

impl FromStr for CpuList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut cpus = Vec::new();
        for part in s.split(',').map(str::trim) {
            let parse = |n: &str| {
                n.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("`{n}` is not a CPU number"))
            };
            match part.split_once('-') {
                Some((first, last)) => {
                    let (first, last) = (parse(first)?, parse(last)?);
                    if first > last {
                        return Err(format!("range `{part}` runs backwards"));
                    }
                    cpus.extend(first..=last);
                }
                None if part.is_empty() => return Err("empty CPU list entry".to_string()),
                None => cpus.push(parse(part)?),
            }
        }
        Ok(CpuList::new(cpus))
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text: Vec<String> = self.0.iter().map(usize::to_string).collect();
        f.write_str(&text.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_ranges() {
        let cases: &[(&str, Result<&[usize], ()>)] = &[
            ("0", Ok(&[0])),
            ("0-3", Ok(&[0, 1, 2, 3])),
            ("3,1,1-2", Ok(&[1, 2, 3])),
            (" 4 , 6-7", Ok(&[4, 6, 7])),
            ("3-1", Err(())),
            ("a", Err(())),
            ("1,,2", Err(())),
            ("", Err(())),
        ];
        for (input, expected) in cases {
            let got = input.parse::<CpuList>();
            match expected {
                Ok(ids) => assert_eq!(got.unwrap().ids(), *ids, "{input}"),
                Err(()) => assert!(got.is_err(), "{input} should fail"),
            }
        }
    }
}
