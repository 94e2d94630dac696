"""Model building (tiny local Llama models) and loading (base, adapter, checkpoint)."""
