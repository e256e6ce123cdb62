"""DICOMweb plumbing shared by the REST facade, the pollers and retrieval sessions (PS3.18).

Modules
-------
accept     ``Accept`` negotiation (PS3.18 8.7): media ranges, transfer-syntax, q-values, 406 reasons
multipart  the one ``multipart/related`` reader (streaming, on python-multipart) and writer
"""
