"""spark-submit entry point of the `balance` stage.

    spark-submit --master spark://host:7077 --py-files curation.zip jobs/balance.py --input ... --output ...

Takes the same flags as `curate balance` (see `curate balance --help`), and `--config FILE`.
"""

import sys

from curation.cli import main

if __name__ == "__main__":
    sys.exit(main(["balance", *sys.argv[1:]]))
