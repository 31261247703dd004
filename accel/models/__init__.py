"""Model families: clean re-implementations loading official checkpoints unchanged."""
