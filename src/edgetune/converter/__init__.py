"""Build time: bases (zoo, ONNX file, cut point, int8), heads, losses, optimizers, convert()."""
