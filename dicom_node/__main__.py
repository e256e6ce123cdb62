"""Allow ``python -m dicom_node``."""

import sys

from dicom_node.cli import main

sys.exit(main())
