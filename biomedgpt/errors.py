"""Exceptions for mistakes a user can fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user (a file, an argument, a SMILES, a sequence): not a bug in biomedgpt."""


class InvalidSmilesError(UserError):
    """A SMILES string RDKit cannot parse; the message names the input and RDKit's reason."""


class InvalidSequenceError(UserError):
    """A protein sequence with a character outside the ESM-2 alphabet; the message names the position."""


class ModelNotFoundError(UserError):
    """A model folder or base LM that does not exist or lacks the expected files."""
