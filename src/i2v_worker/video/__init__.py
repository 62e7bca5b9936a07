"""The video after generation, the same for every engine: frames (uint8 RGB), frame interpolation
(`interpolate`, RIFE through cccv) and the one encoder of the final file (`encode`).

Engines hand the worker lossless frames; the worker interpolates (when the job asks) and encodes
exactly once, so two engines that produce the same frames produce the same file.
"""
