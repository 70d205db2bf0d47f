"""Data preparation: text or jsonl in, packed token sequences in HDF5 out.

A drop-in for SambaNova's generative_data_prep (its ``pipeline`` and ``data_prep``
commands): the same options, defaults and arrays, and folders its readers accept.
"""
from tools.data_prep.config import BOUNDARIES, PACKINGS, PrepConfig
from tools.data_prep.decode import decode_file
from tools.data_prep.pipeline import prepare

__all__ = ["BOUNDARIES", "PACKINGS", "PrepConfig", "decode_file", "prepare"]
