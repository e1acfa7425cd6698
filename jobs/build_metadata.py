"""spark-submit entry point of the `metadata` stage.

    spark-submit --master spark://host:7077 --py-files curation.zip jobs/build_metadata.py \
        --corpus s3://bucket/wiki/ --output s3://bucket/metadata.json

Takes the same flags as `curate metadata` (see `curate metadata --help`), and `--config FILE`.
"""

import sys

from curation.cli import main

if __name__ == "__main__":
    sys.exit(main(["metadata", *sys.argv[1:]]))
