"""Helpers without model code: transforms, batching, AMG geometry, files, the compilation cache."""
