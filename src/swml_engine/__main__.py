import sys

from swml_engine.cli import main

sys.exit(main())
