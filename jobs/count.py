"""spark-submit entry point of the `count` stage.

    spark-submit --master spark://host:7077 --py-files curation.zip jobs/count.py --input ... --output ...

Takes the same flags as `curate count` (see `curate count --help`), and `--config FILE`.
"""

import sys

from curation.cli import main

if __name__ == "__main__":
    sys.exit(main(["count", *sys.argv[1:]]))
