# SPDX-License-Identifier: Apache-2.0
import sys

from allocwatch.cli import main

sys.exit(main())
