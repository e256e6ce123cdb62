"""REST facade (FastAPI + uvicorn), started by ``dicom-node serve`` next to the SCP.

One router module per resource under :mod:`dicom_node.api.routers`; errors are
always ``{"error": {"code", "description"}}`` JSON, never tracebacks.
"""
