"""``swml index rebuild``: the index made again from the recordings' stored metadata.

``swml serve`` rebuilds at start only from its own recordings directory (its spool: with local storage
all of this node's recordings, with object storage those not yet uploaded), which is cheap. A full
rebuild — after the index was lost, restored from an old backup, or a node wrote to it for long while
it was away — reads every stored document, which for a shared index with many recordings is too much
for each start: an operator runs it once, from any node, while the service runs or not. Rows are
written or updated; none are removed (another node's spool may hold recordings this command cannot
see).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from swml_engine.recording.objectstore import ObjectStore, StorageError
from swml_engine.service.index import (
    INDEX_URL_VARIABLE,
    IndexOpenError,
    IndexUnavailable,
    index_url,
    local_documents,
    node_id,
)
from swml_engine.service.indexes import open_index

EXIT_OK, EXIT_USAGE, EXIT_FAILED = 0, 2, 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("index", help="the recordings index of swml serve")
    actions = p.add_subparsers(dest="action", required=True)
    r = actions.add_parser("rebuild", help="index every recording's stored metadata again")
    r.add_argument("--data", default="swml-data", metavar="DIR", help="the data directory of swml serve")
    r.add_argument(
        "--index",
        metavar="URL",
        help=f"postgresql://... as swml serve's --index (default: {INDEX_URL_VARIABLE}, else SQLite under --data)",
    )
    r.add_argument(
        "--storage",
        metavar="s3://BUCKET[/PREFIX]",
        help="also index every recording in that bucket, as swml serve's --storage (endpoint and credentials "
        "from the AWS_* environment variables)",
    )
    r.set_defaults(func=cmd_rebuild)


def cmd_rebuild(args: argparse.Namespace) -> int:
    try:
        url = index_url(args.index, os.environ)
    except ValueError as e:
        print(f"swml index rebuild: {e}", file=sys.stderr)
        return EXIT_USAGE
    data = Path(args.data).expanduser().absolute()
    if not (data / "recordings").is_dir():
        print(f"swml index rebuild: no recordings under {data}: give swml serve's --data DIR", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_rebuild(url, data, args.storage))


async def _rebuild(url: str | None, data: Path, storage: str | None) -> int:
    try:
        bucket = ObjectStore.from_option(storage) if storage else None
        if bucket is not None:
            await bucket.check()
        index = await open_index(url, data, node_id(data))
    except (IndexOpenError, StorageError) as e:
        print(f"swml index rebuild: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        # The spool's first: a recording also in the bucket (uploaded since) then ends as the bucket has it.
        count = await index.rebuild(local_documents(data / "recordings"))
        if bucket is not None:
            count += await index.rebuild(bucket.metadata_documents(), own=False)
    except (IndexUnavailable, StorageError) as e:
        print(f"swml index rebuild: {e}; run it again when it is back", file=sys.stderr)
        return EXIT_FAILED
    finally:
        await index.close()
    where = f"{data / 'recordings'}" + (f" and {storage}" if storage else "")
    print(f"{count} recording(s) indexed from {where} into {index.where}")
    return EXIT_OK
