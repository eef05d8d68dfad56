"""Turning raw user inputs (SMILES, amino-acid sequences) into encoder inputs, with clear errors."""
