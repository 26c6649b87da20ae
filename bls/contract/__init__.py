"""The contract, declared once and read everywhere: tensors, model metadata, parameters.

The tensors of every model (tensors.py), the export's model metadata (metadata.py) and
every parameter, with one set of parsing rules (parameters.py)."""
