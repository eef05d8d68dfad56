"""Names and magic values shared by every layer of the package (one place for each)."""

from __future__ import annotations

from pathlib import Path

MOLECULE = "molecule"
PROTEIN = "protein"
MODALITIES = (MOLECULE, PROTEIN)

# Placeholder strings in prompts, as in the reference: `<molecule><moleculeHere></molecule>`.
MOLECULE_PLACEHOLDER = "<moleculeHere>"
PROTEIN_PLACEHOLDER = "<proteinHere>"
MOLECULE_TAG_OPEN, MOLECULE_TAG_CLOSE = "<molecule>", "</molecule>"
PROTEIN_TAG_OPEN, PROTEIN_TAG_CLOSE = "<protein>", "</protein>"

# Placeholder token ids written into `input_ids` by the collator, one per atom / per ESM position.
# Negative (as LLaVA's IMAGE_TOKEN_INDEX = -200) so they can never collide with a vocabulary entry and the
# LM vocabulary never has to be resized; the splice replaces their embeddings before the LM sees them.
MOLECULE_TOKEN_ID = -200
PROTEIN_TOKEN_ID = -300

IGNORE_INDEX = -100

# The training stages, in pipeline order (`biomedgpt train STAGE`; configs in biomedgpt.train.config).
STAGE_NAMES = ("encoder-molecule", "encoder-protein", "lm", "align", "finetune")

# The reference (OpenBioMed) conversation template, used when the LM has no chat template of its own.
REFERENCE_SYSTEM_PROMPT = (
    "You are working as an excellent assistant in chemistry and molecule discovery. "
    "Below a human expert gives the representation of a molecule or a protein. "
    "Answer questions about it."
)
HUMAN_TAG = "### Human: "
ASSISTANT_TAG = "### Assistant: "

DEFAULT_BASE_LM = "HuggingFaceTB/SmolLM2-135M-Instruct"

# Environment variables the package reads (never writes).
ENV_CACHE_DIR = "BIOMEDGPT_CACHE"
ENV_MODEL = "BIOMEDGPT_MODEL"

# A model folder may ship a nearest-neighbour index of its training pool: the evidence shown beside answers.
EVIDENCE_INDEX_NAME = "index.json.gz"

# Where the repository keeps what it ships besides code (models/biomedgpt-small, models/evidence); found relative to
# the package, so it exists for the editable install that `make` sets up.
REPO_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
