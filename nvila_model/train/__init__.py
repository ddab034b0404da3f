"""train package of nvila_model."""
