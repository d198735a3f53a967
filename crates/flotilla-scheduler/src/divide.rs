//! Dividing a count between clusters by weight, within per-cluster bounds.
//!
//! Each slot gets `clamp(λ·weight, lo, hi)` for the one λ at which the slots add up to
//! the total, so a cluster held at a bound hands its surplus (or deficit) to the others
//! in proportion to their weights. The fractional parts are then rounded by largest
//! remainder, ties to the lower slot index (slots are in cluster-name order).
//!
//! Everything is exact: λ is a fraction of two integers and weights, bounds and totals
//! fit in `u32`, so every product fits in `u128`. Slots of weight 0 get only their `lo`
//! until every weighted slot is full; then they share the rest equally.

use std::cmp::Ordering;

/// One cluster's share of a division.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Relative weight (at most `u32::MAX`).
    pub weight: u64,
    /// Gets at least this many (lowered to `hi` if above it).
    pub lo: u32,
    /// Gets at most this many.
    pub hi: u32,
}

/// Divides `total` between `slots`: every slot gets between its `lo` and `hi`, and the
/// counts add up to `total` clamped to `[Σlo, Σhi]`.
pub fn divide(total: u32, slots: &[Slot]) -> Vec<u32> {
    let lo: Vec<u32> = slots.iter().map(|s| s.lo.min(s.hi)).collect();
    let base: u64 = lo.iter().map(|&l| u64::from(l)).sum();
    let total = u64::from(total);
    if total <= base {
        return lo;
    }
    let mut out = lo.clone();
    let growable = |zero: bool| -> Vec<(usize, Slot)> {
        slots
            .iter()
            .enumerate()
            .filter(|(i, s)| (s.weight == 0) == zero && s.hi > lo[*i])
            .map(|(i, s)| {
                (
                    i,
                    Slot {
                        weight: s.weight.max(1),
                        lo: lo[i],
                        hi: s.hi,
                    },
                )
            })
            .collect()
    };
    let weighted = growable(false);
    let room: u64 = weighted.iter().map(|(_, s)| u64::from(s.hi - s.lo)).sum();
    let mut left = total - base;
    if left >= room {
        for (i, s) in &weighted {
            out[*i] = s.hi;
        }
        left -= room;
        let unweighted = growable(true);
        let room: u64 = unweighted.iter().map(|(_, s)| u64::from(s.hi - s.lo)).sum();
        if left >= room {
            for (i, s) in &unweighted {
                out[*i] = s.hi;
            }
        } else {
            fill(&unweighted, left, &mut out);
        }
    } else {
        fill(&weighted, left, &mut out);
    }
    out
}

/// A non-negative fraction `num / den` with `den > 0` (both a bound or a weight, so
/// every product of two fits in `u128` as one widening multiplication).
#[derive(Clone, Copy, Debug)]
struct Frac {
    num: u64,
    den: u64,
}

impl Frac {
    fn cmp(self, other: Frac) -> Ordering {
        mul(self.num, other.den).cmp(&mul(other.num, self.den))
    }
}

/// `a · b`, exact.
fn mul(a: u64, b: u64) -> u128 {
    u128::from(a) * u128::from(b)
}

/// `(a / b, a % b)`, in 64 bits when the operands fit (a 128-bit division is slow).
fn div_rem(a: u128, b: u128) -> (u128, u128) {
    match (u64::try_from(a), u64::try_from(b)) {
        (Ok(a), Ok(b)) => (u128::from(a / b), u128::from(a % b)),
        _ => (a / b, a % b),
    }
}

/// Adds `left` to the slots (all with weight > 0, `lo < hi`, and `left < Σ(hi − lo)`),
/// proportionally to weight, each within its bounds.
fn fill(slots: &[(usize, Slot)], left: u64, out: &mut [u32]) {
    let target: u128 = u128::from(left) + slots.iter().map(|(_, s)| u128::from(s.lo)).sum::<u128>();
    // f(λ) = Σ clamp(λ·w, lo, hi), compared with `target` at λ = b without division.
    let at_most_target = |b: Frac| -> bool {
        let sum: u128 = slots
            .iter()
            .map(|(_, s)| {
                mul(b.num, s.weight).clamp(mul(u64::from(s.lo), b.den), mul(u64::from(s.hi), b.den))
            })
            .sum();
        sum <= target * u128::from(b.den)
    };
    let mut breaks: Vec<Frac> = slots
        .iter()
        .flat_map(|(_, s)| {
            [
                Frac {
                    num: u64::from(s.lo),
                    den: s.weight,
                },
                Frac {
                    num: u64::from(s.hi),
                    den: s.weight,
                },
            ]
        })
        .collect();
    // Equal breakpoints are merged below, so their order does not matter.
    breaks.sort_unstable_by(|a, b| a.cmp(*b));
    breaks.dedup_by(|a, b| a.cmp(*b) == Ordering::Equal);
    // f is non-decreasing, f(first) = Σlo ≤ target < Σhi = f(last): find the last
    // breakpoint at or below the target; λ lies between it and the next one.
    let k = breaks.partition_point(|&b| at_most_target(b)) - 1;
    let b = breaks[k];
    let mut fixed: u128 = 0;
    let mut free: Vec<(usize, u128)> = Vec::new();
    for &(i, s) in slots {
        let w = u128::from(s.weight);
        if mul(u64::from(s.hi), b.den) <= mul(b.num, s.weight) {
            out[i] = s.hi;
            fixed += u128::from(s.hi);
        } else if mul(u64::from(s.lo), b.den) > mul(b.num, s.weight) {
            out[i] = s.lo;
            fixed += u128::from(s.lo);
        } else {
            free.push((i, w));
        }
    }
    // λ = num / den exactly; each free slot gets λ·w, floored, then largest remainder.
    let num = target - fixed;
    let den: u128 = free.iter().map(|&(_, w)| w).sum();
    let mut given: u128 = 0;
    let mut remainders: Vec<(u128, usize)> = Vec::with_capacity(free.len());
    for &(i, w) in &free {
        let (share, remainder) = div_rem(num * w, den);
        out[i] = share as u32;
        given += share;
        remainders.push((remainder, i));
    }
    // Slot indices are distinct: the order is total.
    remainders.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in remainders.iter().take((num - given) as usize) {
        out[i] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(weight: u64, lo: u32, hi: u32) -> Slot {
        Slot { weight, lo, hi }
    }

    #[track_caller]
    fn check(total: u32, slots: &[Slot], expect: &[u32]) {
        assert_eq!(divide(total, slots), expect, "divide({total}, {slots:?})");
    }

    #[test]
    fn divides_by_weight_with_largest_remainder() {
        check(12, &[s(2, 0, 100), s(1, 0, 100)], &[8, 4]);
        check(10, &[s(1, 0, 100), s(1, 0, 100), s(1, 0, 100)], &[4, 3, 3]);
        check(2, &[s(1, 0, 9), s(1, 0, 9), s(1, 0, 9)], &[1, 1, 0]);
        check(7, &[s(3, 0, 9), s(3, 0, 9), s(1, 0, 9)], &[3, 3, 1]);
        check(0, &[s(1, 0, 9)], &[0]);
    }

    #[test]
    fn full_slots_pass_their_share_on_by_weight() {
        check(12, &[s(2, 0, 3), s(1, 0, 100), s(1, 0, 100)], &[3, 5, 4]);
        check(100, &[s(1, 0, 10), s(1, 0, 20), s(1, 0, 30)], &[10, 20, 30]);
    }

    #[test]
    fn lower_bounds_hold_and_the_rest_goes_by_weight() {
        check(10, &[s(1, 6, 100), s(1, 0, 100)], &[6, 4]);
        check(10, &[s(1, 2, 100), s(1, 0, 100)], &[5, 5]);
        check(3, &[s(1, 5, 100), s(1, 0, 100)], &[5, 0]);
    }

    #[test]
    fn weightless_slots_only_take_the_overflow() {
        check(5, &[s(1, 0, 10), s(0, 0, 10)], &[5, 0]);
        check(15, &[s(1, 0, 10), s(0, 0, 10), s(0, 0, 10)], &[10, 3, 2]);
        check(9, &[s(0, 1, 10), s(3, 0, 10)], &[1, 8]);
    }

    #[test]
    fn capacity_weights_fill_evenly() {
        check(
            50,
            &[s(100, 0, 100), s(50, 0, 50), s(10, 0, 10)],
            &[31, 16, 3],
        );
    }

    #[test]
    fn huge_weights_stay_exact() {
        let max = u32::MAX;
        check(
            max,
            &[s(u64::from(max), 0, max), s(u64::from(max), 0, max)],
            &[max / 2 + 1, max / 2],
        );
    }
}
