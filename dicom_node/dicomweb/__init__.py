"""DICOMweb plumbing shared by the REST facade, the pollers and retrieval sessions (PS3.18).

Modules
-------
multipart  the one ``multipart/related`` reader (streaming, on python-multipart) and writer
"""
