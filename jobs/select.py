"""spark-submit entry point of the `select` stage.

    spark-submit --master spark://host:7077 --py-files curation.zip jobs/select.py --input ... --output ...

Takes the same flags as `curate select` (see `curate select --help`), and `--config FILE`.
"""

import sys

from curation.cli import main

if __name__ == "__main__":
    sys.exit(main(["select", *sys.argv[1:]]))
