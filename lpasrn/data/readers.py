"""Readers of lpasrn shards: one import point for the decoder, the stream reader and the indexed reader.

The code lives in three modules so each stays small:
- `read_decode`: `decode_sample` (the only decoder: png/jpg/json/txt), `collate`, `CorruptSampleError`,
  `ReadErrors`;
- `read_stream`: `StreamReader` (WebDataset pipeline, exact-once or resampled, explicit rank/world size);
- `read_indexed`: `IndexedPlateDataset` (map-style, `os.pread` at manifest offsets).
"""
from lpasrn.data.read_decode import CorruptSampleError, ReadErrors, collate, decode_sample
from lpasrn.data.read_indexed import IndexedPlateDataset
from lpasrn.data.read_stream import StreamReader, exact_shard_order

__all__ = ["CorruptSampleError", "IndexedPlateDataset", "ReadErrors", "StreamReader", "collate",
           "decode_sample", "exact_shard_order"]
