"""The "which one is yours?" pairwise training data and its label strategies."""
