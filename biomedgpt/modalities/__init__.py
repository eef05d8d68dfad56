"""Turning raw user inputs (SMILES, amino-acid sequences) into encoder inputs, with clear errors."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

logger = logging.getLogger(__name__)
_FEATURIZER_LOGGERS = ("biomedgpt.modalities.protein", "biomedgpt.modalities.molecule")


@contextlib.contextmanager
def count_cut_entities(kind: str) -> Iterator[None]:
    """The featurizers warn once per protein / molecule cut to the model's limit; over a training set, an
    evaluation or a batch file that is thousands of lines. Count them instead and log one summary line."""
    counter = _CountingFilter()
    for name in _FEATURIZER_LOGGERS:
        logging.getLogger(name).addFilter(counter)
    try:
        yield
    finally:
        for name in _FEATURIZER_LOGGERS:
            logging.getLogger(name).removeFilter(counter)
        if counter.count:
            logger.warning("%s: %d proteins/molecules were cut to the model's length limit (e.g. %s)", kind,
                           counter.count, counter.example)


class _CountingFilter(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.count, self.example = 0, ""

    def filter(self, record: logging.LogRecord) -> bool:
        if "truncated" in record.getMessage():
            self.count += 1
            self.example = self.example or record.getMessage()
            return False
        return True
