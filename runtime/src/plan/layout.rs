//! The arena: every value and every step's scratch gets a fixed place, assigned from the
//! values' lifetimes so that values not alive at the same time share memory.

/// Greedy placement by size (largest first): each item goes to the lowest 16-aligned offset
/// free of every placed item whose lifetime `[first, last]` intersects its own.
pub(super) fn assign_offsets(items: &[(usize, usize, usize)]) -> (Vec<usize>, usize) {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(items[i].0), i));
    let mut offsets = vec![0usize; items.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut total = 0usize;
    for i in order {
        let (len, f, l) = items[i];
        if len == 0 {
            continue;
        }
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| items[j].1 <= l && f <= items[j].2)
            .map(|&j| (offsets[j], offsets[j] + items[j].0))
            .collect();
        busy.sort_unstable();
        let mut off = 0usize;
        for (s, e) in busy {
            if off + len <= s {
                break;
            }
            off = off.max(e.next_multiple_of(16));
        }
        offsets[i] = off;
        total = total.max(off + len);
        placed.push(i);
    }
    (offsets, total.next_multiple_of(16))
}

#[cfg(test)]
mod tests {
    use super::assign_offsets;

    #[test]
    fn offsets_never_overlap_for_intersecting_lifetimes() {
        let items = vec![(100, 0, 2), (50, 1, 3), (70, 3, 5), (10, 0, 5), (0, 0, 5), (33, 4, 4), (100, 5, 6)];
        let (off, total) = assign_offsets(&items);
        for i in 0..items.len() {
            assert_eq!(off[i] % 16, 0);
            assert!(off[i] + items[i].0 <= total);
            for j in 0..i {
                let live = items[i].1 <= items[j].2 && items[j].1 <= items[i].2;
                let disjoint = off[i] + items[i].0 <= off[j] || off[j] + items[j].0 <= off[i];
                assert!(!live || disjoint || items[i].0 == 0 || items[j].0 == 0, "{i} and {j} overlap");
            }
        }
        // Reuse: 7 items but far less than their sum.
        assert!(total < items.iter().map(|x| x.0.next_multiple_of(16)).sum::<usize>());
    }
}
