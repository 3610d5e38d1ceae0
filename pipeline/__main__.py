import sys

from pipeline.cli import main

# The guard matters: LocalCluster starts worker processes with spawn.
if __name__ == "__main__":
    sys.exit(main())
