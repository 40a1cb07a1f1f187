#!/usr/bin/env python3
"""Verify a Liaison audit export, proofs and checkpoints without Liaison's code.

Uses the Python standard library and one Ed25519 package (pyca/cryptography).

  liaison audit export --server ... --as ... > audit.jsonl
  python3 deploy/verify_audit.py audit.jsonl --log-key certs-dev/log.vkey \
      [--witnesses certs-dev/witnesses.vkeys]

  liaison --output json audit prove --message ID ... > proofs.jsonl
  python3 deploy/verify_audit.py --proofs proofs.jsonl --log-key certs-dev/log.vkey

  python3 deploy/verify_audit.py --self-test crates/tlog/testdata/rfc6962.json

What is checked, from the formats alone:
- the checkpoint (C2SP tlog-checkpoint: origin, size, base64 root) is a C2SP
  signed-note signed by the log key: key id SHA-256(name "\\n" 0x01 key)[:4],
  Ed25519 over the note text; each witness line (C2SP tlog-cosignature v1)
  has key id SHA-256(name "\\n" 0x04 key)[:4] and an 8-byte big-endian time
  before its Ed25519 signature over "cosignature/v1\\ntime <t>\\n" + text;
- every record's "leaf" (base64) is a protobuf AuditRecord whose fields are
  the record's JSON fields (decoded here with a small wire-format reader);
- an export of the whole log: the RFC 6962 root of SHA-256(0x00 || leaf) over
  every leaf, in order, is the checkpoint's root (so a flipped byte, a
  deleted, reordered or inserted record, or a truncation fails); an export of
  part of it: each record's inclusion proof (RFC 9162 2.1.3.2) leads to it.
Exits 1 at the first failure, naming the record's position.
"""
import argparse
import base64
import hashlib
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


# RFC 6962 hashing.

def leaf_hash(data):
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def mth(hashes, lo, hi):
    """RFC 6962 2.1: the Merkle tree hash of leaves lo..hi (exclusive)."""
    n = hi - lo
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashes[lo]
    k = 1
    while k * 2 < n:
        k *= 2
    return node_hash(mth(hashes, lo, lo + k), mth(hashes, lo + k, hi))


def verify_inclusion(index, size, leaf, proof, root):
    """RFC 9162 2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(first, second, first_hash, second_hash, proof):
    """RFC 9162 2.1.4.2."""
    if first == second:
        return not proof and first_hash == second_hash
    if first == 0:
        return not proof
    if first > second or not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_hash)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_hash and sr == second_hash and sn == 0


# Signed notes.

def parse_vkey(text, key_type):
    name, key_id, key = text.strip().split("+", 2)
    raw = base64.b64decode(key)
    if raw[0] != key_type or len(raw) != 33:
        fail(f"the verifier key {name} is not an Ed25519 key of type {key_type:#04x}")
    if hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4].hex() != key_id:
        fail(f"the verifier key {name} has a wrong key id")
    return name, bytes.fromhex(key_id), Ed25519PublicKey.from_public_bytes(raw[1:])


def parse_note(note):
    text, sep, sigs = note.partition("\n\n")
    if not sep:
        fail("the checkpoint is not a signed note (no empty line before its signatures)")
    text += "\n"
    lines = []
    for line in sigs.splitlines():
        if not line.startswith("\u2014 "):
            fail(f"not a signature line: {line!r}")
        name, b64 = line[2:].rsplit(" ", 1)
        lines.append((name, base64.b64decode(b64)))
    return text, lines


def check_checkpoint(note, log_key, witnesses):
    """Returns (origin, size, root, cosigners)."""
    name, key_id, key = log_key
    text, sigs = parse_note(note)
    signed = False
    cosigners = []
    for sig_name, raw in sigs:
        if sig_name == name and raw[:4] == key_id:
            try:
                key.verify(raw[4:], text.encode())
            except InvalidSignature:
                fail(f"the log's signature on the checkpoint does not verify ({name})")
            signed = True
            continue
        for w_name, w_id, w_key in witnesses:
            if sig_name == w_name and raw[:4] == w_id:
                ts = int.from_bytes(raw[4:12], "big")
                msg = f"cosignature/v1\ntime {ts}\n".encode() + text.encode()
                try:
                    w_key.verify(raw[12:], msg)
                except InvalidSignature:
                    fail(f"the cosignature of {w_name} does not verify")
                cosigners.append(w_name)
    if not signed:
        fail(f"the checkpoint is not signed by the log key {name}")
    origin, size, root = text.rstrip("\n").split("\n")
    if origin != name:
        fail(f"the checkpoint is of the log {origin!r}, not {name!r}")
    return origin, int(size), base64.b64decode(root), cosigners


# The protobuf wire format, enough for an AuditRecord.

STRINGS = {3: "event", 4: "message_id", 5: "origin", 6: "recipient", 7: "decision",
           8: "rule", 9: "reason", 10: "policy_version", 11: "actor", 12: "kind",
           13: "classification", 15: "prev_hash", 16: "hash", 17: "labels"}
ITEM_STRINGS = {1: "message_id", 3: "kind", 4: "classification"}


def varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def fields(buf):
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(buf, i)
        elif wire == 2:
            n, i = varint(buf, i)
            value = buf[i:i + n]
            i += n
        else:
            raise ValueError(f"wire type {wire} in field {number}")
        yield number, value


def decode_record(buf):
    r = {"seq": 0, "at_ms": 0, "queue_seq": 0, "items": []}
    r.update({name: "" for name in STRINGS.values()})
    for number, value in fields(buf):
        if number == 1:
            r["seq"] = value
        elif number == 2:
            r["at_ms"] = value - (1 << 64) if value >= 1 << 63 else value
        elif number == 14:
            r["queue_seq"] = value
        elif number in STRINGS:
            r[STRINGS[number]] = value.decode("utf-8")
        elif number == 18:
            item = {"message_id": "", "queue_seq": 0, "kind": "", "classification": ""}
            for n, v in fields(value):
                if n == 2:
                    item["queue_seq"] = v
                elif n in ITEM_STRINGS:
                    item[ITEM_STRINGS[n]] = v.decode("utf-8")
            r["items"].append(item)
        elif number == 19:
            raise ValueError("a leaf holds no leaf")
    return r


def check_fields(record):
    """The record's JSON fields must be those its leaf holds."""
    leaf = base64.b64decode(record["leaf"])
    try:
        decoded = decode_record(leaf)
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        return None, f"its leaf is not an audit record ({e})"
    for key, value in decoded.items():
        shown = record.get(key, [] if key == "items" else ("" if isinstance(value, str) else 0))
        if shown != value:
            return None, f"its field {key} is not what its leaf holds (the record was altered)"
    return leaf, None


def verify_export(path, log_key, witnesses):
    with open(path, encoding="utf-8") as export:
        head = json.loads(export.readline())
        origin, size, root, cosigners = check_checkpoint(head["checkpoint"], log_key, witnesses)
        whole = head.get("whole_log", False)
        hashes = []
        checked = 0
        for line in export:
            if not line.strip():
                continue
            record = json.loads(line)
            seq = record["seq"]
            leaf, problem = check_fields(record)
            if problem:
                fail(f"record {seq}: {problem}")
            if whole:
                if seq != len(hashes) + 1:
                    fail(f"record {len(hashes) + 1}: missing or reordered (found {seq})")
                hashes.append(leaf_hash(leaf))
            else:
                proof = [base64.b64decode(h) for h in record.get("proof", [])]
                if not verify_inclusion(seq - 1, size, leaf_hash(leaf), proof, root):
                    fail(f"record {seq}: its inclusion proof does not lead to the checkpoint's root")
            checked += 1
    if whole:
        if len(hashes) != size:
            fail(f"record {len(hashes) + 1}: the export holds {len(hashes)} records, the checkpoint {size}")
        if mth(hashes, 0, len(hashes)) != root:
            fail(f"record {size}: the recomputed root is not the checkpoint's")
    how = "root recomputed over every leaf" if whole else "each inclusion proof checked"
    print(f"{checked} records of {origin} ({size} in the tree), {how}: intact; "
          f"root {root.hex()}; cosigned by {len(cosigners)}: {', '.join(cosigners) or 'none'}")


def verify_proofs(path, log_key, witnesses):
    count = 0
    with open(path, encoding="utf-8") as proofs:
        for line in proofs:
            if not line.strip():
                continue
            p = json.loads(line)
            _, size, root, _ = check_checkpoint(p["checkpoint"], log_key, witnesses)
            record = p["record"]
            leaf, problem = check_fields(record)
            if problem:
                fail(f"record {record['seq']}: {problem}")
            proof = [bytes.fromhex(h) for h in p["proof"]]
            if size != p["tree_size"] or not verify_inclusion(
                    p["leaf_index"], size, leaf_hash(leaf), proof, root):
                fail(f"leaf {p['leaf_index']}: the proof does not lead to the checkpoint's root")
            count += 1
    print(f"{count} inclusion proofs verify against their signed checkpoints")


def self_test(path):
    with open(path, encoding="utf-8") as f:
        v = json.load(f)
    leaves = [leaf_hash(bytes.fromhex(x)) for x in v["leaves"]]
    roots = [bytes.fromhex(x) for x in v["roots"]]
    for n in range(1, len(leaves) + 1):
        if mth(leaves, 0, n) != roots[n - 1]:
            fail(f"root of {n} leaves")
    for p in v["inclusion"]:
        proof = [bytes.fromhex(h) for h in p["proof"]]
        i, n = p["leaf_index"] - 1, p["tree_size"]
        if not verify_inclusion(i, n, leaves[i], proof, roots[n - 1]):
            fail(f"inclusion of {i} in {n}")
        if proof:
            bad = [proof[0][:1] + bytes([proof[0][1] ^ 1]) + proof[0][2:]] + proof[1:]
            if verify_inclusion(i, n, leaves[i], bad, roots[n - 1]):
                fail(f"a damaged inclusion proof of {i} in {n} verified")
    for p in v["consistency"]:
        proof = [bytes.fromhex(h) for h in p["proof"]]
        a, b = p["old_size"], p["new_size"]
        if not verify_consistency(a, b, roots[a - 1], roots[b - 1], proof):
            fail(f"consistency of {a} in {b}")
        if proof and verify_consistency(a, b, roots[b - 1], roots[a - 1], proof):
            fail(f"a consistency proof of {a} in {b} verified with swapped roots")
    print(f"the RFC 6962 test vectors verify: {len(roots)} roots, "
          f"{len(v['inclusion'])} inclusion and {len(v['consistency'])} consistency proofs")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("export", nargs="?", help="an export of `liaison audit export`")
    ap.add_argument("--log-key", help="the log's verifier key file (log.vkey)")
    ap.add_argument("--witnesses", help="the witnesses' verifier keys, one per line")
    ap.add_argument("--proofs", help="JSON lines of `liaison --output json audit prove`")
    ap.add_argument("--self-test", metavar="VECTORS", help="check the RFC 6962 test vectors")
    a = ap.parse_args()
    if a.self_test:
        self_test(a.self_test)
        return
    if not a.log_key:
        fail("give --log-key (the log's verifier key, log.vkey)")
    with open(a.log_key, encoding="utf-8") as f:
        log_key = parse_vkey(f.read(), 0x01)
    witnesses = []
    if a.witnesses:
        with open(a.witnesses, encoding="utf-8") as f:
            witnesses = [parse_vkey(l, 0x04) for l in f if l.strip() and not l.startswith("#")]
    if a.proofs:
        verify_proofs(a.proofs, log_key, witnesses)
    elif a.export:
        verify_export(a.export, log_key, witnesses)
    else:
        fail("give an export, --proofs or --self-test")


if __name__ == "__main__":
    main()
