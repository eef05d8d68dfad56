"""A 2D depiction of a SMILES as SVG, drawn by RDKit on the server (so the page needs no chemistry JavaScript)."""

from __future__ import annotations

from biomedgpt.serve.errors import APIError

MAX_SMILES_CHARS = 2000
SIZE_RANGE = (64, 1024)


def depict_svg(smiles: str, width: int = 320, height: int = 240, max_atoms: int = 256) -> str:
    """SVG text of the molecule; raises `InvalidSmilesError` (400) for a bad SMILES, `APIError` for limits."""
    from rdkit.Chem import rdDepictor
    from rdkit.Chem.Draw import rdMolDraw2D

    from biomedgpt.modalities.molecule import parse_smiles

    if len(smiles) > MAX_SMILES_CHARS:
        raise APIError(400, f"SMILES of {len(smiles)} characters; the limit is {MAX_SMILES_CHARS}", param="smiles")
    for name, value in (("width", width), ("height", height)):
        if not SIZE_RANGE[0] <= value <= SIZE_RANGE[1]:
            raise APIError(400, f"{name} must be in [{SIZE_RANGE[0]}, {SIZE_RANGE[1]}], got {value}", param=name)
    mol = parse_smiles(smiles)
    if mol.GetNumAtoms() > max_atoms:
        raise APIError(400, f"molecule has {mol.GetNumAtoms()} heavy atoms; the limit is {max_atoms}", param="smiles")
    rdDepictor.SetPreferCoordGen(True)
    rdDepictor.Compute2DCoords(mol)
    drawer = rdMolDraw2D.MolDraw2DSVG(width, height)
    drawer.drawOptions().clearBackground = False  # transparent: the page's own background shows through
    rdMolDraw2D.PrepareAndDrawMolecule(drawer, mol)
    drawer.FinishDrawing()
    return drawer.GetDrawingText()
