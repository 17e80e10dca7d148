"""Dataset format, phantoms, importers, validation and dataset versions."""
