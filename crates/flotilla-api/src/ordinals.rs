//! Ordinal spaces: which instance numbers a set may use.
//!
//! A set's space is the union of inclusive ranges and discrete ordinals (as KubeBlocks'
//! InstanceSet does it, e.g. to continue a migrated StatefulSet's numbering), minus its
//! offline ordinals; without a space it is 0, 1, 2, … . Ordinals are Kubernetes
//! `int32`s, so they never exceed [`MAX_ORDINAL`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The largest ordinal (`i32::MAX`, as Kubernetes stores ordinals).
pub const MAX_ORDINAL: u32 = i32::MAX as u32;

/// An ordinal space: ranges plus discrete ordinals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ordinals {
    /// Inclusive ranges, e.g. `{start: 0, end: 99}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<OrdinalRange>,
    /// Single ordinals outside the ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discrete: Vec<u32>,
}

/// An inclusive range of ordinals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrdinalRange {
    /// First ordinal of the range.
    pub start: u32,
    /// Last ordinal of the range (inclusive).
    pub end: u32,
}

impl Ordinals {
    /// The compact form of a list of ordinals: runs of two or more become ranges, the
    /// rest stay discrete. `ordinals` need not be sorted; duplicates are ignored.
    pub fn compact(ordinals: &[u32]) -> Ordinals {
        let mut sorted = ordinals.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut out = Ordinals::default();
        for (start, end) in runs(&sorted) {
            if start == end {
                out.discrete.push(start);
            } else {
                out.ranges.push(OrdinalRange { start, end });
            }
        }
        out
    }

    /// Every ordinal in the space, ascending, without duplicates.
    pub fn to_vec(&self) -> Vec<u32> {
        self.sorted_ranges()
            .into_iter()
            .flat_map(|(s, e)| s..=e)
            .collect()
    }

    /// The space as sorted, disjoint, non-adjacent inclusive ranges (ranges with
    /// `start > end` are skipped: validation reports them).
    pub fn sorted_ranges(&self) -> Vec<(u32, u32)> {
        let mut spans: Vec<(u32, u32)> = self
            .ranges
            .iter()
            .filter(|r| r.start <= r.end)
            .map(|r| (r.start, r.end))
            .chain(self.discrete.iter().map(|&d| (d, d)))
            .collect();
        spans.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(spans.len());
        for (s, e) in spans {
            match merged.last_mut() {
                Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        merged
    }
}

/// Maximal runs of consecutive values in a sorted, deduplicated slice.
pub fn runs(sorted: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &o in sorted {
        match out.last_mut() {
            Some(last) if last.1.checked_add(1) == Some(o) => last.1 = o,
            _ => out.push((o, o)),
        }
    }
    out
}

/// `0-3, 7, 9-10`: a short human form of a list of ordinals.
pub fn display_list(ordinals: &[u32]) -> String {
    joined_runs(ordinals, ", ")
}

/// `0-3,7,9-10`: the same without spaces, for labels and annotations.
pub fn compact_list(ordinals: &[u32]) -> String {
    joined_runs(ordinals, ",")
}

/// The ordinals of a [`compact_list`] (`0-3,7`); an unreadable part reads as none (these
/// lists are written by Flotilla itself, on annotations), and a range is capped at a
/// million ordinals.
pub fn parse_compact_list(text: &str) -> std::collections::BTreeSet<u32> {
    let mut out = std::collections::BTreeSet::new();
    for part in text.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.trim().parse::<u32>(), b.trim().parse::<u32>()) {
            out.extend(a..=b.min(a.saturating_add(1_000_000)));
        }
    }
    out
}

fn joined_runs(ordinals: &[u32], separator: &str) -> String {
    let mut sorted = ordinals.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    runs(&sorted)
        .into_iter()
        .map(|(s, e)| {
            if s == e {
                s.to_string()
            } else {
                format!("{s}-{e}")
            }
        })
        .collect::<Vec<_>>()
        .join(separator)
}

/// The usable ordinals of a set, ascending: its space (default `0..=MAX_ORDINAL`)
/// minus its offline ordinals. Lazy, so the default space costs nothing.
#[derive(Clone, Debug)]
pub struct OrdinalSpace {
    /// Sorted, disjoint inclusive ranges.
    ranges: Vec<(u32, u32)>,
    /// Sorted, deduplicated offline ordinals.
    offline: Vec<u32>,
}

impl OrdinalSpace {
    /// The space of a set with these `ordinals` (None = default) and offline ordinals.
    pub fn new(ordinals: Option<&Ordinals>, offline: &[u32]) -> OrdinalSpace {
        let ranges = match ordinals {
            Some(o) if !(o.ranges.is_empty() && o.discrete.is_empty()) => o.sorted_ranges(),
            _ => vec![(0, MAX_ORDINAL)],
        };
        let mut offline = offline.to_vec();
        offline.sort_unstable();
        offline.dedup();
        OrdinalSpace { ranges, offline }
    }

    /// True when `ordinal` may run: inside the space and not offline.
    pub fn contains(&self, ordinal: u32) -> bool {
        self.offline.binary_search(&ordinal).is_err()
            && self
                .ranges
                .binary_search_by(|&(s, e)| {
                    if e < ordinal {
                        std::cmp::Ordering::Less
                    } else if s > ordinal {
                        std::cmp::Ordering::Greater
                    } else {
                        std::cmp::Ordering::Equal
                    }
                })
                .is_ok()
    }

    /// How many ordinals may run (saturating at `u64::MAX`, which it never reaches).
    pub fn len(&self) -> u64 {
        let total: u64 = self.ranges.iter().map(|&(s, e)| u64::from(e - s) + 1).sum();
        let offline = self.offline.iter().filter(|&&o| self.in_ranges(o)).count() as u64;
        total - offline
    }

    /// True when no ordinal may run.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn in_ranges(&self, o: u32) -> bool {
        self.ranges.iter().any(|&(s, e)| s <= o && o <= e)
    }

    /// True when every ordinal from `start` to `end` (inclusive) may run.
    pub fn contains_span(&self, start: u32, end: u32) -> bool {
        let first_offline = self.offline.partition_point(|&o| o < start);
        self.offline.get(first_offline).is_none_or(|&o| o > end)
            && self.ranges.iter().any(|&(s, e)| s <= start && end <= e)
    }

    /// The usable ordinals as maximal inclusive ranges, ascending (the ranges with
    /// the offline ordinals cut out).
    pub fn runs(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.ranges.iter().flat_map(move |&(s, e)| {
            let from = self.offline.partition_point(|&o| o < s);
            let to = self.offline.partition_point(|&o| o <= e);
            let cuts = &self.offline[from..to];
            // Between consecutive cuts (and the range's ends), what is left.
            let starts = std::iter::once(s).chain(cuts.iter().map(|&o| o + 1));
            let ends = cuts
                .iter()
                .map(|&o| o.checked_sub(1))
                .chain(std::iter::once(Some(e)));
            starts
                .zip(ends)
                .filter_map(|(a, b)| b.filter(|&b| a <= b).map(|b| (a, b)))
        })
    }

    /// The usable ordinals, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.ranges
            .iter()
            .flat_map(|&(s, e)| s..=e)
            .filter(|o| self.offline.binary_search(o).is_err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_makes_ranges_of_runs() {
        let o = Ordinals::compact(&[5, 0, 1, 2, 9, 10, 2]);
        assert_eq!(
            o.ranges,
            vec![
                OrdinalRange { start: 0, end: 2 },
                OrdinalRange { start: 9, end: 10 }
            ]
        );
        assert_eq!(o.discrete, vec![5]);
        assert_eq!(o.to_vec(), vec![0, 1, 2, 5, 9, 10]);
    }

    #[test]
    fn space_skips_offline_and_merges_overlaps() {
        let o = Ordinals {
            ranges: vec![
                OrdinalRange { start: 0, end: 4 },
                OrdinalRange { start: 3, end: 6 },
            ],
            discrete: vec![500, 7],
        };
        let space = OrdinalSpace::new(Some(&o), &[3, 3, 1000]);
        assert_eq!(
            space.iter().collect::<Vec<_>>(),
            vec![0, 1, 2, 4, 5, 6, 7, 500]
        );
        assert_eq!(space.len(), 8);
        assert!(space.contains(500) && !space.contains(3) && !space.contains(8));
    }

    #[test]
    fn runs_and_spans_agree_with_the_ordinals() {
        let o = Ordinals {
            ranges: vec![
                OrdinalRange { start: 0, end: 4 },
                OrdinalRange { start: 3, end: 9 },
                OrdinalRange { start: 20, end: 22 },
            ],
            discrete: vec![500, 7],
        };
        for offline in [
            vec![],
            vec![0],
            vec![3, 4, 9],
            vec![21, 22, 500, 1000],
            vec![20, 22],
        ] {
            let space = OrdinalSpace::new(Some(&o), &offline);
            let all: Vec<u32> = space.iter().collect();
            assert_eq!(
                space.runs().collect::<Vec<_>>(),
                runs(&all),
                "offline {offline:?}"
            );
            for a in 0..25 {
                for b in a..25 {
                    let every = (a..=b).all(|x| space.contains(x));
                    assert_eq!(
                        space.contains_span(a, b),
                        every,
                        "{a}-{b}, offline {offline:?}"
                    );
                }
            }
        }
        let space = OrdinalSpace::new(None, &[0, MAX_ORDINAL]);
        assert_eq!(space.runs().collect::<Vec<_>>(), vec![(1, MAX_ORDINAL - 1)]);
        assert!(space.contains_span(1, MAX_ORDINAL - 1) && !space.contains_span(0, 5));
    }

    #[test]
    fn default_space_is_lazy_and_huge() {
        let space = OrdinalSpace::new(None, &[1]);
        assert_eq!(space.iter().take(3).collect::<Vec<_>>(), vec![0, 2, 3]);
        assert_eq!(space.len(), u64::from(MAX_ORDINAL));
    }

    #[test]
    fn display_list_is_short() {
        assert_eq!(display_list(&[11, 8, 9, 10, 15]), "8-11, 15");
        assert_eq!(display_list(&[]), "");
    }
}
