#!/usr/bin/env python3
"""Verify a Liaison audit export without Liaison's code.

Usage: liaison audit list --output json > audit.jsonl
       python3 deploy/verify_audit.py audit.jsonl

Record n's hash is sha256(prev_hash + "\\n" + canonical), hex, where canonical
is the record's JSON object without "hash", keys sorted, no whitespace; the
first prev_hash is 64 zeros. Exits 1 at the first broken record.
"""
import hashlib
import json
import sys

prev = "0" * 64
count = 0
with open(sys.argv[1], encoding="utf-8") as export:
    for line in export:
        record = json.loads(line)
        body = {k: v for k, v in record.items() if k != "hash"}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = hashlib.sha256((prev + "\n" + canonical).encode("utf-8")).hexdigest()
        if record["prev_hash"] != prev or digest != record["hash"]:
            print(f"record {record['seq']}: broken chain", file=sys.stderr)
            sys.exit(1)
        prev = record["hash"]
        count += 1
print(f"{count} records, chain intact, head {prev}")
