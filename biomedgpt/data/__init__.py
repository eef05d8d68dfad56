"""Records, dataset builders, leakage checks and the collator that turns records into model batches."""
