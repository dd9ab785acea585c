//! Which slots of a window are free (SPEC.md §13.8). A slot is taken at setup and returned only
//! after both sides let go, with its ring controls zeroed by the caller.

/// The free slots of one window.
#[derive(Debug)]
pub struct SlotPool {
    free: Vec<u32>,
    slots: u32,
}

impl SlotPool {
    /// A pool of `slots` slots, all free; the lowest are handed out first.
    pub fn new(slots: u32) -> Self {
        SlotPool {
            free: (0..slots).rev().collect(),
            slots,
        }
    }

    /// Takes a free slot; `None` when the window is full.
    pub fn take(&mut self) -> Option<u32> {
        self.free.pop()
    }

    /// Returns `slot`. A slot the pool does not have, or one already free, is ignored (a bug,
    /// never a guest's doing: guests never name the slot returned).
    pub fn give_back(&mut self, slot: u32) {
        if slot < self.slots && !self.free.contains(&slot) {
            self.free.push(slot);
        }
    }

    /// Free slots.
    pub fn free(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_handed_out_once_and_come_back() {
        let mut pool = SlotPool::new(3);
        let got: Vec<u32> = std::iter::from_fn(|| pool.take()).collect();
        assert_eq!(got, vec![0, 1, 2]);
        assert_eq!(pool.take(), None);
        pool.give_back(1);
        pool.give_back(1);
        pool.give_back(7);
        assert_eq!(pool.free(), 1);
        assert_eq!(pool.take(), Some(1));
    }
}
