"""biolm: deep models for biological sequences and single-cell data, driven by one YAML file."""

__version__ = "0.1.0"
