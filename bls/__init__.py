"""Pure pipeline logic for Mask R-CNN on Triton: decode, resize, postprocess, encode,
request parsing. Importable without triton_python_backend_utils or torch; every
model.py in the repository is a thin adapter over it."""
