"""Analyses of corpora and reports that need no model: the style-classifier ceiling
(:mod:`.style_ceiling`)."""
