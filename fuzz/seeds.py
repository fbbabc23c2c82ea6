#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets from the repository's own inputs:
fixtures/<provider>/ for the verifier and normalizer targets (in their input formats, see
src/lib.rs), config.toml and the ```toml blocks of README.md and docs/ for the config target.

Usage: fuzz/seeds.py [corpus dir, default fuzz/corpus]. Idempotent (files are named by the
hash of their content)."""

import hashlib
import pathlib
import re
import struct
import sys

FUZZ = pathlib.Path(__file__).resolve().parent
ROOT = FUZZ.parent
PROVIDERS = ["meta", "twilio", "vonage", "messagebird", "bird", "telnyx", "plivo", "sinch",
             "telegram", "standard"]
GET, SIGN, JSON, SECOND, DEFAULT_TENANT = 1, 2, 4, 8, 32


def write(corpus, target, data):
    d = corpus / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def verify_input(flags, query, body):
    q = query.encode()[:65535]
    return bytes([flags, 0, 0]) + struct.pack("<H", len(q)) + q + body


def fixture_files(provider):
    for p in sorted((ROOT / "fixtures" / provider).iterdir()):
        name = p.name
        if not p.is_file() or name.endswith((".expected.json", ".headers.json", ".md")):
            continue
        yield p


def main():
    corpus = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else FUZZ / "corpus"
    counts = {}
    for provider in PROVIDERS:
        for p in fixture_files(provider):
            raw = p.read_bytes()
            if p.suffix == ".url":
                query = raw.decode().strip().partition("?")[2]
                for flags in (GET, GET | 2):
                    write(corpus, f"normalize_{provider}", bytes([flags]) + query.encode())
                for flags in (GET | SIGN | DEFAULT_TENANT, GET | SIGN | SECOND, GET):
                    write(corpus, f"verify_{provider}", verify_input(flags, query, b""))
            else:
                for flags in (0, 2):
                    write(corpus, f"normalize_{provider}", bytes([flags]) + raw)
                ct = JSON if p.suffix == ".json" else 0
                for flags in (SIGN | ct | DEFAULT_TENANT, SIGN | ct | SECOND, ct):
                    write(corpus, f"verify_{provider}", verify_input(flags, "", raw))
    configs = [ROOT / "config.toml"]
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, block in enumerate(re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S)):
            write(corpus, "config", block.encode())
    for c in configs:
        write(corpus, "config", c.read_bytes())
    for d in sorted(corpus.iterdir()):
        counts[d.name] = len(list(d.iterdir()))
    for name, n in counts.items():
        print(f"{name}: {n} seed file(s)")


if __name__ == "__main__":
    main()
