"""selfrec_ft.sweep."""
