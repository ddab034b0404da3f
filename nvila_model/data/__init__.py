"""data package of nvila_model."""
