"""spark-submit entry point of the `match` stage.

    spark-submit --master spark://host:7077 --py-files curation.zip jobs/match.py --input ... --output ...

Takes the same flags as `curate match` (see `curate match --help`), and `--config FILE`.
"""

import sys

from curation.cli import main

if __name__ == "__main__":
    sys.exit(main(["match", *sys.argv[1:]]))
