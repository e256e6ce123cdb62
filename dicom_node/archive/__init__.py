"""The archive: what the node holds (received instances and its own results) as DICOMweb and Q/R serve it (PS3.18).

Modules
-------
keys      the attributes QIDO-RS and C-FIND match and return
match     the one attribute matcher of QIDO-RS and C-FIND
query     QIDO-RS / C-FIND searches on the index
backfill  the search index of an upgraded database, from the files' headers
retrieve  locate instances and answer them in a negotiated transfer syntax (WADO-RS 10.4)
metadata  DICOM JSON of instances with bulk data by BulkDataURI (PS3.18 F.2)
frames    frames by number: native bytes by offset arithmetic, compressed fragments as stored
rendered  rendered and thumbnail images (JPEG, PNG) with the instance's or the request's window
"""
