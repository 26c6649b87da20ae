"""What is declared once and read everywhere: the tensors of every model
(tensors.py), the export's model metadata (metadata.py) and every parameter, with one
set of parsing rules (parameters.py)."""
