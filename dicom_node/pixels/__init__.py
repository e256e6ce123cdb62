"""Pixel pipeline: decoding every common transfer syntax, volumes, transcoding, GPU decode.

Modules
-------
syntaxes   the node's one transfer syntax table (PS3.5 Annex A) and codec availability
inflate    the one bounded inflater for Deflated Explicit VR Little Endian (PS3.5 A.5)
framing    the element framing walk run before an instance is acknowledged (PS3.5 7.1-7.5, A.4)
decode     ``decode_instance``: one instance -> stored values; bounded inflate
pool       crash-tolerant worker processes for native codecs
geometry   slice positions, spacing, affine and geometry checks (PS3.3 C.7.6.2)
modality   Modality LUT / rescale to HU, MONOCHROME1 inversion (PS3.3 C.11.1)
volume     ``load_series``: series -> :class:`Volume`
gpu        nvImageCodec batched decode and the automatic CPU/GPU selection
transcode  ``transcode``: re-encode for a destination's accepted syntaxes
reference  NumPy-only reader of native Pixel Data (the conformance reference)
generated  HTJ2K / JPEG Process 14 test files encoded with imagecodecs
conformance  decode-and-compare table over pydicom's and pydicom-data's files

Nothing here imports a codec at import time; pydicom's registries load plugins on use.
"""
