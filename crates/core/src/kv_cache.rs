//! The key/value cache of the attention layers, in pages that sequences
//! share.
//!
//! A page holds the keys and values of [`PAGE`] consecutive positions of one
//! sequence, for every layer. A sequence's cache is its list of pages
//! ([`SeqKv`]); pages are counted by reference, so sequences that start with
//! the same tokens (a system prompt, a few-shot preamble) hold the same full
//! pages, computed once. A page is written only while one sequence alone
//! holds it; shared pages are always full.
//!
//! This module keeps the bookkeeping ([`PageAllocator`], [`SeqKv`]) and the
//! byte layout of a page ([`PageLayout`]); the storage itself belongs to the
//! device that computes with it (`cpu::CpuDevice` keeps pages in host
//! memory).

use crate::config::Config;
use crate::error::{Error, Result};
use crate::quant::{BlockQ8_0, QK};

/// Positions per page.
pub const PAGE: usize = 64;

/// How the cache stores keys and values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum KvType {
    /// 32-bit floats: exact, twice the bytes of f16.
    F32,
    /// IEEE half floats (the default).
    #[default]
    F16,
    /// 8-bit blocks of 32 with an f16 scale (`head_dim` a multiple of 32).
    Q8_0,
}

impl KvType {
    /// Every type, as the `kv_cache` option names them.
    pub const ALL: [KvType; 3] = [KvType::F32, KvType::F16, KvType::Q8_0];

    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
        }
    }

    pub fn from_name(name: &str) -> Result<KvType> {
        KvType::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "kv_cache must be one of \"f32\", \"f16\", \"q8_0\", got {name:?}"
                ))
            })
    }

    /// Bytes of one head's `head_dim` values.
    fn row_bytes(self, head_dim: usize) -> Result<usize> {
        match self {
            KvType::F32 => Ok(head_dim * 4),
            KvType::F16 => Ok(head_dim * 2),
            KvType::Q8_0 if head_dim.is_multiple_of(QK) => {
                Ok(head_dim / QK * std::mem::size_of::<BlockQ8_0>())
            }
            KvType::Q8_0 => Err(Error::InvalidArgument(format!(
                "kv_cache=\"q8_0\" needs a head_dim that is a multiple of {QK}; this model's is \
                 {head_dim} (use \"f16\" or \"f32\")"
            ))),
        }
    }
}

/// Where each layer's keys and values sit inside a page.
///
/// A page is `(n_layers, 2, n_kv_heads, PAGE, head_dim)`: for each layer,
/// keys then values, each head's `PAGE` rows together, so the rows one head
/// attends to in a page are one contiguous `(PAGE, head_dim)` matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageLayout {
    pub dtype: KvType,
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Bytes of one head's row (`head_dim` values).
    pub row_bytes: usize,
}

impl PageLayout {
    pub fn new(c: &Config, dtype: KvType) -> Result<Self> {
        Ok(PageLayout {
            dtype,
            n_layers: c.n_layers,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            row_bytes: dtype.row_bytes(c.head_dim)?,
        })
    }

    /// Bytes of one page.
    pub fn page_bytes(&self) -> usize {
        self.n_layers * 2 * self.n_kv_heads * PAGE * self.row_bytes
    }

    /// Bytes of one position's keys and values, all layers.
    pub fn bytes_per_position(&self) -> usize {
        self.page_bytes() / PAGE
    }

    /// Byte offset in a page of the `(PAGE, head_dim)` rows of `head`'s keys
    /// (`values == false`) or values in `layer`.
    pub fn offset(&self, layer: usize, values: bool, head: usize) -> usize {
        ((layer * 2 + usize::from(values)) * self.n_kv_heads + head) * PAGE * self.row_bytes
    }
}

/// Which pages are in use, and by how many sequences each.
///
/// Page ids are dense: the device stores page `i` at index `i` and grows its
/// storage when [`PageAllocator::alloc`] hands out a new id.
#[derive(Debug, Default)]
pub struct PageAllocator {
    /// `(allocated,)` holders of each page (0: free)
    refs: Vec<u32>,
    free: Vec<u32>,
    /// The most pages that may exist.
    limit: usize,
}

impl PageAllocator {
    pub fn new(limit: usize) -> Self {
        PageAllocator {
            refs: Vec::new(),
            free: Vec::new(),
            limit,
        }
    }

    /// A page held once, or None if `limit` pages are all in use.
    pub fn alloc(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop() {
            self.refs[id as usize] = 1;
            return Some(id);
        }
        if self.refs.len() >= self.limit {
            return None;
        }
        self.refs.push(1);
        Some(self.refs.len() as u32 - 1)
    }

    /// One more holder of `id`.
    pub fn retain(&mut self, id: u32) {
        let r = &mut self.refs[id as usize];
        assert!(*r > 0, "retaining a free page");
        *r += 1;
    }

    /// One holder less of `id`; the page is free when none is left.
    pub fn release(&mut self, id: u32) {
        let r = &mut self.refs[id as usize];
        assert!(*r > 0, "releasing a free page");
        *r -= 1;
        if *r == 0 {
            self.free.push(id);
        }
    }

    /// Holders of `id`.
    pub fn holders(&self, id: u32) -> u32 {
        self.refs[id as usize]
    }

    /// Pages in use.
    pub fn in_use(&self) -> usize {
        self.refs.len() - self.free.len()
    }

    /// Pages that may still be handed out.
    pub fn available(&self) -> usize {
        self.limit - self.in_use()
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// One sequence's cache: its pages in order of position, and how many
/// positions hold keys and values.
#[derive(Clone, Debug, Default)]
pub struct SeqKv {
    pub pages: Vec<u32>,
    pub len: usize,
}

impl SeqKv {
    /// Makes room for positions up to `len + n` (allocating pages as
    /// needed). Returns false, having allocated nothing, if the pages are
    /// not available.
    pub fn reserve(&mut self, alloc: &mut PageAllocator, n: usize) -> bool {
        let need = (self.len + n).div_ceil(PAGE);
        if need <= self.pages.len() {
            return true;
        }
        if need - self.pages.len() > alloc.available() {
            return false;
        }
        while self.pages.len() < need {
            let id = alloc.alloc().expect("checked available pages");
            self.pages.push(id);
        }
        true
    }

    /// Pages needed for `n` more positions.
    pub fn pages_for(&self, n: usize) -> usize {
        (self.len + n)
            .div_ceil(PAGE)
            .saturating_sub(self.pages.len())
    }

    /// Gives every page back and empties the sequence.
    pub fn clear(&mut self, alloc: &mut PageAllocator) {
        for &id in &self.pages {
            alloc.release(id);
        }
        self.pages.clear();
        self.len = 0;
    }

    /// Forgets positions from `len` on, giving back the pages past it.
    pub fn truncate(&mut self, alloc: &mut PageAllocator, len: usize) {
        self.len = self.len.min(len);
        let keep = self.len.div_ceil(PAGE);
        for id in self.pages.drain(keep.min(self.pages.len())..) {
            alloc.release(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_counted_and_reused() {
        let mut a = PageAllocator::new(3);
        let mut s = SeqKv::default();
        assert!(s.reserve(&mut a, 1));
        s.len = 1;
        assert_eq!(s.pages, [0]);
        assert!(s.reserve(&mut a, PAGE)); // positions 1..=64 need a second page
        assert_eq!(s.pages, [0, 1]);
        assert!(
            !s.reserve(&mut a, 3 * PAGE),
            "over the limit, nothing taken"
        );
        assert_eq!(a.in_use(), 2);
        let mut t = SeqKv {
            pages: vec![s.pages[0]],
            len: PAGE,
        };
        a.retain(t.pages[0]);
        s.clear(&mut a);
        assert_eq!((a.in_use(), a.holders(0)), (1, 1));
        assert!(t.reserve(&mut a, 1));
        assert_eq!(t.pages, [0, 1], "the freed page is reused");
        t.truncate(&mut a, 10);
        assert_eq!((t.pages.len(), a.in_use()), (1, 1));
    }

    #[test]
    fn q8_0_needs_whole_blocks() {
        let c = Config {
            head_dim: 8,
            ..Config::default()
        };
        assert!(PageLayout::new(&c, KvType::Q8_0).is_err());
        let l = PageLayout::new(&c, KvType::F16).unwrap();
        assert_eq!(
            l.bytes_per_position(),
            c.n_layers * 2 * c.n_kv_heads * 8 * 2
        );
    }
}
