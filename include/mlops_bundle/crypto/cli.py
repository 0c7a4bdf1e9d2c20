"""``python -m mlops_bundle.crypto``: bootstrap, rotate and inspect the local KEK keyset.

``new-keyset`` prints a new keyset (SECRET: store it as the password of the connection named by
``encryption.keyset_conn_id``), ``rotate-keyset < old.json`` adds a new primary key and keeps the old ones
for decryption, ``key-id FILE`` prints the key id in an encrypted file's header.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlops_bundle.crypto.header import read_key_id
from mlops_bundle.crypto.keyrings import CryptoError, LocalKeyring, generate_local_keyset, rotate_local_keyset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlops_bundle.crypto",
        description="Manage the local Tink KEK keyset kept in the Airflow connection (key_source=connection).",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("new-keyset", help="print a new AES256_GCM keyset (JSON) to stdout")
    rot = sub.add_parser("rotate-keyset", help="add a new primary key to a keyset, keeping the old ones")
    rot.add_argument("keyset", nargs="?", default="-", help="keyset JSON file, or - for stdin (default)")
    kid = sub.add_parser("key-id", help="print the key id in the header of an encrypted file")
    kid.add_argument("path")
    args = parser.parse_args(argv)
    warn = (
        "WARNING: the JSON on stdout is SECRET key material. Store it only as the password of the Airflow "
        "connection named by encryption.keyset_conn_id (or a secrets backend); never commit or log it."
    )
    try:
        if args.cmd == "new-keyset":
            out = generate_local_keyset()
        elif args.cmd == "rotate-keyset":
            text = sys.stdin.read() if args.keyset == "-" else Path(args.keyset).read_text()
            out = rotate_local_keyset(text)
            keyring = LocalKeyring(out)
            print(f"new primary {keyring.current_key_id}; keys {keyring.key_ids}", file=sys.stderr)
        else:
            print(read_key_id(args.path))
            return 0
    except CryptoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(warn, file=sys.stderr)
    sys.stdout.write(json.dumps(json.loads(out)) + "\n")
    return 0
