"""selfrec_ft.scoring."""
