//! What a room's document holds, as far as checking updates needs to know:
//! each client's next clock, the items that are shared types and the
//! deleted ranges. A server keeps one per room it serves (built from the
//! document an initial sync assembled, then moved on by every accepted
//! stream entry), instead of the document itself.

use std::collections::{HashMap, HashSet};

use crate::update::{Effects, Id, Known};

/// Disjoint, sorted, non-adjacent ranges `start..end` of clocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<(u32, u32)>,
}

impl RangeSet {
    pub fn insert(&mut self, start: u32, end: u32) {
        if start >= end {
            return;
        }
        // Every range that overlaps or touches start..end merges with it.
        let first = self.ranges.partition_point(|&(_, e)| e < start);
        let last = self.ranges.partition_point(|&(s, _)| s <= end);
        if first == last {
            self.ranges.insert(first, (start, end));
            return;
        }
        let merged = (
            start.min(self.ranges[first].0),
            end.max(self.ranges[last - 1].1),
        );
        self.ranges.splice(first..last, std::iter::once(merged));
    }

    /// Inserts many ranges at once, in any order: sorted and merged with
    /// the set in one pass (inserting them one by one shifts the set's tail
    /// each time, quadratic in a delete set written back to front).
    pub fn insert_all(&mut self, mut ranges: Vec<(u32, u32)>) {
        if ranges.len() <= 1 {
            for (start, end) in ranges {
                self.insert(start, end);
            }
            return;
        }
        ranges.sort_unstable();
        let held = std::mem::take(&mut self.ranges);
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(held.len() + ranges.len());
        let mut held = held.into_iter().peekable();
        let mut new = ranges.into_iter().peekable();
        loop {
            let next = match (held.peek(), new.peek()) {
                (Some(a), Some(b)) if a <= b => held.next(),
                (_, Some(_)) => new.next(),
                (Some(_), None) => held.next(),
                (None, None) => break,
            };
            let Some((start, end)) = next.filter(|(start, end)| start < end) else {
                continue;
            };
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        self.ranges = merged;
    }

    pub fn contains(&self, clock: u32) -> bool {
        self.covers(clock, clock.saturating_add(1))
    }

    /// Whether all of `start..end` is in the set.
    pub fn covers(&self, start: u32, end: u32) -> bool {
        let i = self.ranges.partition_point(|&(_, e)| e <= start);
        self.ranges
            .get(i)
            .is_some_and(|&(s, e)| s <= start && end <= e)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.ranges.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[derive(Debug, Clone, Default)]
pub struct DocState {
    clocks: HashMap<u64, u32>,
    types: HashSet<Id>,
    deleted: HashMap<u64, RangeSet>,
}

impl DocState {
    pub fn apply(&mut self, effects: &Effects) {
        for &(client, clock) in &effects.clocks {
            let held = self.clocks.entry(client).or_insert(0);
            *held = (*held).max(clock);
        }
        self.types.extend(effects.types.iter().copied());
        if let [(client, start, end)] = effects.deleted[..] {
            self.deleted.entry(client).or_default().insert(start, end);
            return;
        }
        // One merge per client: deletions come in delete-set order, then the
        // collected structs of each run, so a client's ranges need not be
        // sorted (and whole documents are read leniently).
        let mut deleted = effects.deleted.clone();
        deleted.sort_unstable_by_key(|&(client, _, _)| client);
        for same_client in deleted.chunk_by(|a, b| a.0 == b.0) {
            let client = same_client[0].0;
            let ranges = same_client.iter().map(|&(_, start, end)| (start, end));
            self.deleted
                .entry(client)
                .or_default()
                .insert_all(ranges.collect());
        }
    }

    /// Forgets what `base` holds too (for a session's own overlay once the
    /// room has caught up with it).
    pub fn forget_known(&mut self, base: &DocState) {
        self.clocks
            .retain(|client, clock| base.clocks.get(client).is_none_or(|b| b < clock));
        self.types.retain(|id| !base.types.contains(id));
        self.deleted.retain(|client, ranges| {
            let Some(other) = base.deleted.get(client) else {
                return true;
            };
            ranges.iter().any(|(s, e)| !other.covers(s, e))
        });
        // Most sessions publish now and then: between times they hold no tables.
        if self.is_empty() {
            *self = DocState::default();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.clocks.is_empty() && self.types.is_empty() && self.deleted.is_empty()
    }

    /// Every client's next clock.
    pub fn clocks(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.clocks.iter().map(|(&client, &clock)| (client, clock))
    }

    /// Approximate heap bytes held, for accounting.
    pub fn heap_bytes(&self) -> usize {
        self.clocks.len() * 24
            + self.types.len() * 24
            + self
                .deleted
                .values()
                .map(|r| 32 + r.len() * 8)
                .sum::<usize>()
    }
}

impl Known for DocState {
    fn clock(&self, client: u64) -> u32 {
        self.clocks.get(&client).copied().unwrap_or(0)
    }

    fn may_parent(&self, id: Id) -> bool {
        self.types.contains(&id)
            || self
                .deleted
                .get(&id.client)
                .is_some_and(|r| r.contains(id.clock))
    }

    fn is_deleted(&self, client: u64, start: u32, end: u32) -> bool {
        self.deleted
            .get(&client)
            .is_some_and(|r| r.covers(start, end))
    }
}

/// A room's state plus what one session published that the room has not
/// read back yet: its later updates may build on both.
pub struct Layered<'a> {
    pub base: &'a DocState,
    pub top: &'a DocState,
}

impl Layered<'_> {
    /// The state vector (lib0 v1) of both layers together: what a SyncStep1
    /// announces, so a client answers with everything the room lacks.
    pub fn encode_state_vector(&self) -> Vec<u8> {
        let mut clocks: std::collections::BTreeMap<u64, u32> = self.base.clocks().collect();
        for (client, clock) in self.top.clocks() {
            let held = clocks.entry(client).or_insert(0);
            *held = (*held).max(clock);
        }
        let mut out = Vec::with_capacity(clocks.len() * 8 + 2);
        crate::lib0::write_var_uint(&mut out, clocks.len() as u64);
        // yjs writes clients in descending order.
        for (client, clock) in clocks.into_iter().rev() {
            crate::lib0::write_var_uint(&mut out, client);
            crate::lib0::write_var_uint(&mut out, u64::from(clock));
        }
        out
    }
}

impl Known for Layered<'_> {
    fn clock(&self, client: u64) -> u32 {
        self.base.clock(client).max(self.top.clock(client))
    }

    fn may_parent(&self, id: Id) -> bool {
        self.base.may_parent(id) || self.top.may_parent(id)
    }

    fn is_deleted(&self, client: u64, start: u32, end: u32) -> bool {
        self.base.is_deleted(client, start, end) || self.top.is_deleted(client, start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserting_all_at_once_matches_inserting_one_by_one() {
        // A small deterministic generator: ranges in every order, touching,
        // overlapping, empty and nested.
        let mut seed = 0x9e37_79b9_u32;
        let mut next = move |bound: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed % bound
        };
        for round in 0..200 {
            let mut one_by_one = RangeSet::default();
            let mut at_once = RangeSet::default();
            for _ in 0..next(4) {
                let start = next(100);
                let (start, end) = (start, start + next(5));
                one_by_one.insert(start, end);
                at_once.insert(start, end);
            }
            let batch: Vec<(u32, u32)> = (0..next(30))
                .map(|_| {
                    let start = next(120);
                    (start, start + next(8))
                })
                .collect();
            for &(start, end) in &batch {
                one_by_one.insert(start, end);
            }
            at_once.insert_all(batch);
            assert_eq!(at_once, one_by_one, "round {round}");
        }
    }

    #[test]
    fn ranges_merge_and_cover() {
        let mut set = RangeSet::default();
        set.insert(10, 20);
        set.insert(30, 40);
        set.insert(20, 25);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![(10, 25), (30, 40)]);
        set.insert(5, 35);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![(5, 40)]);
        assert!(set.covers(5, 40) && set.contains(39) && !set.contains(40));
        set.insert(50, 51);
        assert!(!set.covers(39, 51));
        assert!(set.contains(50));
    }
}
