import sys

from allocwatch.cli import main

sys.exit(main())
