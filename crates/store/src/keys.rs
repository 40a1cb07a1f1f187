//! Helpers for building ordered keys.

/// The smallest key greater than every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // The prefix was empty or all 0xff: no finite upper bound; use a key
    // longer than any we write.
    vec![u8::MAX; 1024]
}

/// `prefix` followed by `seq` big-endian, so keys sort by number.
pub fn seq_key(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Reads the big-endian `u64` at the end of a key built by [`seq_key`].
pub fn seq_of(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// Decodes a big-endian `u64` value (counters), 0 when absent.
pub fn u64_value(v: Option<Vec<u8>>) -> u64 {
    v.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
        assert!(prefix_end(b"").len() > 8);
    }

    #[test]
    fn seq_keys_sort_numerically() {
        assert!(seq_key(b"q/", 2) < seq_key(b"q/", 10));
        assert_eq!(seq_of(&seq_key(b"q/x/", 77)), Some(77));
        assert_eq!(u64_value(Some(5u64.to_be_bytes().to_vec())), 5);
        assert_eq!(u64_value(None), 0);
    }
}
