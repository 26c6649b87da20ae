"""The README's `make demo`: export a Mask R-CNN, serve it with a real Triton server, send
images and compare the answers with the in-process pipeline (walkthrough.py). It sits on
top of everything else: export/, server/ and client/."""
