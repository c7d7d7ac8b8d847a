//! Deciding between copies of the same bytes when no checksum can: a
//! majority of the copies, or the copy the caller prefers.

/// How copies of the same bytes relate when nothing else can vouch for one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// All readable copies are identical (or there are none).
    Agree,
    /// A strict majority of at least three readable copies agrees; `bad` differ from it.
    Majority { good: usize, bad: Vec<usize> },
    /// The caller named the copy to trust; `bad` differ from it.
    Preferred { good: usize, bad: Vec<usize> },
    /// Copies differ and nothing decides: every readable copy is suspect.
    NoArbiter { copies: Vec<usize> },
}

/// Decide between copies (`None` = unreadable) by majority or preference (0-based).
pub(crate) fn arbitrate(copies: &[Option<&[u8]>], prefer: Option<usize>) -> Verdict {
    let readable: Vec<usize> = (0..copies.len()).filter(|&i| copies[i].is_some()).collect();
    let same = |a: usize, b: usize| copies[a] == copies[b];
    let Some(&first) = readable.first() else { return Verdict::Agree };
    if readable.iter().all(|&i| same(i, first)) {
        return Verdict::Agree;
    }
    let (best, count) = readable
        .iter()
        .map(|&i| (i, readable.iter().filter(|&&j| same(i, j)).count()))
        .max_by_key(|&(i, c)| (c, std::cmp::Reverse(i)))
        .unwrap_or((first, 1));
    if readable.len() >= 3 && count * 2 > readable.len() {
        let bad = readable.iter().copied().filter(|&i| !same(i, best)).collect();
        return Verdict::Majority { good: best, bad };
    }
    if let Some(p) = prefer.filter(|p| readable.contains(p)) {
        let bad = readable.iter().copied().filter(|&i| !same(i, p)).collect();
        return Verdict::Preferred { good: p, bad };
    }
    Verdict::NoArbiter { copies: readable }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arbitrate_two_copies() {
        let (a, b) = (&b"aaaa"[..], &b"bbbb"[..]);
        assert_eq!(arbitrate(&[Some(a), Some(a)], None), Verdict::Agree);
        assert_eq!(arbitrate(&[Some(a), Some(b)], None), Verdict::NoArbiter { copies: vec![0, 1] });
        assert_eq!(arbitrate(&[Some(a), Some(b)], Some(1)), Verdict::Preferred { good: 1, bad: vec![0] });
        assert_eq!(arbitrate(&[None, Some(b)], None), Verdict::Agree);
        assert_eq!(arbitrate(&[None, None], None), Verdict::Agree);
    }

    #[test]
    fn arbitrate_majority() {
        let (a, b, c) = (&b"aaaa"[..], &b"bbbb"[..], &b"cccc"[..]);
        assert_eq!(arbitrate(&[Some(a), Some(b), Some(a)], None), Verdict::Majority { good: 0, bad: vec![1] });
        assert_eq!(arbitrate(&[Some(b), Some(a), Some(a)], Some(0)), Verdict::Majority { good: 1, bad: vec![0] });
        assert_eq!(arbitrate(&[Some(a), Some(b), Some(c)], None), Verdict::NoArbiter { copies: vec![0, 1, 2] });
        assert_eq!(arbitrate(&[Some(a), Some(b), None], None), Verdict::NoArbiter { copies: vec![0, 1] });
        assert_eq!(arbitrate(&[Some(a), Some(a), Some(b), Some(b)], None), Verdict::NoArbiter { copies: vec![0, 1, 2, 3] });
        assert_eq!(arbitrate(&[Some(a), Some(a), Some(a), Some(b)], None), Verdict::Majority { good: 0, bad: vec![3] });
        assert_eq!(arbitrate(&[Some(c), Some(a), Some(a), Some(b)], Some(3)), Verdict::Preferred { good: 3, bad: vec![0, 1, 2] });
    }
}
