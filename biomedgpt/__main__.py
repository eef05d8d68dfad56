"""`python -m biomedgpt` is the same as the `biomedgpt` command."""

import sys

from biomedgpt.cli import main

sys.exit(main())
