"""spark-submit entry point of the `match` stage.

    spark-submit --master spark://host:7077 --py-files curation.zip jobs/match.py --input ... --output ...

Takes the same flags as `curate match` (see `curate match --help`), and `--config FILE`.
"""

import os
import sys

# Python puts this script's directory first on sys.path, where jobs/select.py would stand in for
# the standard library's `select` module (imported by socket, asyncio, fsspec ...): drop it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from curation.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["match", *sys.argv[1:]]))
