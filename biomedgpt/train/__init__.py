"""Training: one loop (`loop.train`) for every stage; a stage is configuration (`stages.STAGES`)."""
