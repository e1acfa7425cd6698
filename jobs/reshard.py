"""spark-submit entry point of the `reshard` stage.

    spark-submit --master spark://host:7077 --py-files curation.zip jobs/reshard.py --input ... --output ...

Takes the same flags as `curate reshard` (see `curate reshard --help`), and `--config FILE`.
"""

import sys

from curation.cli import main

if __name__ == "__main__":
    sys.exit(main(["reshard", *sys.argv[1:]]))
