import sys

from netmamba.cli import main

sys.exit(main())
