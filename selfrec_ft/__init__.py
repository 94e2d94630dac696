"""selfrec_ft."""
__version__ = "0.1.0"
