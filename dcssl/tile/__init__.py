"""The tile stage: slides (a folder, a glob, or streamed from the GDC) → per-slide HDF5 shards.

``python -m dcssl.tile RUN_DIR --index I`` tiles element I of ``RUN_DIR/tile/slides.json``;
``python -m dcssl.launch tile RUN_DIR --slides …`` prepares that list and runs the array.
"""
