"""Pixel pipeline: decoding every common transfer syntax, volumes, transcoding, GPU decode.

Modules
-------
syntaxes   transfer syntax table (PS3.5 Annex A) and codec availability
decode     ``decode_instance``: one instance -> stored values; bounded inflate
pool       crash-tolerant worker processes for native codecs
geometry   slice positions, spacing, affine and geometry checks (PS3.3 C.7.6.2)
modality   Modality LUT / rescale to HU, MONOCHROME1 inversion (PS3.3 C.11.1)
volume     ``load_series``: series -> :class:`Volume`
gpu        nvImageCodec batched decode and the automatic CPU/GPU selection
transcode  ``transcode``: re-encode for a destination's accepted syntaxes
conformance  decode-and-compare table over pydicom's and pydicom-data's files

Nothing here imports a codec at import time; pydicom's registries load plugins on use.
"""
