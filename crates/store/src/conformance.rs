//! One test suite that every [`Engine`] and every [`Db`] must pass.
//!
//! The functions panic on the first disagreement; call them from a `#[test]`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use crate::{keys, Db, Engine, Entry, StoreError};

/// Checks point reads, ordered scans in both directions, limits, and atomic
/// batches with deletions.
pub fn engine_suite(engine: Arc<dyn Engine>) {
    assert_eq!(engine.get(b"missing").unwrap(), None);
    engine
        .apply(vec![
            (b"a/1".to_vec(), Some(b"one".to_vec())),
            (b"a/2".to_vec(), Some(b"two".to_vec())),
            (b"a/3".to_vec(), Some(b"three".to_vec())),
            (b"b/1".to_vec(), Some(b"other".to_vec())),
        ])
        .unwrap();
    engine.flush().unwrap();
    assert_eq!(engine.get(b"a/2").unwrap(), Some(b"two".to_vec()));

    let end = keys::prefix_end(b"a/");
    let up: Vec<_> = engine
        .scan(b"a/", &end, 10, false)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(up, vec![b"a/1".to_vec(), b"a/2".to_vec(), b"a/3".to_vec()]);
    let down: Vec<_> = engine
        .scan(b"a/", &end, 2, true)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(down, vec![b"a/3".to_vec(), b"a/2".to_vec()]);
    assert!(engine.scan(b"a/3", b"a/1", 10, false).unwrap().is_empty());

    engine
        .apply(vec![
            (b"a/1".to_vec(), None),
            (b"a/2".to_vec(), Some(b"deux".to_vec())),
        ])
        .unwrap();
    assert_eq!(engine.get(b"a/1").unwrap(), None);
    assert!(!engine.contains(b"a/1").unwrap());
    assert_eq!(engine.get(b"a/2").unwrap(), Some(b"deux".to_vec()));
    assert_eq!(engine.scan(b"a/", &end, 10, false).unwrap().len(), 2);

    // Large values (the sled engine keeps them in its value log) read back
    // alike, through every change: replaced by small, by large, deleted.
    let large = |c: u8, n: usize| vec![c; n];
    engine
        .apply(vec![
            (b"v/1".to_vec(), Some(large(b'x', 4096))),
            (b"v/2".to_vec(), Some(large(b'y', 70_000))),
            (b"v/3".to_vec(), Some(b"small".to_vec())),
        ])
        .unwrap();
    engine.flush().unwrap();
    assert_eq!(engine.get(b"v/1").unwrap(), Some(large(b'x', 4096)));
    assert!(engine.contains(b"v/1").unwrap());
    assert!(engine.contains(b"v/3").unwrap());
    assert!(!engine.contains(b"v/4").unwrap());
    let vend = keys::prefix_end(b"v/");
    let listed = engine.scan(b"v/", &vend, 10, false).unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[1], (b"v/2".to_vec(), large(b'y', 70_000)));
    engine
        .apply(vec![
            (b"v/1".to_vec(), Some(b"now small".to_vec())),
            (b"v/2".to_vec(), None),
            (b"v/3".to_vec(), Some(large(b'z', 2048))),
        ])
        .unwrap();
    engine.flush().unwrap();
    assert_eq!(engine.get(b"v/1").unwrap(), Some(b"now small".to_vec()));
    assert_eq!(engine.get(b"v/2").unwrap(), None);
    assert!(!engine.contains(b"v/2").unwrap());
    assert_eq!(engine.get(b"v/3").unwrap(), Some(large(b'z', 2048)));
    let listed = engine.scan(b"v/", &vend, 10, true).unwrap();
    assert_eq!(listed[0], (b"v/3".to_vec(), large(b'z', 2048)));
    assert_eq!(listed.len(), 2);
    // Nothing the engine keeps for itself is ever listed.
    let everything = engine.scan(b"", &[0xff; 8], usize::MAX, false).unwrap();
    assert!(
        everything
            .iter()
            .all(|(k, _)| k.first().is_some_and(u8::is_ascii)),
        "{everything:?}"
    );
    assert_eq!(everything.len(), 5);
}

/// Checks that `Db::write` applies a successful closure atomically, discards
/// a failed one whole, lets a closure read its own writes, and serialises
/// read-modify-write closures under concurrency.
pub async fn db_suite(db: Db) {
    // A failing closure leaves nothing behind.
    let err = db
        .write(|t| {
            t.put(b"x".to_vec(), b"1".to_vec());
            Err::<(), _>(StoreError::Closed)
        })
        .await;
    assert!(err.is_err());
    assert_eq!(db.get(b"x").unwrap(), None);

    // Staged writes are visible to the same closure.
    let seen = db
        .write(|t| {
            let before = t.contains(b"x")?;
            t.put(b"x".to_vec(), b"1".to_vec());
            Ok::<_, StoreError>((before, t.contains(b"x")?, t.get(b"x")?))
        })
        .await
        .unwrap();
    assert_eq!(seen, (false, true, Some(b"1".to_vec())));
    assert!(db.contains(b"x").unwrap());
    let staged_delete = db
        .write(|t| {
            t.delete(b"x".to_vec());
            t.contains(b"x")
        })
        .await
        .unwrap();
    assert!(!staged_delete);
    assert_eq!(db.get(b"x").unwrap(), None);
    assert!(!db.contains(b"x").unwrap());

    // Only a value staged by the same transaction can be extended in place.
    db.write(|t| {
        t.put(b"run".to_vec(), b"a".to_vec());
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap();
    let extended = db
        .write(|t| {
            let committed = t.staged_mut(b"run").is_some();
            t.put(b"run2".to_vec(), b"b".to_vec());
            t.staged_mut(b"run2").unwrap().extend_from_slice(b"c");
            t.delete(b"gone".to_vec());
            let deleted = t.staged_mut(b"gone").is_some();
            Ok::<_, StoreError>((committed, deleted))
        })
        .await
        .unwrap();
    assert_eq!(extended, (false, false));
    assert_eq!(db.get(b"run2").unwrap(), Some(b"bc".to_vec()));

    // The last staged value of a range: never a committed one, nor a delete.
    let last = db
        .write(|t| {
            let committed = t.staged_last_mut(b"run", b"run3").is_some();
            t.put(b"r/1".to_vec(), b"x".to_vec());
            t.put(b"r/2".to_vec(), b"y".to_vec());
            let (key, value) = t.staged_last_mut(b"r/", b"r/9").unwrap();
            let key = key.to_vec();
            value.extend_from_slice(b"z");
            let below = t.staged_last_mut(b"r/", b"r/2").map(|(k, _)| k.to_vec());
            t.delete(b"r/3".to_vec());
            let deleted = t.staged_last_mut(b"r/", b"r/9").is_some();
            Ok::<_, StoreError>((committed, key, below, deleted))
        })
        .await
        .unwrap();
    assert_eq!(last, (false, b"r/2".to_vec(), Some(b"r/1".to_vec()), false));
    assert_eq!(db.get(b"r/2").unwrap(), Some(b"yz".to_vec()));

    // Scans inside a write see its staged puts and deletes, in order, in
    // both directions and within the limit.
    db.write(|t| {
        for k in ["s/1", "s/3", "s/5"] {
            t.put(k.as_bytes().to_vec(), b"old".to_vec());
        }
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap();
    let scanned = db
        .write(|t| {
            t.put(b"s/2".to_vec(), b"new".to_vec());
            t.put(b"s/3".to_vec(), b"new".to_vec());
            t.delete(b"s/5".to_vec());
            t.put(b"s/9".to_vec(), b"new".to_vec());
            let end = keys::prefix_end(b"s/");
            let keys_of = |v: Vec<Entry>| {
                v.into_iter()
                    .map(|(k, v)| {
                        format!(
                            "{}={}",
                            String::from_utf8_lossy(&k),
                            String::from_utf8_lossy(&v)
                        )
                    })
                    .collect::<Vec<_>>()
            };
            Ok::<_, StoreError>((
                keys_of(t.scan(b"s/", &end, 10)?),
                keys_of(t.scan(b"s/", &end, 2)?),
                keys_of(t.scan_rev(b"s/", &end, 2)?),
                keys_of(t.scan(b"s/4", b"s/9", 10)?),
            ))
        })
        .await
        .unwrap();
    assert_eq!(
        scanned,
        (
            vec![
                "s/1=old".into(),
                "s/2=new".into(),
                "s/3=new".into(),
                "s/9=new".into()
            ],
            vec!["s/1=old".into(), "s/2=new".into()],
            vec!["s/9=new".into(), "s/3=new".into()],
            Vec::<String>::new(),
        )
    );

    // Concurrent counter increments never lose an update.
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                db.write(move |t| {
                    let n = keys::u64_value(t.get(b"counter")?) + 1;
                    t.put(b"counter".to_vec(), n.to_be_bytes().to_vec());
                    t.put(keys::seq_key(b"log/", n), format!("task {i}").into_bytes());
                    Ok::<_, StoreError>(n)
                })
                .await
                .unwrap()
            })
        })
        .collect();
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=64).collect::<Vec<u64>>());
    assert_eq!(keys::u64_value(db.get(b"counter").unwrap()), 64);
    assert_eq!(db.scan_prefix(b"log/", 1000).unwrap().len(), 64);
    let last = db.scan_rev(b"log/", &keys::prefix_end(b"log/"), 1).unwrap();
    assert_eq!(keys::seq_of(&last[0].0), Some(64));
}
