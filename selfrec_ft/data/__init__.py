"""Corpora: loading, checking and synthesising news articles with summaries per source."""
