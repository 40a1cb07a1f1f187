//! The node's orders (`ol/` outbox order, `op/` push queue, `il/` inbox
//! order): position → message id, stored as runs. The consecutive positions
//! one write appends are one value under the first of them (a
//! `StoredIdRun`), so a batch of a thousand messages adds one key to each
//! order, not a thousand. Stores of earlier versions hold one id per
//! position; both read alike.

use std::collections::BTreeSet;

use liaison_proto::v1 as pb;
use liaison_store::{keys, Reader, StoreError, Txn};
use prost::Message;

/// A run is closed at about this many bytes; the next position starts one.
const RUN_BYTES: usize = 16 * 1024;

/// The positions one write appends to the orders, gathered so that each
/// stretch of consecutive positions of an order is written as one run.
#[derive(Debug, Default)]
pub(super) struct Appends {
    runs: Vec<Run>,
}

#[derive(Debug)]
struct Run {
    prefix: &'static [u8],
    first: u64,
    ids: Vec<String>,
    bytes: usize,
}

impl Appends {
    /// Appends `id` at position `n` of the order `prefix`.
    pub(super) fn push(&mut self, prefix: &'static [u8], n: u64, id: &str) {
        if let Some(run) = self.runs.iter_mut().rev().find(|r| r.prefix == prefix) {
            if run.first + run.ids.len() as u64 == n && run.bytes < RUN_BYTES {
                run.bytes += id.len() + 3;
                run.ids.push(id.to_owned());
                return;
            }
        }
        self.runs.push(Run {
            prefix,
            first: n,
            ids: vec![id.to_owned()],
            bytes: id.len() + 3,
        });
    }

    /// Stages every run.
    pub(super) fn write(self, txn: &mut Txn<'_>) {
        for Run {
            prefix, first, ids, ..
        } in self.runs
        {
            txn.put(
                keys::seq_key(prefix, first),
                pb::StoredIdRun { ids }.encode_to_vec(),
            );
        }
    }
}

/// The `(position, id)` pairs a stored value of an order holds: a run from
/// the position in its key, or (earlier versions) the one id of that
/// position.
pub(super) fn expand(key: &[u8], value: &[u8]) -> Result<Vec<(u64, String)>, StoreError> {
    let first = keys::seq_of(key).unwrap_or_default();
    if value.first() == Some(&0x7a) {
        let run = pb::StoredIdRun::decode(value)
            .map_err(|e| StoreError::corrupt(key, format_args!("not a run of positions: {e}")))?;
        Ok((first..).zip(run.ids).collect())
    } else {
        Ok(vec![(first, String::from_utf8_lossy(value).into_owned())])
    }
}

/// The first `limit` positions of an order, ascending.
pub(super) fn first(
    r: &impl Reader,
    prefix: &[u8],
    limit: usize,
) -> Result<Vec<(u64, String)>, StoreError> {
    let mut out = Vec::new();
    // Each stored value holds at least one position.
    for (key, value) in r.scan_prefix(prefix, limit)? {
        out.extend(expand(&key, &value)?);
        if out.len() >= limit {
            break;
        }
    }
    out.truncate(limit);
    Ok(out)
}

/// The last `limit` positions of an order below `before` (every position
/// when `None`), newest first.
pub(super) fn last(
    r: &impl Reader,
    prefix: &[u8],
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<(u64, String)>, StoreError> {
    let end = match before {
        Some(n) => keys::seq_key(prefix, n),
        None => keys::prefix_end(prefix),
    };
    let mut out = Vec::new();
    for (key, value) in r.scan_rev(prefix, &end, limit)? {
        let mut entries = expand(&key, &value)?;
        entries.retain(|(n, _)| before.is_none_or(|b| *n < b));
        out.extend(entries.into_iter().rev());
        if out.len() >= limit {
            break;
        }
    }
    out.truncate(limit);
    Ok(out)
}

/// How many positions an order holds.
pub(super) fn count(r: &impl Reader, prefix: &[u8]) -> Result<u64, StoreError> {
    let mut n = 0;
    for (key, value) in r.scan_prefix(prefix, usize::MAX)? {
        n += expand(&key, &value)?.len() as u64;
    }
    Ok(n)
}

/// Removes positions from an order: each stored value that holds any of
/// them is replaced by runs of the positions it keeps. Its scans see this
/// transaction's own staged writes, so positions appended by it are removed
/// too.
pub(super) fn remove(
    txn: &mut Txn<'_>,
    prefix: &'static [u8],
    positions: &BTreeSet<u64>,
) -> Result<(), StoreError> {
    let mut seen_up_to: Option<u64> = None;
    for &n in positions {
        if seen_up_to.is_some_and(|end| n <= end) {
            continue;
        }
        let below = keys::seq_key(prefix, n.saturating_add(1));
        let Some((key, value)) = txn.scan_rev(prefix, &below, 1)?.into_iter().next() else {
            continue;
        };
        let entries = expand(&key, &value)?;
        let Some(&(end, _)) = entries.last() else {
            continue;
        };
        seen_up_to = Some(end);
        if end < n {
            // The value below `n` ends before it: `n` is not in the order.
            continue;
        }
        txn.delete(key);
        let mut kept = Appends::default();
        for (m, id) in entries {
            if !positions.contains(&m) {
                kept.push(prefix, m, &id);
            }
        }
        kept.write(txn);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use liaison_store::Db;

    fn ids(v: &[(u64, String)]) -> Vec<(u64, &str)> {
        v.iter().map(|(n, id)| (*n, id.as_str())).collect()
    }

    async fn append(db: &Db, positions: &[(u64, &'static str)]) {
        let positions = positions.to_vec();
        db.write(move |txn| {
            let mut a = Appends::default();
            for (n, id) in positions {
                a.push(b"op/", n, id);
            }
            a.write(txn);
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    }

    async fn remove_all(db: &Db, positions: &[u64]) {
        let positions: BTreeSet<u64> = positions.iter().copied().collect();
        db.write(move |txn| remove(txn, b"op/", &positions))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn consecutive_positions_are_one_run_and_read_back_in_order() {
        let db = Db::in_memory();
        append(&db, &[(1, "a"), (2, "b"), (3, "c"), (5, "e")]).await;
        // Two stored values: the run 1..=3 and the run of 5.
        assert_eq!(db.scan_prefix(b"op/", 10).unwrap().len(), 2);
        let all = first(&db, b"op/", 10).unwrap();
        assert_eq!(ids(&all), vec![(1, "a"), (2, "b"), (3, "c"), (5, "e")]);
        assert_eq!(
            ids(&first(&db, b"op/", 2).unwrap()),
            vec![(1, "a"), (2, "b")]
        );
        assert_eq!(
            ids(&last(&db, b"op/", None, 3).unwrap()),
            vec![(5, "e"), (3, "c"), (2, "b")]
        );
        assert_eq!(
            ids(&last(&db, b"op/", Some(3), 10).unwrap()),
            vec![(2, "b"), (1, "a")]
        );
        assert_eq!(count(&db, b"op/").unwrap(), 4);
    }

    #[tokio::test]
    async fn removing_positions_splits_runs_and_keeps_the_rest() {
        let db = Db::in_memory();
        append(&db, &[(1, "a"), (2, "b"), (3, "c"), (4, "d"), (6, "f")]).await;
        // An id stored alone, as earlier versions did.
        db.write(|txn| {
            txn.put(keys::seq_key(b"op/", 9), b"i".to_vec());
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
        remove_all(&db, &[2, 6, 7, 9]).await;
        let left = first(&db, b"op/", 10).unwrap();
        assert_eq!(ids(&left), vec![(1, "a"), (3, "c"), (4, "d")]);
        remove_all(&db, &[1, 3, 4]).await;
        assert!(db.scan_prefix(b"op/", 10).unwrap().is_empty());
    }

    #[test]
    fn a_run_is_closed_at_its_size() {
        let mut a = Appends::default();
        let id = "0".repeat(36);
        for n in 1..=1000 {
            a.push(b"il/", n, &id);
        }
        assert!(a.runs.len() > 1);
        assert!(a.runs.iter().all(|r| r.bytes <= RUN_BYTES + 39));
        let total: usize = a.runs.iter().map(|r| r.ids.len()).sum();
        assert_eq!(total, 1000);
    }

    #[test]
    fn a_stored_id_never_reads_as_a_run() {
        let key = keys::seq_key(b"il/", 4);
        let got = expand(&key, b"0190a3c2-1234-7abc-8def-0123456789ab").unwrap();
        assert_eq!(ids(&got), vec![(4, "0190a3c2-1234-7abc-8def-0123456789ab")]);
        assert!(expand(&key, &[0x7a, 0x05, b'x']).is_err());
    }
}
