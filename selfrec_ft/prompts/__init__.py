"""Prompt presets (data), rendering through the chat template, and answer-slot resolution."""
