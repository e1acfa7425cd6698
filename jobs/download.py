"""spark-submit entry point of the `download` stage.

    spark-submit --master spark://host:7077 --py-files curation.zip jobs/download.py --input ... --output ...

Takes the same flags as `curate download` (see `curate download --help`), and `--config FILE`.
img2dataset must be installed on the executors: its downloader runs in the Spark tasks.
"""

import sys

from curation.cli import main

if __name__ == "__main__":
    sys.exit(main(["download", *sys.argv[1:]]))
