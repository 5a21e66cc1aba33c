//! How a pass's attention is cut into threadgroups (the host's half of
//! `attention` and `attention_merge` in attention.metal).
//!
//! A threadgroup takes a *block*: up to a few consecutive tokens of one
//! sequence, times the query heads of one KV head (or a share of them).
//! It loads each tile of keys, then of values, into threadgroup memory
//! once and lets every query row of the block use it, so a prompt chunk
//! of `q` tokens over a grouped-query model reads the cache once per block
//! instead of once per (token, head). A decoding token is a block of one.
//!
//! When a pass has few blocks and long contexts (a few sequences decoding
//! deep into theirs), the positions are also split into ranges, each range
//! a threadgroup of its own writing a partial softmax (running maximum,
//! sum and weighted values); `attention_merge` then combines the ranges.
//! That keeps the GPU's cores busy when there are only a handful of
//! (sequence, KV head) pairs.

use super::layout::KvArgs;
use super::{Grid, SIMD_WIDTH};

/// Query rows (token x head) a SIMD group keeps (`ATT_ROWS` in
/// attention.metal), and the most rows a threadgroup takes.
const ROWS_PER_SIMD: usize = 4;
const MAX_ROWS: usize = 16;

/// Bytes of threadgroup memory every Apple GPU of family 7 or later has.
const SHARED_LIMIT: usize = 32768;

/// Floats of a merge record beyond the head's values: maximum and sum.
const MERGE_EXTRA: usize = 2;

/// One pass's cut of attention into threadgroups; the same for every layer.
#[derive(Clone, Debug)]
pub struct AttentionPlan {
    /// `(first token, tokens)` of each block, in the pass's token rows.
    pub blocks: Vec<[u32; 2]>,
    /// Positions a tile holds.
    pub tile: u32,
    /// Query heads a threadgroup takes of its KV head's.
    pub group_heads: u32,
    /// Position ranges per block, and positions per range.
    pub splits: u32,
    pub split_len: u32,
    /// Threadgroups of `attention`.
    pub grid: Grid,
    /// Threadgroups of `attention_merge` (when `splits > 1`).
    pub merge: Grid,
    /// Floats of the buffer of partial results (0 when `splits == 1`).
    pub partial_floats: usize,
    /// Threadgroups worth splitting a pass's positions up to, and the
    /// fewest positions a range is given.
    pub target_groups: usize,
    pub min_split: usize,
}

impl Default for AttentionPlan {
    fn default() -> Self {
        AttentionPlan {
            blocks: Vec::new(),
            tile: 0,
            group_heads: 0,
            splits: 1,
            split_len: 0,
            grid: Grid::linear(0, 0),
            merge: Grid::linear(0, 0),
            partial_floats: 0,
            // A large Apple GPU has 40 cores; a few threadgroups each.
            target_groups: 256,
            min_split: 256,
        }
    }
}

impl AttentionPlan {
    /// Plans a pass whose sequences are `runs`: `(first row, tokens,
    /// position of the first)` each, for a model with `q_heads` query and
    /// `kv_heads` KV heads of `head_dim` values, attending to at most
    /// `window` positions back (0: all).
    pub fn plan(
        &mut self,
        runs: impl IntoIterator<Item = (usize, usize, usize)>,
        q_heads: usize,
        kv_heads: usize,
        head_dim: usize,
        window: usize,
    ) {
        assert!(head_dim <= 8 * SIMD_WIDTH as usize && q_heads.is_multiple_of(kv_heads));
        let per_kv = q_heads / kv_heads;
        // A tile's rows are padded by one float against bank conflicts.
        let (tile, max_rows) = if head_dim <= 128 {
            (32, MAX_ROWS)
        } else {
            (16, MAX_ROWS / 2)
        };
        let group_heads = per_kv.min(max_rows);
        let chunks = per_kv.div_ceil(group_heads);
        let block_tokens = (max_rows / group_heads).max(1);

        self.blocks.clear();
        let (mut rows, mut span, mut tokens) = (0, 0, 0);
        for (row, len, start) in runs {
            tokens = tokens.max(row + len);
            let mut t = 0;
            while t < len {
                let n = block_tokens.min(len - t);
                self.blocks.push([(row + t) as u32, n as u32]);
                let end = start + t + n;
                let first = start + t + 1;
                let from = if window != 0 {
                    first.saturating_sub(window)
                } else {
                    0
                };
                span = span.max(end - from);
                rows = rows.max(n * group_heads);
                t += n;
            }
        }
        let simd_groups = rows.div_ceil(ROWS_PER_SIMD).max(1);
        let shared = (4 * (rows * head_dim + tile * (head_dim + 1))).next_multiple_of(16);
        debug_assert!(
            shared <= SHARED_LIMIT,
            "{shared} bytes of threadgroup memory"
        );

        let groups = self.blocks.len() * kv_heads * chunks;
        let mut splits = (self.target_groups / groups.max(1))
            .min(span.div_ceil(self.min_split))
            .max(1);
        let split_len = span.div_ceil(splits).next_multiple_of(tile);
        splits = span.div_ceil(split_len).max(1);

        self.tile = tile as u32;
        self.group_heads = group_heads as u32;
        self.splits = splits as u32;
        self.split_len = split_len as u32;
        self.grid = Grid {
            groups: [
                self.blocks.len() as u32,
                (kv_heads * chunks) as u32,
                splits as u32,
            ],
            threads: [SIMD_WIDTH * simd_groups as u32, 1, 1],
            shared,
        };
        self.merge = Grid {
            groups: [tokens as u32, q_heads as u32, 1],
            threads: [SIMD_WIDTH, 1, 1],
            shared: 0,
        };
        self.partial_floats = if splits > 1 {
            tokens * q_heads * splits * (head_dim + MERGE_EXTRA)
        } else {
            0
        };
    }

    /// Puts the plan's cut into a layer's arguments.
    pub fn apply(&self, a: &mut KvArgs) {
        a.tile = self.tile;
        a.group_heads = self.group_heads;
        a.splits = self.splits;
        a.split_len = self.split_len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (token, query head) row lands in exactly one block and head
    /// chunk, and a long context with few blocks is split.
    #[test]
    fn blocks_cover_every_row_once_and_long_contexts_split() {
        let mut p = AttentionPlan::default();
        // A 40-token prompt chunk at position 100 and two decoding tokens.
        let runs = [(0, 40, 100), (40, 1, 5), (41, 1, 3000)];
        for (q_heads, kv_heads, head_dim) in [(32, 8, 128), (12, 12, 64), (64, 2, 256)] {
            p.plan(runs, q_heads, kv_heads, head_dim, 0);
            let per_kv = q_heads / kv_heads;
            let chunks = per_kv.div_ceil(p.group_heads as usize);
            let mut seen = vec![0; 42 * q_heads];
            for b in &p.blocks {
                for t in b[0]..b[0] + b[1] {
                    for y in 0..kv_heads * chunks {
                        let (kvh, c) = (y / chunks, y % chunks);
                        let h0 = kvh * per_kv + c * p.group_heads as usize;
                        let h1 = (h0 + p.group_heads as usize).min((kvh + 1) * per_kv);
                        for h in h0..h1 {
                            seen[t as usize * q_heads + h] += 1;
                        }
                    }
                }
                let rows = b[1] * p.group_heads;
                assert!(rows as usize <= MAX_ROWS);
                assert!(rows <= p.grid.threads[0] / SIMD_WIDTH * ROWS_PER_SIMD as u32);
            }
            assert!(seen.iter().all(|&n| n == 1), "{q_heads}/{kv_heads}");
            assert!(p.grid.shared <= SHARED_LIMIT);
            // Two sequences decoding: 3,001 positions over few blocks.
            p.plan([(0, 1, 3000), (1, 1, 5)], q_heads, kv_heads, head_dim, 0);
            assert!(p.splits > 1, "{q_heads}/{kv_heads}");
            assert!(p.splits * p.split_len >= 3001);
            assert!((p.splits - 1) * p.split_len < 3001);
            assert_eq!(
                p.partial_floats,
                2 * q_heads * p.splits as usize * (head_dim + 2)
            );
        }
        // Short contexts are not split.
        p.plan([(0, 1, 10), (1, 1, 20)], 8, 2, 64, 0);
        assert_eq!((p.splits, p.partial_floats), (1, 0));
    }
}
