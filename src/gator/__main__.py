import sys

from gator.cli import main

sys.exit(main())
