"""`python -m biomedgpt` is the same as the `biomedgpt` command."""

from biomedgpt.cli import entry

entry()
