//! The key/value cache of the attention layers.

use crate::error::{Error, Result};

/// Positions are added to the cache's storage in steps of this many, so a
/// long generation reallocates a few times, never once per token.
const GROWTH_STEP: usize = 256;

/// Keys and values of every layer for the positions processed so far.
///
/// Per layer, keys and values are `(capacity, kv_dim)` row-major: the
/// `n_kv_heads` heads of one position side by side, so the keys of a batch of
/// consecutive positions are one contiguous block the projection writes
/// straight into. Storage grows in steps up to `max_len`.
#[derive(Debug)]
pub struct KvCache {
    /// `(n_layers)` of `(capacity, kv_dim)`
    keys: Vec<Vec<f32>>,
    /// `(n_layers)` of `(capacity, kv_dim)`
    values: Vec<Vec<f32>>,
    kv_dim: usize,
    len: usize,
    capacity: usize,
    max_len: usize,
}

impl KvCache {
    /// An empty cache for `n_layers` layers of `kv_dim` floats per position,
    /// holding at most `max_len` positions.
    pub fn new(n_layers: usize, kv_dim: usize, max_len: usize) -> Self {
        KvCache {
            keys: vec![Vec::new(); n_layers],
            values: vec![Vec::new(); n_layers],
            kv_dim,
            len: 0,
            capacity: 0,
            max_len,
        }
    }

    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most positions the cache holds.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Bytes of storage allocated now.
    pub fn allocated_bytes(&self) -> usize {
        2 * self.keys.len() * self.capacity * self.kv_dim * 4
    }

    /// Forgets every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Makes room for `n` more positions (growing the storage in steps) and
    /// returns the index of the first.
    pub fn reserve(&mut self, n: usize) -> Result<usize> {
        let need = self.len + n;
        if need > self.max_len {
            return Err(Error::ContextLength {
                tokens: need,
                context: self.max_len,
            });
        }
        if need > self.capacity {
            let capacity = need.next_multiple_of(GROWTH_STEP).min(self.max_len);
            for buf in self.keys.iter_mut().chain(self.values.iter_mut()) {
                buf.resize(capacity * self.kv_dim, 0.0);
            }
            self.capacity = capacity;
        }
        Ok(self.len)
    }

    /// Marks `n` more positions as filled (after `reserve(n)` and writing them).
    pub fn commit(&mut self, n: usize) {
        assert!(self.len + n <= self.capacity);
        self.len += n;
    }

    /// The keys and values of `layer`, `(capacity, kv_dim)` each; positions
    /// from `len()` on are scratch space reserved for the current batch.
    pub fn layer_mut(&mut self, layer: usize) -> (&mut [f32], &mut [f32]) {
        (&mut self.keys[layer], &mut self.values[layer])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_in_steps_and_stops_at_the_maximum() {
        let mut c = KvCache::new(2, 4, 600);
        assert_eq!(c.reserve(1).unwrap(), 0);
        c.commit(1);
        assert_eq!(c.allocated_bytes(), 2 * 2 * 256 * 4 * 4);
        assert_eq!(c.reserve(300).unwrap(), 1);
        c.commit(300);
        assert_eq!(c.allocated_bytes(), 2 * 2 * 512 * 4 * 4);
        assert!(matches!(
            c.reserve(300),
            Err(Error::ContextLength {
                tokens: 601,
                context: 600
            })
        ));
        c.reserve(299).unwrap();
        c.commit(299);
        assert_eq!(c.len(), 600);
        c.truncate(10);
        assert_eq!(c.len(), 10);
    }
}
