"""deltaloss package of nvila_model."""
